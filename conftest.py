"""Markdown examples (README.md, docs/*.md) run by pytest-markdown-docs: each fence runs as it
is written, in a fresh temporary folder, so files it writes never land in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _examples_run_in_a_temporary_folder(request: pytest.FixtureRequest, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("markdown-docs"):
        monkeypatch.chdir(tmp_path)


KERAS_DOCS = "CAMLENS_KERAS_DOCS"
"""Set by tests/test_keras_backends.py: run the Markdown examples that use Keras (once per
backend, each in its own process), and only those; elsewhere they are skipped."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    keras_only = os.environ.get(KERAS_DOCS) == "1"
    kept, dropped = [], []
    for item in items:
        if not item.get_closest_marker("markdown-docs"):
            kept.append(item)
            continue
        uses_keras = "import keras" in getattr(item, "code", "")
        if keras_only and not uses_keras:
            dropped.append(item)
            continue
        if uses_keras and not keras_only:
            item.add_marker(pytest.mark.skip(reason="a Keras example: tests/test_keras_backends.py runs it per backend"))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    _spread_over_workers(items)


ON_THEIR_OWN = "tests/test_keras_backends.py"
"""Tests that each run for minutes in a process of their own (a Keras backend's whole suite)."""


def _spread_over_workers(items: list[pytest.Item]) -> None:
    """For pytest-xdist's ``--dist loadfile`` (each file's tests on one worker, in order: they
    share module fixtures such as a trained model, and the README commands run in sequence):
    the file of long Keras-backend runs goes first, so that both workers end together."""
    items[:] = [i for i in items if i.nodeid.startswith(ON_THEIR_OWN)] + [i for i in items
                                                                           if not i.nodeid.startswith(ON_THEIR_OWN)]
