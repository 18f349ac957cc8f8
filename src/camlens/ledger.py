"""What a folder run has done, kept as it goes, so that a run killed at any point (Ctrl-C,
SIGKILL, a rank that died, a machine that went down) is finished by ``--resume``, which does
only what is missing.

It lives in ``OUT/.camlens-run/``:

- ``run.json``: the run's settings, a fingerprint of its list of inputs, when it started (the
  name of its summary) and how many times it was resumed; written atomically by rank 0.
- ``rank-R.jsonl``: one line per input that rank ``R`` finished (its summary entry or its error),
  appended once the input's files are in place, and one line before its files are written (so
  that a resumed run knows which files there are its own to replace). A line cut short by a
  kill is ignored. An input whose files could not be written or rendered (a full disk, say) is
  tried again by a resumed run; one that cannot be read is not.

A run without ``resume`` starts a new ledger (the last one's record goes); ``resume`` continues
the last one, whose settings and inputs must be the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camlens.distributed import World
from camlens.errors import CamlensError
from camlens.imageio import write_atomic

FOLDER = ".camlens-run"
STATE = "run.json"


def fingerprint(inputs: Sequence[Path]) -> str:
    """A short hash of the list of inputs, in order."""
    digest = hashlib.sha256()
    for path in inputs:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()[:16]


@dataclass
class Ledger:
    """The open ledger of one rank: :meth:`begin` before an input's files are written,
    :meth:`finish` after; :attr:`done` holds what earlier attempts finished."""

    folder: Path
    state: dict[str, Any]
    rank: int
    done: set[int] = field(default_factory=set)
    """Global indices of the inputs that earlier attempts finished."""
    begun: set[int] = field(default_factory=set)
    """Inputs whose files earlier attempts had begun to write."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _fd: int | None = None

    @property
    def summary_name(self) -> str:
        return str(self.state["summary"])

    def begin(self, index: int) -> bool:
        """Note that this input's files are about to be written; True when an earlier attempt
        had begun writing them (the files there are this run's to replace)."""
        self._append({"i": index, "begin": True, "attempt": self.state["attempt"]})
        return index in self.begun

    def finish(self, index: int, entry: dict[str, Any]) -> None:
        """Record this input's summary entry (with ``error`` when it failed)."""
        self._append({"i": index, "attempt": self.state["attempt"], **entry})

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        path = self.folder / f"rank-{self.rank}.jsonl"
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
                    size = os.fstat(self._fd).st_size
                    if size and os.pread(self._fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # after a line a kill cut short: this one starts on its own
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                raise CamlensError(f"{path}: cannot write the run's ledger ({exc.strerror or exc})") from exc

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass  # what was written is in the file; only its flush to the disk is unconfirmed
                os.close(self._fd)
                self._fd = None

    def finished(self, count: int) -> dict[int, dict[str, Any]]:
        """Every input's last entry, by global index, over all ranks' files (rank 0 reads them
        after all ranks are done, to write the summary)."""
        return {i: e for i, e in _entries(self.folder).items() if i < count and "begin" not in e}

    def mark_complete(self) -> None:
        """Rank 0, once the summary is written: the run is whole."""
        self.state["complete"] = True
        _write_state(self.folder, self.state)


def open_ledger(out: Path, settings: dict[str, Any], inputs: Sequence[Path], resume: bool, world: World,
                keep: Sequence[Path] = ()) -> Ledger:
    """The ledger of the run writing into ``out``: a new one, or with ``resume`` the last one
    (refused if its settings or inputs differ). Rank 0 decides and the others follow it. A new
    run is refused, before anything changes, when one of the files ``keep`` exists (files of
    the run's own that an earlier run left: only a resumed run may replace them).

    Raises:
        CamlensError: ``resume`` on a run with other settings or inputs, a new run with a file of
            ``keep`` there, or the ledger cannot be written.
    """
    folder = out / FOLDER
    decided: tuple[dict[str, Any], set[int], set[int]] | str | None = None
    if world.main:  # rank 0 reads the records before any rank appends to them, and tells the others
        try:
            state = _decide(folder, settings, fingerprint(inputs), resume, out, keep)
            decided = (state, *_progress(folder)) if state["attempt"] > 0 else (state, set(), set())
        except CamlensError as exc:
            decided = str(exc)
    decided = world.broadcast(decided)
    if isinstance(decided, str) or decided is None:
        raise CamlensError(decided or "the run's ledger could not be opened")
    state, done, begun = decided
    return Ledger(folder, state, world.rank, done, begun)


def _progress(folder: Path) -> tuple[set[int], set[int]]:
    """The inputs earlier attempts finished, and those whose files they had begun to write."""
    done: set[int] = set()
    begun: set[int] = set()
    for i, entry in _entries(folder).items():
        if "begin" in entry or entry.get("retry"):
            begun.add(i)  # its files there, if any, are this run's
        elif entry.get("existed"):
            pass  # refused: the files there were not this run's, and are still not its to replace
        elif all(Path(p).exists() for p in entry.get("outputs", [])):
            done.add(i)
        else:
            begun.add(i)  # finished, but its files went since: do it again
    return done, begun


def _decide(folder: Path, settings: dict[str, Any], inputs: str, resume: bool, out: Path,
            keep: Sequence[Path]) -> dict[str, Any]:
    """Rank 0: the state of this run, written to ``run.json``."""
    last = _read_state(folder)
    if resume and last is not None:
        for key in sorted(set(settings) | set(last.get("settings", {}))):
            if last.get("settings", {}).get(key) != settings.get(key):
                raise CamlensError(f"{out}: its last run had another {key} ({last.get('settings', {}).get(key)!r}, "
                                   f"now {settings.get(key)!r}); resume it with the same settings, or leave out --resume")
        if last.get("inputs") != inputs:
            raise CamlensError(f"{out}: its last run had another list of inputs; resume it with the same ones, "
                               "or leave out --resume")
        state = {**last, "attempt": int(last.get("attempt", 0)) + 1}
    else:
        for path in keep:
            if path.exists():
                raise CamlensError(f"{path}: exists; pass overwrite=True to replace it, or resume=True to finish its run")
        clear_ranks(folder, "the run's ledger")
        state = {"settings": settings, "inputs": inputs, "attempt": 0, "complete": False,
                 "summary": _free_summary_name(out)}
    _write_state(folder, state)
    return state


def clear_ranks(folder: Path, what: str) -> None:
    """Create ``folder`` and remove its ranks' records (``rank-*.jsonl``): a new run starts.

    Raises:
        CamlensError: ``folder`` cannot be written (naming ``what`` it holds).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("rank-*.jsonl"):
            old.unlink()
    except OSError as exc:
        raise CamlensError(f"{folder}: cannot start {what} ({exc.strerror or exc})") from exc


def _free_summary_name(out: Path) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        name = f"camlens-run-{stamp}.json" if n == 0 else f"camlens-run-{stamp}-{n}.json"
        if not (out / name).exists():
            return name
    raise CamlensError(f"{out}: too many run summaries named camlens-run-{stamp}*.json")


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    data = json.dumps(state, indent=1).encode()
    write_atomic(folder / STATE, lambda fh: fh.write(data), overwrite=True)


def _entries(folder: Path) -> dict[int, dict[str, Any]]:
    """The last record of every input over all ranks' files: the one of the latest attempt,
    and of two in one attempt, the later line."""
    latest: dict[int, tuple[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        for record in _records(path):
            i, attempt = record.get("i"), record.get("attempt", 0)
            if isinstance(i, int) and isinstance(attempt, int) and (i not in latest or attempt >= latest[i][0]):
                latest[i] = (attempt, record)
    return {i: record for i, (_, record) in latest.items()}


def _records(path: Path) -> Iterable[dict[str, Any]]:
    try:
        with path.open("rb") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(record, dict):
                    yield record
    except OSError:
        return
