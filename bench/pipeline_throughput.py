"""Folder runs at the model's speed (#13): model-only throughput next to ``camlens explain``'s
end-to-end throughput on the same generated photos, in one run.

Run: python bench/pipeline_throughput.py [IMAGES] [--method gradcam] [--workers N]

- model only: the bundled EfficientNet-Lite0's forward pass on batches of 8 preprocessed in
  advance (no decoding, no writing), and Grad-CAM's compute on them (forward and backward);
- end to end: :func:`camlens.runner.run` (what ``camlens explain DIR`` runs) on the JPEG files,
  writing PNG overlays, JPEG overlays, WebP overlays, and raw maps only (``--no-overlay``);
- the CLI in a fresh process: ``camlens --help``, and the time to the first written image of
  ``camlens explain DIR --format jpg`` (imports and model loading included).

The photos are crops, flips and rescalings of scikit-image's samples, about 640x427, written as
JPEG (quality 90) to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from camlens.lens import Lens
from camlens.runner import RenderOptions, run
from camlens.samples import generated_photos


def model_only(lens: Lens, paths: list[Path], method: str, batch: int = 8) -> tuple[float, float]:
    """Images per second of the forward pass alone, and of the method's compute, on batches
    preprocessed before the clock starts."""
    from camlens.imageio import read_image

    batches = [lens.loaded.preprocessing([read_image(p) for p in paths[i : i + batch]])
               for i in range(0, len(paths), batch)]
    explainer = lens.explainer(method, None)
    with torch.inference_mode():
        lens.loaded.model(torch.from_numpy(batches[0]))  # warm-up
        start = time.perf_counter()
        for x in batches:
            lens.loaded.model(torch.from_numpy(x))
        forward = len(paths) / (time.perf_counter() - start)
    explainer(lens.backend.to_input(lens.loaded, batches[0]), None)  # warm-up
    start = time.perf_counter()
    for x in batches:
        explainer(lens.backend.to_input(lens.loaded, x), None)
    compute = len(paths) / (time.perf_counter() - start)
    return forward, compute


def end_to_end(lens: Lens, paths: list[Path], method: str, out: Path, options: RenderOptions, workers: int | None) -> float:
    start = time.perf_counter()
    report = run(lens, paths, out, methods=[method], options=options, batch_size=8, workers=workers)
    elapsed = time.perf_counter() - start
    assert not report.failed, report.failed[0].error
    return len(paths) / elapsed


def cli_help() -> float:
    exe = Path(sys.executable).with_name("camlens")
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([str(exe), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_image(folder: Path, out: Path) -> tuple[float, float]:
    """Seconds from starting ``camlens explain FOLDER --format jpg`` to its first overlay
    written, and to its end."""
    exe = Path(sys.executable).with_name("camlens")
    start = time.perf_counter()
    process = subprocess.Popen([str(exe), "explain", str(folder), "--out", str(out), "--format", "jpg", "--device", "cpu"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while process.poll() is None:
        if first is None and any(out.glob("*.jpg")):
            first = time.perf_counter() - start
        time.sleep(0.01)
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"camlens explain failed: {process.stderr.read().decode() if process.stderr else ''}")
    return (first if first is not None else total), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="?", type=int, default=192)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: camlens's choice)")
    args = parser.parse_args()
    lens = Lens(device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "photos").mkdir()
        paths = generated_photos(root / "photos", args.images)
        forward, compute = model_only(lens, paths, args.method)
        workers = "default" if args.workers is None else args.workers
        print(f"{args.images} photos of 640x427 (JPEG), {args.method}, batches of 8, {torch.get_num_threads()} torch "
              f"threads, decoding workers: {workers}")
        print(f"model only: forward {forward:.1f} images/s, {args.method} compute {compute:.1f} images/s")
        cases = [("PNG overlays", RenderOptions()), ("JPEG overlays", RenderOptions(image_format="jpg")),
                 ("WebP overlays", RenderOptions(image_format="webp")),
                 ("raw maps only (--no-overlay)", RenderOptions(overlay=False, save_raw=True))]
        for k, (name, options) in enumerate(cases):
            rate = end_to_end(lens, paths, args.method, root / f"out{k}", options, args.workers)
            print(f"end to end, {name}: {rate:.1f} images/s = {rate / forward:.2f} of the forward, "
                  f"{rate / compute:.2f} of the compute")
        first, total = first_image(root / "photos", root / "cli")
        print(f"camlens explain (new process, JPEG overlays): first image after {first:.2f} s, all {args.images} "
              f"after {total:.2f} s")
        print(f"camlens --help: {cli_help():.2f} s (median of 5)")


if __name__ == "__main__":
    main()
