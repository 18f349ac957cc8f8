"""One pipeline for many image files, shared by ``explain``, ``localize`` and ``evaluate``:
decoding and preprocessing in worker processes ahead of the model (a torch ``DataLoader``,
prefetching), batched compute in the calling thread, and rendering, encoding and writing on a
pool of threads behind it, so that the slowest stage sets the pace.

Memory stays bounded whatever the number of files: at most ``prefetch`` batches per worker are
decoded ahead, and at most :attr:`Behind.limit` jobs wait to be written.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from camlens.errors import ImageError, TargetError
from camlens.imageio import read_image


@dataclass
class Loaded:
    """One file as the model gets it: the picture (RGB, upright) and its preprocessed input,
    or why it could not be read."""

    index: int
    path: Path
    picture: Image.Image | None = None
    prepared: np.ndarray | None = None
    error: str | None = None


WRITERS = 2
"""Threads that render, encode and write outputs behind the model (Pillow's encoders and NumPy
release the GIL)."""


def default_workers(device: object = "cpu") -> int:
    """Decoding processes when none is asked for. With the model on the CPU, none: its threads
    take every core, and decoding in this process between batches while threads write behind
    was measured faster than worker processes competing for the cores
    (``bench/pipeline_throughput.py``). With the model on a GPU, one per core beyond the
    first, at most 4."""
    if getattr(device, "type", str(device)) not in ("cuda", "mps", "xpu"):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


class _Files:
    """The files as a map-style dataset: item ``i`` is the :class:`Loaded` of ``paths[i]``."""

    def __init__(self, paths: Sequence[Path], prepare: Callable[[Sequence[Image.Image]], np.ndarray] | None,
                 check: Callable[[Image.Image], None] | None) -> None:
        self.paths, self.prepare, self.check = list(paths), prepare, check

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Loaded:
        path = self.paths[i]
        try:
            picture = read_image(path)
            if self.check is not None:
                self.check(picture)
            prepared = self.prepare([picture])[0] if self.prepare is not None else None
            return Loaded(i, path, picture, prepared)
        except ImageError as exc:
            return Loaded(i, path, error=str(exc))
        except TargetError as exc:
            return Loaded(i, path, error=f"{path}: {exc}")


@dataclass
class _Shipped:
    """A :class:`Loaded` on its way from a worker: pixels and input as torch tensors, which the
    ``DataLoader`` passes through shared memory instead of a pipe."""

    index: int
    path: Path
    pixels: Any
    info: dict[Any, Any]
    prepared: Any
    error: str | None

    @classmethod
    def of(cls, item: Loaded) -> _Shipped:
        import torch

        pixels = torch.from_numpy(np.array(item.picture)) if item.picture is not None else None
        prepared = torch.from_numpy(item.prepared) if item.prepared is not None else None
        return cls(item.index, item.path, pixels, dict(item.picture.info) if item.picture else {}, prepared, item.error)

    def received(self) -> Loaded:
        picture = None
        if self.pixels is not None:
            picture = Image.fromarray(self.pixels.numpy())
            picture.info.update(self.info)
        prepared = self.prepared.numpy() if self.prepared is not None else None
        return Loaded(self.index, self.path, picture, prepared, self.error)


def _shipped(batch: list[Loaded]) -> list[_Shipped]:
    return [_Shipped.of(item) for item in batch]


def _worker_setup(worker: int, parent: int) -> None:
    """In a decoding worker: Ctrl-C is the calling process's to handle (it finishes its batch
    and stops the workers; a worker that died of it would fail the run instead), and on Linux
    the worker dies with the calling process, even when that one is killed (a worker left
    behind would hold its output pipes open)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the caller died before the line above
            os._exit(0)


def loaded_batches(
    paths: Sequence[Path],
    batch_size: int,
    *,
    prepare: Callable[[Sequence[Image.Image]], np.ndarray] | None = None,
    check: Callable[[Image.Image], None] | None = None,
    workers: int | None = None,
    prefetch: int = 2,
) -> Generator[list[Loaded], None, None]:
    """The files, ``batch_size`` at a time and in order, read (and checked with ``check``, and
    preprocessed with ``prepare``) by ``workers`` processes ahead of the caller (default
    ``default_workers()``; 0 reads them in this process, when each batch is asked for).

    A file that cannot be read (or that ``check`` refuses with a :class:`TargetError`) comes
    as a :class:`Loaded` with its one-line ``error``; the others go on."""
    files = _Files(paths, prepare, check)
    workers = default_workers() if workers is None else workers
    if workers <= 0 or len(files) <= batch_size:
        for start in range(0, len(files), batch_size):
            yield [files[i] for i in range(start, min(start + batch_size, len(files)))]
        return
    from torch.utils.data import DataLoader

    loader: Any = DataLoader(files, batch_size=batch_size, shuffle=False, num_workers=workers,  # type: ignore[arg-type]
                             collate_fn=_shipped, prefetch_factor=prefetch, persistent_workers=False,
                             worker_init_fn=partial(_worker_setup, parent=os.getpid()))
    iterator = iter(loader)
    try:
        for batch in iterator:
            yield [item.received() for item in batch]
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:  # a caller that stops early (Ctrl-C, an error) ends the workers now
            shutdown()


def readable(batch: Sequence[Loaded]) -> tuple[list[Loaded], list[Image.Image], np.ndarray | None]:
    """A batch's items that were read, their pictures, and their inputs stacked (None when the
    batch was not preprocessed)."""
    items = [item for item in batch if item.picture is not None]
    pictures = [item.picture for item in items if item.picture is not None]
    inputs = [item.prepared for item in items if item.prepared is not None]
    return items, pictures, np.stack(inputs) if items and len(inputs) == len(items) else None


class Behind:
    """Work done behind the model on ``threads`` threads (0: at once, in the caller), at most
    ``limit`` jobs waiting; :meth:`submit` blocks while that many are. Leaving the ``with``
    block waits for every job; a job's unexpected exception is raised there (or by the
    :meth:`submit` that waited for it)."""

    def __init__(self, threads: int, limit: int | None = None) -> None:
        self.limit = limit if limit is not None else max(1, 2 * threads)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="camlens-write") if threads > 0 else None
        self._waiting: deque[Future[None]] = deque()

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        if self._pool is None:
            job(*args)
            return
        while len(self._waiting) >= self.limit:
            self._waiting.popleft().result()
        self._waiting.append(self._pool.submit(job, *args))

    def wait(self) -> None:
        """Wait until every job submitted so far is done."""
        while self._waiting:
            self._waiting.popleft().result()

    def __enter__(self) -> Behind:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
