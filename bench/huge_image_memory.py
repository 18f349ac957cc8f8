"""Peak memory of ``camlens explain --panel`` on huge images, next to a small one, in one run.

Inputs made here: a 640x480 photo-like PNG (the baseline: the model and libraries), a 17 KB
12000x12000 1-bit PNG (a decompression-bomb-like file the hardening issue measured at 11.1 GB)
and a 9000x9000 JPEG. Each runs in its own process (bundled model, CPU); its peak resident set
size is printed with the ratio to the baseline's. Target: under 1.5 GB for the 12000x12000
PNG. Images over the pixel budget (``--max-pixels``, default 25 MP) are read downscaled; the
maps, overlays and panels are then built at that bounded size.

Run: python bench/huge_image_memory.py [--max-pixels N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROBE = ("import atexit, resource, sys\n"
         "atexit.register(lambda: print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
         "sys.argv = ['camlens', *sys.argv[1:]]\n"
         "from camlens.cli.app import main\n"
         "main()\n")


def _inputs(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    small = folder / "small.png"
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(small)
    bilevel = Image.new("1", (12000, 12000), 0)
    ImageDraw.Draw(bilevel).ellipse((3000, 3000, 9000, 9000), fill=1)
    bomb = folder / "bilevel_12000.png"
    bilevel.save(bomb, optimize=True)
    tiles = rng.integers(0, 255, (90, 90, 3), dtype=np.uint8)
    jpeg = folder / "photo_9000.jpg"
    Image.fromarray(np.repeat(np.repeat(tiles, 100, axis=0), 100, axis=1)).save(jpeg, quality=90)
    return {"640x480 PNG (baseline)": small, "12000x12000 1-bit PNG": bomb, "9000x9000 JPEG": jpeg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pixels", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs = _inputs(folder)
        print(f"{'input':26s} {'file KB':>8s} {'seconds':>8s} {'peak MB':>8s} {'ratio':>6s}")
        base = None
        for label, path in inputs.items():
            extra = ["--max-pixels", str(args.max_pixels)] if args.max_pixels else []
            command = [sys.executable, "-c", PROBE, *extra, "explain", str(path), "--panel", "--device", "cpu",
                       "--out", str(folder / f"out_{path.stem}")]
            start = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            if run.returncode != 0:
                raise SystemExit(f"{label}: exit {run.returncode}: {run.stderr.strip().splitlines()[-1]}")
            peak = int(next(line.split()[1] for line in run.stderr.splitlines() if line.startswith("PEAK_KB"))) / 1024
            base = base or peak
            print(f"{label:26s} {path.stat().st_size / 1024:8.0f} {seconds:8.1f} {peak:8.0f} {peak / base:6.2f}")


if __name__ == "__main__":
    main()
