"""Memory stays flat over a long folder run: RSS growth under 5% from image 100 to image 1,000.

Resident set size at image 100, 500 and 1,000 of :func:`camlens.runner.run` on generated photos,
its growth from image 100 to the last, and the peak, per variant, side by side.

Run: python bench/pipeline_memory.py [--images N] [--variants jpg,raw,jpg-w1] [--keep]

Variants (each in a fresh process, so that its RSS curve and peak are its own):

- ``jpg``: JPEG overlays (``RenderOptions(image_format="jpg")``), decoding in this process;
- ``raw``: raw maps only (``--no-overlay``: ``RenderOptions(overlay=False, save_raw=True)``);
- ``jpg-w1``, ``raw-w1``: the same with one torch ``DataLoader`` decoding worker
  (``workers=1``); then the worker's RSS is sampled too, and the table shows the main
  process, the workers, and their sum (RSS counts shared pages in each process, so the sum
  overstates; PSS, from ``smaps_rollup``, splits them and is shown alongside).

RSS is read from ``/proc/<pid>/status`` (VmRSS, peak VmHWM) in ``run``'s ``progress`` callback,
after every batch of 8. The bundled EfficientNet-Lite0 explains with Grad-CAM, on the CPU. The
photos are crops, flips, colour shifts and rescalings of scikit-image's samples, 640x427, as
JPEG (quality 90), all distinct, in a temporary folder (kept with ``--keep``).

A measurement, not an assertion: it exits 0 and prints FLAT or GROWS against the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 5.0
"""Largest growth of RSS from image 100 to the last, in percent, still called flat."""

VARIANTS = {
    "jpg": ("JPEG overlays", {"image_format": "jpg"}, 0),
    "raw": ("raw maps only", {"overlay": False, "save_raw": True}, 0),
    "jpg-w1": ("JPEG overlays, 1 worker", {"image_format": "jpg"}, 1),
    "raw-w1": ("raw maps, 1 worker", {"overlay": False, "save_raw": True}, 1),
}
DEFAULT_VARIANTS = "jpg,raw,jpg-w1"


# --- measuring (in the child process) ---------------------------------------------------------

def _status(pid: int | str) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KB (empty if it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _pss(pid: int | str) -> int:
    """Proportional set size in KB (shared pages split between the processes that map them),
    0 where ``smaps_rollup`` is missing."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (``/proc/<pid>/task/*/children`` where the kernel has
    it, else a scan of ``/proc/*/stat``)."""
    try:
        found: list[int] = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
        return found
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:  # field 4, after the "(comm)"
            found.append(int(entry))
    return found


class Sampler:
    """The ``progress`` callback: after every batch, this process's RSS and PSS, and its
    children's (the decoding workers'), with their peaks."""

    def __init__(self, children: bool) -> None:
        self.children, self.done, self.rows = children, 0, []
        self.child_peak = 0
        self.pid = os.getpid()

    def __call__(self, n: int) -> None:
        self.done += n
        own = _status(self.pid)
        row = {"done": self.done, "rss": own.get("VmRSS", 0), "hwm": own.get("VmHWM", 0),
               "pss": _pss(self.pid), "time": time.perf_counter()}
        if self.children:
            kids = [k for k in _children(self.pid) if _status(k)]
            stats = [_status(k) for k in kids]
            row["kids"] = len(kids)
            row["child_rss"] = sum(s.get("VmRSS", 0) for s in stats)
            row["child_pss"] = sum(_pss(k) for k in kids)
            self.child_peak = max(self.child_peak, sum(s.get("VmHWM", 0) for s in stats))
        self.rows.append(row)


def child(variant: str, folder: Path, out: Path) -> None:
    """Run one variant in this (fresh) process and print its samples as one JSON line."""
    from camlens.lens import Lens
    from camlens.runner import RenderOptions, run

    _, options, workers = VARIANTS[variant]
    paths = sorted(folder.glob("photo_*.jpg"))
    lens = Lens("efficientnet_lite0")
    sampler = Sampler(children=workers > 0)
    before = _status(os.getpid())
    start = time.perf_counter()
    report = run(lens, paths, out, methods=["gradcam"], options=RenderOptions(**options), workers=workers,
                 progress=sampler)
    elapsed = time.perf_counter() - start
    failed = [r.error for r in report.failed]
    own = _status(os.getpid())
    print(json.dumps({"variant": variant, "start": before.get("VmRSS", 0), "start_peak": before.get("VmHWM", 0),
                      "rows": sampler.rows, "peak": own.get("VmHWM", 0),
                      "end": own.get("VmRSS", 0), "child_peak": sampler.child_peak, "seconds": elapsed,
                      "failed": failed[:3], "n_failed": len(failed), "threads": _torch_threads()}))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --- reporting (in the parent) ----------------------------------------------------------------

def _at(rows: list[dict], image: int) -> dict:
    """The first sample at or after ``image`` images done (the last one if none)."""
    return next((r for r in rows if r["done"] >= image), rows[-1])


def _mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def table(results: list[dict], images: int) -> list[str]:
    marks = sorted({min(images, m) for m in (100, 500, 1000)} | {images})
    first = marks[0]
    header = ["", *[VARIANTS[r["variant"]][0] for r in results]]
    lines: list[list[str]] = [["RSS before the run (MB)", *[_mb(r["start"]) for r in results]]]
    for m in marks:
        lines.append([f"RSS @ image {m} (MB)", *[f"{_mb(_at(r['rows'], m)['rss'])} @{_at(r['rows'], m)['done']}"
                                                 for r in results]])
    growth = []
    for r in results:
        a, b = _at(r["rows"], first)["rss"], r["rows"][-1]["rss"]
        growth.append(100 * (b - a) / a)
    lines.append([f"growth {first} -> {images} (%)", *[f"{g:+.1f}" for g in growth]])
    lines.append([f"vs {TARGET:g}% target", *["FLAT" if g < TARGET else "GROWS" for g in growth]])
    lines.append(["peak RSS, VmHWM (MB)", *[_mb(r["peak"]) for r in results]])
    lines.append(["  of which before the run (MB)", *[_mb(r["start_peak"]) for r in results]])
    lines.append(["  reached by image", *[str(next(x["done"] for x in r["rows"] if x["hwm"] >= r["peak"]))
                                          for r in results]])
    lines.append(["PSS @ first / last (MB)", *[f"{_mb(_at(r['rows'], first)['pss'])} / {_mb(r['rows'][-1]['pss'])}"
                                               for r in results]])
    if any("child_rss" in r["rows"][-1] for r in results):
        def kid(r: dict, key: str, m: int | None = None) -> str:
            row = _at(r["rows"], m) if m else r["rows"][-1]
            return _mb(row[key]) if key in row else "-"

        lines.append([f"workers' RSS @ {first} / last (MB)",
                      *[f"{kid(r, 'child_rss', first)} / {kid(r, 'child_rss')}" for r in results]])
        lines.append([f"workers' PSS @ {first} / last (MB)",
                      *[f"{kid(r, 'child_pss', first)} / {kid(r, 'child_pss')}" for r in results]])
        totals = []
        for r in results:
            a, b = _at(r["rows"], first), r["rows"][-1]
            if "child_rss" not in b:
                totals.append("-")
                continue
            ta, tb = a["rss"] + a.get("child_rss", 0), b["rss"] + b.get("child_rss", 0)
            totals.append(f"{_mb(ta)} -> {_mb(tb)} ({100 * (tb - ta) / ta:+.1f}%)")
        lines.append([f"main + workers RSS {first} -> last", *totals])
        lines.append(["workers' peak RSS (MB)", *[_mb(r["child_peak"]) if r["child_peak"] else "-" for r in results]])
    lines.append(["images/s", *[f"{images / r['seconds']:.1f}" for r in results]])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    fmt = [f"{cell:<{widths[0]}s}" if i == 0 else f"{cell:>{widths[i]}s}" for i, cell in enumerate(header)]
    out = ["  ".join(fmt), "  ".join("-" * w for w in widths)]
    for row in lines:
        out.append("  ".join(f"{c:<{widths[i]}s}" if i == 0 else f"{c:>{widths[i]}s}" for i, c in enumerate(row)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="photos to generate and explain (default 1000)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS})")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder (and outputs); print its path")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or args.images < 1:
        parser.error(f"unknown variants {unknown}; use {', '.join(VARIANTS)}" if unknown else "nothing to run")
    tmp = tempfile.mkdtemp(prefix="camlens-memory-") if args.keep else None
    context = tempfile.TemporaryDirectory(prefix="camlens-memory-") if tmp is None else None
    root = Path(tmp or context.name)  # type: ignore[union-attr]
    try:
        (root / "photos").mkdir()
        start = time.perf_counter()
        from camlens.samples import generated_photos

        generated_photos(root / "photos", args.images)
        print(f"{args.images} distinct photos of 640x427 (JPEG q90) in {time.perf_counter() - start:.0f} s; "
              f"gradcam, efficientnet_lite0, batches of 8", flush=True)
        results = []
        for v in variants:
            command = [sys.executable, __file__, "--child", v, str(root / "photos"), str(root / f"out-{v}")]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{v}: exit {done.returncode}:\n{done.stderr.strip()[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if result["n_failed"]:
                print(f"{v}: {result['n_failed']} images failed, e.g. {result['failed'][0]}")
            print(f"  {v}: {result['seconds']:.0f} s", flush=True)
            results.append(result)
        print(f"torch threads: {results[0]['threads']}; RSS of the main process unless said; "
              f"'@n' is the batch end where it was sampled")
        print("\n".join(table(results, args.images)))
        if any(VARIANTS[v][2] for v in variants):
            print("workers' RSS counts pages they share with the main process (fork); their PSS splits them")
        print("PSS also splits library pages with any other process mapping them (e.g. a concurrent test run): noisy")
        if tmp:
            print(f"kept: {root}")
    finally:
        if context is not None:
            context.cleanup()


if __name__ == "__main__":
    main()
