"""Hostile files and names: weights that would run code, checkpoints naming functions, output
paths leaving ``--out``, terminal escapes and rich markup in names and labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from camlens.errors import CamlensError, ModelError
from camlens.imageio import MAX_NAME_BYTES, fit_name, output_path, safe_part
from camlens.models import Labels, Preprocessing, load_model, save_checkpoint
from camlens.models.small_cnn import SmallCNN
from tests.test_cli import camlens


class Payload:
    """Unpickling this creates ``marker``: the proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil_weights(tmp_path: Path) -> tuple[Path, Path]:
    """A real resnet18 state dict with a payload next to it."""
    marker = tmp_path / "PWNED"
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    torch.save({"state_dict": state, "extra": Payload(marker)}, tmp_path / "evil.pt")
    return tmp_path / "evil.pt", marker


@pytest.fixture
def small_checkpoint(tmp_path: Path) -> Path:
    labels = Labels(("ant", "bee", "cat"))
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(64, 64), interpolation="bilinear")
    return save_checkpoint(tmp_path / "small.pt", "small_cnn", SmallCNN(3).eval(), labels, prep)


def test_weights_with_a_payload_are_refused_and_run_nothing(evil_weights: tuple[Path, Path]) -> None:
    evil, marker = evil_weights
    with pytest.raises(ModelError, match=r"evil.pt: holds pickled Python objects.*would run code"):
        load_model("resnet18", weights=evil, device="cpu")
    with pytest.raises(ModelError, match="holds pickled Python objects"):
        load_model("timm:resnet18", weights=evil, device="cpu")
    with pytest.raises(ModelError, match="trust_pickle=True"):
        load_model(str(evil), device="cpu")
    assert not marker.exists()


def test_cli_refuses_payload_weights_in_one_line(evil_weights: tuple[Path, Path], tmp_path: Path) -> None:
    evil, marker = evil_weights
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    for args in (["--model", "resnet18", "--weights", evil], ["--model", evil], ["--model", evil, "--trust-pickle"]):
        result = camlens("explain", tmp_path / "a.png", *args, "--out", tmp_path / "out", "--device", "cpu")
        if "--trust-pickle" in args:  # asked for explicitly: the payload runs, and is no model
            assert result.returncode == 2 and marker.exists(), result.stderr
            assert "holds weights but no architecture" in result.stderr
            continue
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "would run code" in result.stderr and not marker.exists()
    assert "--trust-pickle" in camlens("explain", tmp_path / "a.png", "--model", evil, "--out", tmp_path / "o").stderr


def test_a_whole_pickled_module_loads_only_when_trusted(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelError, match="would run code from the file"):
        load_model(str(tmp_path / "whole.pt"), device="cpu")
    loaded = load_model(str(tmp_path / "whole.pt"), device="cpu", trust_pickle=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


@pytest.mark.parametrize("function", ["sys.exit", "os.system", "builtins.exec", "evil_next_door.run", "numpy.negative"])
def test_a_checkpoint_cannot_name_a_function_to_call(tmp_path: Path, small_checkpoint: Path, function: str) -> None:
    data = torch.load(small_checkpoint, weights_only=True)
    data["preprocessing"]["function"] = function
    torch.save(data, small_checkpoint)
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_next_door.py").write_text(f"open({str(marker)!r}, 'w')\ndef run(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ModelError, match=r"small.pt: preprocessing function .* is not allowed"):
            load_model(str(small_checkpoint), device="cpu")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists() and "evil_next_door" not in sys.modules
    with pytest.raises(CamlensError, match="is not allowed"):
        Preprocessing(function=function)


def test_known_preprocessing_functions_are_the_keras_applications_ones() -> None:
    from camlens.models.preprocess import KNOWN_FUNCTIONS

    assert "keras.applications.resnet50.preprocess_input" in KNOWN_FUNCTIONS
    assert all(f.startswith("keras.applications.") and f.endswith(".preprocess_input") for f in KNOWN_FUNCTIONS)


def test_output_paths_stay_inside_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert safe_part("../..") == "x" and safe_part("outer/../inner") == "outer-..-inner"
    assert safe_part("[/red]\x1b[31m") == "red-31m"
    assert output_path(out, "sub/a_gradcam.png") == out / "sub" / "a_gradcam.png"
    for name in ("../a.png", "sub/../../a.png", "/etc/a.png", "..", ""):
        with pytest.raises(CamlensError, match="would leave the output folder"):
            output_path(out, name)
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(CamlensError, match="leads outside the output folder"):
        output_path(out, "link/a.png")


def test_long_names_are_shortened_deterministically_and_stay_unique() -> None:
    a, b = "é" * 150 + "_a.png", "é" * 150 + "_b.png"
    fa, fb = fit_name(a), fit_name(b)
    assert fa != fb and fa == fit_name(a) and fa.endswith(".png") and fb.endswith(".png")
    assert len(fa.encode()) <= MAX_NAME_BYTES and len(fb.encode()) <= MAX_NAME_BYTES
    assert fit_name("short.png") == "short.png"


def test_markup_and_escapes_in_names_and_labels_print_as_text(tmp_path: Path, small_checkpoint: Path) -> None:
    data = torch.load(small_checkpoint, weights_only=True)
    data["labels"] = ["[/red] bad", "\x1b[31mred\x1b[0m", ":smile: [bold]x"]
    torch.save(data, small_checkpoint)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(["esc\x1b]0;title\x07.png", "[red]x.png"]):
        Image.new("RGB", (40, 40), (90 * i, 100, 200)).save(folder / name)
    out = tmp_path / "out [/y]"
    result = camlens("explain", folder, "--model", small_checkpoint, "--target", "top-3", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert "\x1b" not in text and "\x07" not in text
    assert "esc\\x1b]0;title\\x07.png" in text and "[red]x.png" in text and "[/y]" in text
    single = camlens("explain", folder / "[red]x.png", "--model", small_checkpoint, "--out", out, "--overwrite")
    assert single.returncode == 0 and "\x1b" not in single.stdout and "[/red] bad" in single.stdout, single.stderr
    assert ":smile: [bold]x" in single.stdout and "\\x1b[31mred" in single.stdout


def test_long_input_names_get_short_unique_outputs(tmp_path: Path, small_checkpoint: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(["n" * 240 + ".png", "n" * 239 + "m.png", "ok.png"]):
        Image.new("RGB", (40, 40), (90 * i, 100, 200)).save(folder / name)
    out = tmp_path / "out"
    result = camlens("explain", folder, "--model", small_checkpoint, "--target", "top-2", "--panel", "--save-raw",
                     "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    written = [p for p in out.iterdir() if not p.name.startswith(("camlens-run-", ".camlens-run"))]
    assert len(written) == 3 * 2 * 3 and all(len(p.name.encode()) <= MAX_NAME_BYTES for p in written)
    assert all(p.resolve().parent == out.resolve() for p in written)
