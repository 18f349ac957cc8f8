"""Class names: ImageNet-1k readable names, or a user's labels file; lookup by index or name."""

from __future__ import annotations

import csv
import difflib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from camlens.errors import CamlensError, TargetError


@dataclass(frozen=True)
class Labels:
    """Ordered class names. A name may list comma-separated synonyms ("tabby, tabby cat")."""

    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]

    def short(self, index: int) -> str:
        """The first synonym of a class name."""
        return self.names[index].split(",")[0].strip()

    def index(self, query: str | int) -> int:
        """Class index for an index (``281``, ``"281"``) or a name matched case-insensitively
        against any synonym (``"tabby cat"``, ``"Tabby"``).

        Raises:
            TargetError: unknown index or name; the message suggests the closest names.
        """
        text = str(query).strip()
        if text.lstrip("-").isdigit():
            i = int(text)
            if not 0 <= i < len(self.names):
                raise TargetError(f"class index {i} is out of range: the model has {len(self.names)} classes")
            return i
        key = text.lower()
        synonyms = self._synonyms()
        if key in synonyms:
            return synonyms[key]
        close = difflib.get_close_matches(key, list(synonyms), n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else "; `camlens classes WORD` searches names"
        raise TargetError(f"no class named {text!r}{hint}")

    def search(self, word: str) -> list[tuple[int, str]]:
        """Classes whose name contains ``word`` (case-insensitive)."""
        key = word.strip().lower()
        return [(i, n) for i, n in enumerate(self.names) if key in n.lower()]

    def _synonyms(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for i, name in enumerate(self.names):
            table.setdefault(name.lower(), i)
            for syn in name.split(","):
                table.setdefault(syn.strip().lower(), i)
        return table


@cache
def imagenet() -> Labels:
    """The 1000 ImageNet-1k class descriptions, in the standard class-index order.

    Read from the data files timm ships (``timm/data/_info``), located without importing timm:
    importing it pulls in torchvision, which must not be loaded after TensorFlow in one process.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise CamlensError("ImageNet class names come with timm; pip install timm")
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemmas = dict(csv.reader((info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines(), delimiter="\t"))
    return Labels(tuple(lemmas[s] for s in synsets))


def generic(count: int) -> Labels:
    """Placeholder names ``class 0`` ... for a model without a labels file."""
    return Labels(tuple(f"class {i}" for i in range(count)))


def from_file(path: str | Path) -> Labels:
    """Read labels from a text file (one name per line) or a JSON list / index->name object."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CamlensError(f"{p}: cannot read labels file ({exc.__class__.__name__}: {exc})") from exc
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CamlensError(f"{p}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            data = [data[k] for k in sorted(data, key=int)]
        if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
            raise CamlensError(f"{p}: expected a JSON list of names or an object index -> name")
        names: Sequence[str] = data
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise CamlensError(f"{p}: labels file is empty")
    return Labels(tuple(names))
