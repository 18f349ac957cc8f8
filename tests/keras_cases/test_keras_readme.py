"""The README's Keras shell commands as a new user types them, offline, on this backend (see
tests/test_readme_commands.py for the PyTorch ones and the rules)."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from tests.readme import DEAD_PROXY, files_under, is_keras, readme_commands, run_cli

keras = pytest.importorskip("keras")

EXPECT = {"camlens layers my_model.keras": "backbone/conv2"}
"""Listing commands and what their output shows (the rest must write files)."""
OFFLINE = {"camlens explain cat.jpg --model keras:ResNet50": "cannot get ImageNet weights for keras:ResNet50"}
"""Commands whose weights download on first use: offline they fail at once, in one line."""


def _weights(model: keras.Model) -> keras.Model:
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in layer.get_weights()])
    return model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cat.jpg, a nested model with three classes and its labels, a two-output model."""
    from camlens.samples import sample_image

    root = tmp_path_factory.mktemp("readme_keras")
    sample_image("chelsea").save(root / "cat.jpg")
    backbone = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1"),
                                 keras.layers.Conv2D(8, 3, activation="relu", name="conv2")], name="backbone")
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    _weights(keras.Model(inputs, keras.layers.Dense(3, name="fc")(pooled))).save(root / "my_model.keras")
    (root / "labels.txt").write_text("cat\ndog\nfox\n")
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs))
    two = keras.Model(inputs, {"species": keras.layers.Dense(3, name="species")(pooled),
                               "size": keras.layers.Dense(1, name="size")(pooled)})
    _weights(two).save(root / "two_heads.keras")
    return root


def test_the_readme_has_the_keras_commands_named_here() -> None:
    commands = [c for c in readme_commands() if is_keras(c)]
    assert set(EXPECT) | set(OFFLINE) <= set(commands) and len(commands) >= 4, commands


@pytest.mark.parametrize("command", [c for c in readme_commands() if is_keras(c)])
def test_readme_keras_command_runs_offline(command: str, workspace: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)
    before = files_under(workspace)
    result = run_cli(shlex.split(command)[1:], capsys)
    if command in OFFLINE:
        lines = result.err.strip().splitlines()
        assert result.code == 2 and len(lines) == 1 and OFFLINE[command] in lines[0], result.err
        assert not result.out, result.out  # no "Downloading data from ..." line before it
        assert files_under(workspace) == before
        return
    assert result.code == 0, result.err
    if command in EXPECT:
        assert EXPECT[command] in result.out
    else:
        assert files_under(workspace) - before, f"{command} wrote nothing"
