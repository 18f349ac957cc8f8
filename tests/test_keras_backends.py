"""Run the Keras tests (tests/keras_cases) and the README's Keras examples under each Keras
backend, each in a fresh process: a backend is fixed when Keras is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_keras_cases_on_backend(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-o", "addopts=-ra", "-p", "no:cacheprovider",
         "-W", "ignore::DeprecationWarning", "--markdown-docs", "tests/keras_cases", "README.md"],
        cwd=ROOT, env={**os.environ, "KERAS_BACKEND": backend, "CAMLENS_KERAS_DOCS": "1"}, capture_output=True, text=True,
        timeout=1200,
    )
    tail = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, tail
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("tf.GradientTape" in line for line in skipped) and (backend != "tensorflow" or not skipped), tail
