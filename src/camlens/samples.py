"""Real sample photos shipped by scikit-image, for demos and tests that must run offline."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from camlens.imageio import save_image

SAMPLES = ("chelsea", "coffee", "rocket", "astronaut")
"""scikit-image photos: a cat, an espresso cup, a rocket on its pad, an astronaut."""


def sample_image(name: str) -> Image.Image:
    """One scikit-image sample photo as an RGB PIL image."""
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def write_samples(folder: Path, overwrite: bool = False) -> list[Path]:
    """Write the sample photos as PNGs into ``folder``; existing files are kept as they are."""
    paths = []
    for name in SAMPLES:
        path = folder / f"{name}.png"
        if overwrite or not path.exists():
            save_image(sample_image(name), path, overwrite)
        paths.append(path)
    return paths
