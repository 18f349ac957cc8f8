"""Real sample photos shipped by scikit-image, for demos and tests that must run offline."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from camlens import arguments
from camlens.errors import CamlensError
from camlens.imageio import save_image

SAMPLES = ("chelsea", "coffee", "rocket", "astronaut")
"""scikit-image photos: a cat, an espresso cup, a rocket on its pad, an astronaut."""


def sample_image(name: str) -> Image.Image:
    """One scikit-image sample photo as an RGB PIL image (``name`` one of :data:`SAMPLES`).

    Raises:
        CamlensError: another name.
    """
    from skimage import data

    if name not in SAMPLES:
        raise CamlensError(f"no sample photo {name!r}; choose from {', '.join(SAMPLES)}")
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def write_samples(folder: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the sample photos as PNGs into ``folder`` (made if missing); existing files are
    kept as they are unless ``overwrite``."""
    folder = arguments.path(folder, "folder")
    paths = []
    for name in SAMPLES:
        path = folder / f"{name}.png"
        if overwrite or not path.exists():
            save_image(sample_image(name), path, overwrite)
        paths.append(path)
    return paths


def generated_photos(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (640, 427)) -> list[Path]:
    """``count`` distinct photo-like JPEG files of ``size`` made from the samples (random crops,
    flips, rescalings and per-channel colour gains), for benchmarks and tests at scale."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sources = [sample_image(name).convert("RGB") for name in SAMPLES]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.clip(np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths
