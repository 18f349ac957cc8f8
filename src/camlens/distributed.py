"""Runs spread over processes and machines by ``torchrun``: which inputs each rank does, and
the few Python objects the ranks exchange (their reports and scores, gathered on rank 0).

``torchrun --nproc_per_node=N -m camlens explain ...`` starts ``N`` copies of the command per
machine with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their
environment; :func:`joined` reads them. Inputs are dealt in blocks of consecutive files (one
batch each), block ``k`` to rank ``k % WORLD_SIZE``, so that every rank computes exactly the
batches a one-process run computes and the results are the same bit for bit. The ranks talk over
gloo whatever the device: they exchange only reports and score sums, never tensors on a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from camlens.errors import CamlensError

T = TypeVar("T")

TIMEOUT = timedelta(hours=24)
"""How long a rank waits for the others at a collective step: at the end, the slowest rank's
whole share may still be going (a resumed run's shares can be uneven). A rank that dies is
noticed at once by torchrun, which stops the others; this bounds only a rank that hangs."""


@dataclass(frozen=True)
class World:
    """This process's place in a run: ``rank`` of ``size`` processes, ``local_rank`` on its
    machine. The default is a run of one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes what concerns the whole run."""
        return self.rank == 0

    def share(self, count: int, block: int, skip: Callable[[int], bool] = lambda start: False) -> list[int]:
        """The indices of ``count`` inputs that this rank does: blocks of ``block`` consecutive
        indices, dealt in turn, block ``k`` to rank ``k % size``; the blocks for which
        ``skip(first index)`` is true (done by an earlier attempt) are left out before dealing,
        so that the work left is shared evenly."""
        if block < 1:
            raise CamlensError(f"block size must be at least 1, not {block}")
        starts = [s for s in range(0, count, block) if not skip(s)]
        return [i for s in starts[self.rank :: self.size] for i in range(s, min(s + block, count))]

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value``, in rank order, on rank 0 (None on the others)."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] | None = [None] * self.size if self.main else None
        try:
            dist.gather_object(value, values, dst=0)
        except Exception as exc:  # noqa: BLE001  (gloo reports a dead peer as RuntimeError or its own classes)
            raise CamlensError(f"rank {self.rank}: another rank of the run failed ({_first_line(exc)})") from exc
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box: list[Any] = [value]
        try:
            dist.broadcast_object_list(box, src=0)
        except Exception as exc:  # noqa: BLE001
            raise CamlensError(f"rank {self.rank}: another rank of the run failed ({_first_line(exc)})") from exc
        return box[0]  # type: ignore[no-any-return]

    def barrier(self) -> None:
        """Wait until every rank is here."""
        self.broadcast(None)

    def device(self, asked: str) -> str:
        """The device of this rank: ``asked``, unless it is ``"auto"`` in a run of several
        processes: then its machine's GPU number ``local_rank`` when there are GPUs, else the
        CPU."""
        if asked != "auto" or self.size == 1:
            return asked
        import torch

        return f"cuda:{self.local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"


ALONE = World()
"""A run of one process."""


@contextmanager
def joined() -> Iterator[World]:
    """The :class:`World` of this process; under ``torchrun``, joined to the others' process
    group (gloo) while inside, and left at the end."""
    size = _int_env("WORLD_SIZE", 1)
    if size <= 1:
        yield ALONE
        return
    rank, local = _int_env("RANK", 0), _int_env("LOCAL_RANK", 0)
    if not 0 <= rank < size:
        raise CamlensError(f"RANK={rank} is not between 0 and WORLD_SIZE-1={size - 1}")
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", rank=rank, world_size=size, timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        raise CamlensError(f"rank {rank}: cannot join the run's other processes ({_first_line(exc)})") from exc
    try:
        yield World(rank, size, local)
    finally:
        dist.destroy_process_group()


def ranks_of(values: Sequence[Sequence[T]], order: Sequence[Sequence[int]]) -> list[T]:
    """Per-rank lists put back in global order: ``values[r][j]`` is the item of global index
    ``order[r][j]``."""
    placed: dict[int, T] = {}
    for rank_values, rank_order in zip(values, order, strict=True):
        placed.update(zip(rank_order, rank_values, strict=True))
    return [placed[i] for i in sorted(placed)]


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise CamlensError(f"environment variable {name}={text!r} is not a whole number") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
