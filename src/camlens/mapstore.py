"""All raw maps of a folder run in one chunked store (Zarr v3) that a user opens lazily:
``zarr.open_group("OUT/maps.zarr", mode="r")["maps/gradcam/bn2"][i]`` reads image ``i``'s
maps and nothing else.

Zarr rather than HDF5: a Zarr store is a folder with one file per chunk, so the ranks of a
``torchrun`` run (on one machine or many sharing a file system) write their own chunks at the
same time with no lock and no MPI build; HDF5 allows one writer at a time. Chunks hold one
batch of images, and every batch is one rank's (see :mod:`camlens.distributed`), so no two
writers ever touch one chunk.

Layout, ``N`` inputs in the run's order, ``T`` target slots per image:

- ``paths`` ``(N,)`` str: the input files.
- ``maps/<method>/<layer>`` ``(N, T, h, w)`` float32: raw maps at the layer's resolution,
  NaN where there is none (an image that failed, fewer targets than slots).
- ``targets`` ``(N, T)`` int32: the class explained in each slot (-1: none or not a class);
  ``target_probability`` ``(N, T)`` float32.
- ``predicted`` ``(N, top)`` int32 and ``predicted_probability`` ``(N, top)`` float32: the model's
  top classes.
- ``done`` ``(N,)`` bool: the row is written. The group's attributes name the model, its class
  labels, the methods and layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlens.errors import CamlensError

if TYPE_CHECKING:
    from camlens.lens import Explanation

NAME = "maps.zarr"
FIXED = ("paths", "targets", "target_probability", "predicted", "predicted_probability", "done")
"""The arrays beside the maps, ``done`` made last."""


@dataclass
class MapStore:
    """The open store of one run; rows are written a batch (one chunk) at a time."""

    group: Any
    slots: int
    top: int

    @classmethod
    def create(cls, path: Path, inputs: Sequence[Path], sample: list[Explanation], *, slots: int, top: int,
               block: int, about: dict[str, Any]) -> MapStore:
        """A new store for ``inputs`` whose maps are shaped like those of ``sample`` (one
        image's explanations), chunked ``block`` images along the first axis."""
        import zarr

        n = len(inputs)
        try:
            if path.exists():  # the caller's check: never a store the user had, or one that is not a store
                import shutil

                shutil.rmtree(path) if path.is_dir() and (path / "zarr.json").is_file() else path.unlink()
            group = zarr.open_group(str(path), mode="w-")
            group.attrs.update(about)
            group.create_array("paths", shape=(n,), dtype=str, chunks=(block,))[:] = np.array([str(p) for p in inputs])
            for exp in sample:
                key = _key(exp)
                if key not in group:
                    group.create_array(key, shape=(n, slots, *exp.raw.shape), dtype="float32",
                                       chunks=(block, slots, *exp.raw.shape), fill_value=np.nan)
            group.create_array("targets", shape=(n, slots), dtype="int32", chunks=(block, slots), fill_value=-1)
            group.create_array("target_probability", shape=(n, slots), dtype="float32", chunks=(block, slots),
                               fill_value=np.nan)
            group.create_array("predicted", shape=(n, top), dtype="int32", chunks=(block, top), fill_value=-1)
            group.create_array("predicted_probability", shape=(n, top), dtype="float32", chunks=(block, top),
                               fill_value=np.nan)
            group.create_array("done", shape=(n,), dtype="bool", chunks=(block,), fill_value=False)
        except (OSError, ValueError, TypeError) as exc:
            raise CamlensError(f"{path}: cannot create the map store ({exc})") from exc
        return cls(group, slots, top)

    @classmethod
    def open(cls, path: Path) -> MapStore:
        """The store of the run being resumed."""
        import zarr

        try:
            group: Any = zarr.open_group(str(path), mode="r+")
            for name in FIXED:  # a store cut short while it was made has not all of them
                group[name]  # noqa: B018
            return cls(group, int(group["targets"].shape[1]), int(group["predicted"].shape[1]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CamlensError(f"{path}: cannot open the run's map store ({exc})") from exc

    def write(self, start: int, count: int, rows: dict[int, list[Explanation]]) -> None:
        """Write the chunk of images ``start .. start + count - 1``: ``rows`` holds the
        explanations of those that were explained (the others stay empty)."""
        arrays: dict[str, np.ndarray] = {}
        targets = np.full((count, self.slots), -1, np.int32)
        target_p = np.full((count, self.slots), np.nan, np.float32)
        predicted = np.full((count, self.top), -1, np.int32)
        predicted_p = np.full((count, self.top), np.nan, np.float32)
        done = np.zeros(count, bool)
        for i, explanations in rows.items():
            j = i - start
            done[j] = True
            for k, p in enumerate(explanations[0].predictions[: self.top]):
                predicted[j, k] = p.index
                predicted_p[j, k] = np.nan if p.probability is None else p.probability
            slot: dict[str, int] = {}
            first = _key(explanations[0])  # its targets are every group's
            for exp in explanations:
                key = _key(exp)
                if key not in arrays:
                    if key not in self.group:
                        raise CamlensError(f"{exp.method} at {exp.layer}: not in the map store")
                    arrays[key] = np.full((count, *self.group[key].shape[1:]), np.nan, np.float32)
                s = slot[key] = slot.get(key, -1) + 1
                if s >= self.slots or exp.raw.shape != arrays[key].shape[2:]:
                    raise CamlensError(f"{exp.method} at {exp.layer}: a map of shape {exp.raw.shape} (target slot {s}) "
                                       f"does not fit the store's {arrays[key].shape[2:]} x {self.slots} slots")
                arrays[key][j, s] = exp.raw
                if key == first:
                    targets[j, s] = exp.target.index
                    target_p[j, s] = np.nan if exp.target.probability is None else exp.target.probability
        stop = start + count
        try:
            for key, values in arrays.items():
                self.group[key][start:stop] = values
            for key, values in (("targets", targets), ("target_probability", target_p), ("predicted", predicted),
                                ("predicted_probability", predicted_p), ("done", done)):
                self.group[key][start:stop] = values  # done last: a row marked done is whole
        except OSError as exc:
            raise CamlensError(f"{self.group.store}: cannot write maps {start} to {stop - 1} "
                               f"({exc.strerror or exc})") from exc


def _key(exp: Explanation) -> str:
    return f"maps/{exp.method}/{exp.layer}"
