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
