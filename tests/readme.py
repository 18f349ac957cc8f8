"""The README's shell commands, and running one ``camlens`` command in this process.

Shared by tests/test_readme_commands.py (PyTorch) and tests/keras_cases (Keras, per backend)."""

from __future__ import annotations

import re
import shlex
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

DEAD_PROXY = "http://127.0.0.1:9"
"""Downloads go through a proxy that refuses connections: offline at once, online or not."""


def readme_commands() -> list[str]:
    """Every ``camlens ...`` line of the README's ``bash`` fences, in order, without its comment
    (the two setup lines at the top call ``.venv/bin/camlens`` and are run by CI itself)."""
    fences = re.findall(r"^```bash\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    return [re.sub(r"\s+#\s.*$", "", line).strip() for fence in fences for line in fence.splitlines()
            if line.startswith("camlens ")]


def is_keras(command: str) -> bool:
    args = shlex.split(command)
    return any(a.endswith(".keras") or a.startswith("keras:") for a in args)


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> Run:
    """``camlens ARGS`` through its real entry point (one-line errors, exit codes), in this
    process; the warning and signal handlers it installs are put back afterwards."""
    from camlens.cli.app import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    shown, argv = warnings.showwarning, sys.argv
    capsys.readouterr()
    sys.argv = ["camlens", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv, warnings.showwarning = argv, shown
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
