"""The digits-canvas localization benchmark: real handwritten digits (scikit-learn's
``load_digits``, 8x8 scans from 43 writers) scaled up, placed at random on a larger cluttered
canvas, with the exact box of each digit's ink.

Layout written (``DIR`` must not exist, or be empty; everything is written to a temporary
folder first and moved into place at the end)::

    DIR/train/<digit>/train_<digit>_<n>.png
    DIR/test/<digit>/test_<digit>_<n>.png
    DIR/boxes.csv          image,label,xmin,ymin,xmax,ymax,width,height (pixel edges, 0-based, exclusive max)

Train and test images use disjoint halves of the 1797 source digits, so the test set holds
handwriting the model never saw.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from camlens.errors import CamlensError
from camlens.evaluation.boxes import Box

INK = 0.2
"""A pixel belongs to the digit where its upscaled ink is at least this fraction of full ink."""


@dataclass(frozen=True)
class CanvasSpec:
    """How the benchmark images are drawn."""

    size: int = 96
    digit_min: int = 28
    digit_max: int = 56
    clutter: int = 6


def render(digit: np.ndarray, rng: np.random.Generator, spec: CanvasSpec) -> tuple[Image.Image, Box]:
    """Draw one ``(8, 8)`` digit (values 0..16) on a cluttered canvas; return it and the digit's box."""
    return place(background(rng, spec), digit, rng, spec)


def background(rng: np.random.Generator, spec: CanvasSpec) -> Image.Image:
    """A random dark colour with smooth noise, and clutter: random strokes and rings no longer
    than half the smallest digit."""
    s = spec.size
    base = rng.uniform(0, 90, size=3)
    noise = np.asarray(
        Image.fromarray(rng.uniform(0, 255, (8, 8)).astype(np.uint8)).resize((s, s), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    canvas = np.clip(base[None, None, :] + 0.25 * noise[..., None], 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    reach = spec.digit_min // 2
    for _ in range(spec.clutter):
        colour = tuple(int(v) for v in rng.uniform(60, 255, size=3))
        x, y = rng.uniform(0, s, size=2)
        if rng.random() < 0.5:
            dx, dy = rng.uniform(-reach, reach, size=2)
            draw.line([(x, y), (x + dx, y + dy)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = rng.uniform(2, reach / 2)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=int(rng.integers(1, 3)))
    return img


def place(canvas: Image.Image, digit: np.ndarray, rng: np.random.Generator, spec: CanvasSpec) -> tuple[Image.Image, Box]:
    """Blend the digit, bicubic-upscaled to a random size, in a random bright colour at a random
    position fully inside the canvas; its box bounds the pixels with at least :data:`INK` ink."""
    side = int(rng.integers(spec.digit_min, spec.digit_max + 1))
    ink = np.asarray(
        Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC),
        dtype=np.float32,
    ) / 255.0
    x0, y0 = (int(v) for v in rng.integers(0, spec.size - side + 1, size=2))
    tint = rng.uniform(170, 255, size=3)
    pixels = np.asarray(canvas, dtype=np.float32).copy()
    patch = pixels[y0 : y0 + side, x0 : x0 + side]
    pixels[y0 : y0 + side, x0 : x0 + side] = patch * (1 - ink[..., None]) + tint * ink[..., None]
    ys, xs = np.nonzero(ink >= INK)
    if not len(xs):
        raise ValueError("the digit has no ink")
    box = Box(float(x0 + xs.min()), float(y0 + ys.min()), float(x0 + xs.max() + 1), float(y0 + ys.max() + 1))
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), box


def generate(out: str | Path, train_per_class: int = 100, test_per_class: int = 30, seed: int = 0,
             spec: CanvasSpec = CanvasSpec()) -> Path:
    """Write the benchmark to ``out`` (see the module docstring) and return its ``boxes.csv``.

    Raises:
        CamlensError: ``out`` exists and is not empty, bad sizes, or a write failure.
    """
    from sklearn.datasets import load_digits

    dest = Path(out)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CamlensError(f"{dest}: exists and is not empty; choose a new folder")
    if train_per_class < 1 or test_per_class < 1:
        raise CamlensError("images per class must be at least 1")
    if not 8 <= spec.digit_min <= spec.digit_max <= spec.size:
        raise CamlensError(f"digit sizes must satisfy 8 <= min <= max <= canvas size ({spec.size})")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    halves = {"train": order[: len(order) // 2], "test": order[len(order) // 2 :]}
    counts = {"train": train_per_class, "test": test_per_class}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    except OSError as exc:
        raise CamlensError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    try:
        rows = []
        for split, pool in halves.items():
            for label in range(10):
                sources = pool[digits.target[pool] == label]
                folder = tmp / split / str(label)
                folder.mkdir(parents=True)
                for n in range(counts[split]):
                    image, box = render(digits.images[sources[n % len(sources)]], rng, spec)
                    name = f"{split}/{label}/{split}_{label}_{n:05d}.png"
                    image.save(tmp / name)
                    rows.append([name, str(label), box.xmin, box.ymin, box.xmax, box.ymax, spec.size, spec.size])
        with open(tmp / "boxes.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "label", "xmin", "ymin", "xmax", "ymax", "width", "height"])
            writer.writerows(rows)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.replace(tmp, dest)
    except OSError as exc:
        raise CamlensError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "boxes.csv"
