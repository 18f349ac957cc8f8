"""Labelled images: an image folder per class (torchvision's ImageFolder layout), or a named
torchvision dataset, and a stratified, seeded train/validation split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from camlens.errors import CamlensError
from camlens.imageio import find_images, read_image

NAMED_DATASETS = ("mnist", "fashion-mnist", "cifar10")


class LabelledImages(Protocol):
    """Images with class indices into :attr:`classes`; :meth:`load` may raise ``ImageError``."""

    classes: list[str]

    def __len__(self) -> int: ...

    def label(self, i: int) -> int: ...

    def load(self, i: int) -> Image.Image: ...

    def name(self, i: int) -> str: ...


@dataclass
class ImageFolder:
    """``root/<class>/**/<image>``: classes are the sub-folder names, sorted; images are found
    recursively inside each class folder. Files are read only when loaded."""

    root: Path
    classes: list[str]
    paths: list[Path]
    labels: list[int]

    @classmethod
    def scan(cls, root: str | Path, classes: Sequence[str] | None = None) -> ImageFolder:
        """Index a folder. With ``classes`` (e.g. a trained model's labels), sub-folders map to
        those indices and an unknown sub-folder is an error.

        Raises:
            CamlensError: no such folder, no class sub-folders with images, or an unknown class.
        """
        base = Path(root)
        if not base.is_dir():
            raise CamlensError(f"{base}: no such folder (expected one sub-folder of images per class)")
        found = {d.name: find_images(d, recursive=True) for d in sorted(base.iterdir()) if d.is_dir()}
        found = {name: files for name, files in found.items() if files}
        if not found:
            raise CamlensError(f"{base}: no class sub-folders with images (expected {base}/<class>/<image>)")
        names = list(classes) if classes is not None else sorted(found)
        index = {n: i for i, n in enumerate(names)}
        unknown = [n for n in found if n not in index]
        if unknown:
            raise CamlensError(f"{base}/{unknown[0]}: class {unknown[0]!r} is not one of the model's classes")
        paths = [p for files in found.values() for p in files]
        labels = [index[name] for name, files in found.items() for _ in files]
        return cls(base, names, paths, labels)

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, i: int) -> int:
        return self.labels[i]

    def load(self, i: int) -> Image.Image:
        return read_image(self.paths[i])

    def name(self, i: int) -> str:
        return str(self.paths[i])


@dataclass
class NamedDataset:
    """MNIST, Fashion-MNIST or CIFAR-10 through ``torchvision.datasets`` (downloaded on first
    use into ``root``); grayscale digits become RGB when preprocessed."""

    dataset: object
    classes: list[str]
    title: str

    @classmethod
    def open(cls, name: str, root: Path, train: bool) -> NamedDataset:
        import torchvision.datasets as tvd

        builders: dict[str, Callable[..., object]] = {
            "mnist": tvd.MNIST,
            "fashion-mnist": tvd.FashionMNIST,
            "cifar10": tvd.CIFAR10,
        }
        try:
            data = builders[name](root=str(root), train=train, download=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise CamlensError(
                f"cannot get dataset {name!r} into {root} ({type(exc).__name__}): it downloads on first use; "
                "connect once, or train on an image folder"
            ) from exc
        return cls(data, [str(c) for c in data.classes], name)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def label(self, i: int) -> int:
        return int(self.dataset.targets[i])  # type: ignore[attr-defined]

    def load(self, i: int) -> Image.Image:
        return self.dataset[i][0]  # type: ignore[index,no-any-return]

    def name(self, i: int) -> str:
        return f"{self.title}[{i}]"


def open_dataset(source: str, cache: Path, train: bool = True) -> LabelledImages:
    """An image folder path, or one of :data:`NAMED_DATASETS` (its train or test split)."""
    if source in NAMED_DATASETS and not Path(source).exists():
        return NamedDataset.open(source, cache, train)
    return ImageFolder.scan(source)


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)`` with ``fraction`` of each class in val (at least one image of
    every class that has two or more), drawn with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise CamlensError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    arr = np.asarray(labels)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(arr):
        idx = rng.permutation(np.flatnonzero(arr == c))
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.extend(int(i) for i in idx[:n_val])
        train.extend(int(i) for i in idx[n_val:])
    return sorted(train), sorted(val)
