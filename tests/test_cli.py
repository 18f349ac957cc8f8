"""The ``camlens`` command end to end, on the bundled model and scikit-image photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.core import ATTENTION_NEEDS, normalize, upsample

CUP = (slice(15, 310), slice(170, 420))  # rows, cols of the espresso cup in skimage's coffee()


def camlens(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("camlens")
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def espresso_run(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("run")
    result = camlens(
        "explain", samples_dir / "coffee.png", "--method", "cam,gradcam,gradcam++", "--target", "espresso",
        "--target", "top-2", "--panel", "--save-raw", "--out", out, "--device", "cpu",
    )
    return result, out


def test_explain_writes_overlays_panels_raw_maps_and_summary(espresso_run) -> None:  # type: ignore[no-untyped-def]
    result, out = espresso_run
    assert result.returncode == 0, result.stderr
    assert "espresso" in result.stdout and "top 5" in result.stdout
    names = sorted(p.name for p in out.iterdir())
    # espresso is also the top-1 class: explained once; top-2 adds "cup"
    for method in ["cam", "gradcam", "gradcam++"]:
        for tgt in ["967-espresso", "968-cup"]:
            for suffix in [".png", "_panel.png", ".npy"]:
                assert f"coffee_{method}_{tgt}{suffix}" in names
    assert len([n for n in names if n.endswith(".npy")]) == 6
    summaries = list(out.glob("camlens-run-*.json"))
    summary = json.loads(summaries[0].read_text())
    entry = summary["images"][0]
    assert entry["predictions"][0]["label"] == "espresso"
    assert {e["method"] for e in entry["explanations"]} == {"cam", "gradcam", "gradcam++"}
    assert all(Path(p).exists() for e in entry["explanations"] for p in e["outputs"])
    assert entry["explanations"][0]["layer"] == "bn2"
    overlay = Image.open(out / "coffee_gradcam_967-espresso.png")
    assert overlay.size == (600, 400)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_espresso_map_peaks_on_the_cup_not_the_table(espresso_run, method: str) -> None:  # type: ignore[no-untyped-def]
    _, out = espresso_run
    heat = normalize(upsample(np.load(out / f"coffee_{method}_967-espresso.npy"), (400, 600)))
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert CUP[0].start <= row < CUP[0].stop and CUP[1].start <= col < CUP[1].stop
    table = np.concatenate([heat[:, :70].ravel(), heat[:, 500:].ravel()])
    assert heat[CUP].mean() > 2.5 * table.mean()


def test_folder_run_goes_past_bad_files_and_exits_nonzero(samples_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(samples_dir / "chelsea.png", photos / "cat.png")
    shutil.copy(samples_dir / "rocket.png", photos / "rocket.png")
    (photos / "notes.jpg").write_text("not an image")
    data = (samples_dir / "coffee.png").read_bytes()
    (photos / "cut.png").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    result = camlens("explain", photos, "--out", out, "--batch-size", "2", "--device", "cpu")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "2 of 4 images failed" in result.stderr
    assert f"{photos / 'notes.jpg'}: not an image" in result.stderr
    assert f"{photos / 'cut.png'}: truncated or corrupt image" in result.stderr
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 2 and written[0].startswith("cat_gradcam_28") and written[1].startswith("rocket_gradcam_")
    summary = json.loads(next(out.glob("camlens-run-*.json")).read_text())
    assert len(summary["images"]) == 2 and len(summary["failed"]) == 2

    before = {p: p.read_bytes() for p in out.glob("*.png")}
    again = camlens("explain", photos / "cat.png", "--out", out, "--device", "cpu")
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr
    assert {p: p.read_bytes() for p in out.glob("*.png")} == before
    assert not list(out.glob(".*part"))


def test_user_errors_are_one_line_without_traceback(samples_dir: Path, tmp_path: Path) -> None:
    coffee = samples_dir / "coffee.png"
    cases = [
        (["--target", "expresso"], "error: no class named 'expresso'; closest: 'espresso'"),
        (["--layer", "blocks.9"], "error: model has no layer 'blocks.9'"),
        (["--method", "gradcamx"], "error: unknown method 'gradcamx'"),
        (["--colormap", "jett"], "error: unknown colormap 'jett'; did you mean jet"),
        (["--model", "vgg99"], "error: unknown model 'vgg99'; did you mean vgg19"),
    ]
    for extra, message in cases:
        result = camlens("explain", coffee, "--out", tmp_path / "o", "--device", "cpu", *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "o").exists()
    missing = camlens("explain", tmp_path / "nope.jpg", "--out", tmp_path / "o", "--device", "cpu")
    assert missing.returncode == 1 and "nope.jpg: no such file" in missing.stderr


def test_layers_classes_and_features_commands(samples_dir: Path, tmp_path: Path) -> None:
    layers = camlens("layers")
    assert layers.returncode == 0, layers.stderr
    assert "bn2" in layers.stdout and "<- default" in layers.stdout and "(1, 1280, 7, 7)" in layers.stdout
    classes = camlens("classes", "tabby")
    assert classes.returncode == 0 and "281" in classes.stdout and "tabby, tabby cat" in classes.stdout
    feats = camlens("features", samples_dir / "chelsea.png", "--layer", "blocks.1,bn2", "-n", "8", "--out", tmp_path)
    assert feats.returncode == 0, feats.stderr
    grids = sorted(p.name for p in tmp_path.glob("*.png"))
    assert grids == ["chelsea_features_blocks.1.png", "chelsea_features_bn2.png"]
    assert Image.open(tmp_path / grids[0]).size[0] > 200


def test_multi_layer_run_names_files_by_layer(samples_dir: Path, tmp_path: Path) -> None:
    result = camlens(
        "explain", samples_dir / "chelsea.png", "--layer", "blocks.4,blocks.5,bn2", "--colormap", "viridis",
        "--alpha", "0.6", "--format", "jpg", "--out", tmp_path, "--device", "cpu",
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert [n.split("_")[2] for n in names] == ["blocks.4", "blocks.5", "bn2"]


def test_model_failures_are_one_line_and_exit_3(tmp_path: Path, samples_dir: Path) -> None:
    import torchvision

    from camlens.models import Labels, Preprocessing, save_checkpoint

    # a checkpoint whose preprocessing (1 channel) does not fit its network (3 channels)
    model = torchvision.models.resnet18(num_classes=2)
    one_channel = Preprocessing((0.5,), (0.5,), (64, 64), "bilinear", channels=1)
    save_checkpoint(tmp_path / "bad.pt", "resnet18", model, Labels(("a", "b")), one_channel)
    result = camlens("explain", samples_dir / "coffee.png", "--model", tmp_path / "bad.pt", "--out", tmp_path / "o")
    assert result.returncode == 3
    assert result.stderr.startswith("error: the model failed on an input of shape (1, 1, 64, 64)")
    assert "RuntimeError: " in result.stderr and "CAMLENS_DEBUG=1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_recursive_folder_mirrors_sub_folders(samples_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    shutil.copy(samples_dir / "chelsea.png", photos / "cats" / "chelsea.png")
    shutil.copy(samples_dir / "coffee.png", photos / "coffee.png")
    result = camlens("explain", photos, "--recursive", "--target", "espresso", "--out", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "cats/chelsea_gradcam_967-espresso.png",
        "coffee_gradcam_967-espresso.png",
    ]
    blocked = tmp_path / "file"
    blocked.write_text("x")
    again = camlens("explain", photos / "coffee.png", "--out", blocked / "sub", "--device", "cpu")
    assert again.returncode == 2 and "cannot create output folder" in again.stderr and blocked.read_text() == "x"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small_cnn checkpoint (64x64, classes ant/bee/cat): fast to load and run."""
    from camlens.models import Labels, Preprocessing, save_checkpoint
    from camlens.models.small_cnn import SmallCNN

    folder = tmp_path_factory.mktemp("small")
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(64, 64), interpolation="bilinear")
    return save_checkpoint(folder / "small.pt", "small_cnn", SmallCNN(3).eval(), Labels(("ant", "bee", "cat")), prep)


def test_every_registered_method_runs_from_the_cli(small_model: Path, tmp_path: Path) -> None:
    from camlens.core import method_names

    Image.new("RGB", (50, 40), (30, 160, 90)).save(tmp_path / "a.png")
    cnn_methods = method_names(without=ATTENTION_NEEDS)  # every method a CNN has maps for
    specs = [f"{m}:masks=100" if m == "rise" else m for m in cnn_methods]  # RISE: fewer masks than its 4000
    result = camlens("explain", tmp_path / "a.png", "--model", small_model, "--method", ",".join(specs),
                     "--out", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    written = {p.name for p in (tmp_path / "out").glob("a_*.png")}
    top = json.loads(next((tmp_path / "out").glob("camlens-run-*.json")).read_text())["images"][0]["predictions"][0]
    assert written == {f"a_{m}_{top['index']}-{top['label']}.png" for m in cnn_methods}
    listing = camlens("methods")
    assert listing.returncode == 0 and all(m in listing.stdout for m in method_names())


def test_smoothing_tta_and_max_batch_from_the_cli(small_model: Path, tmp_path: Path) -> None:
    Image.new("RGB", (50, 40), (30, 160, 90)).save(tmp_path / "a.png")
    result = camlens("explain", tmp_path / "a.png", "--model", small_model, "--method", "gradcam,RISE:masks=40",
                     "--smooth", "2", "--tta", "--max-batch", "4", "--save-raw", "--out", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    summary = json.loads(next((tmp_path / "out").glob("camlens-run-*.json")).read_text())
    assert summary["augment"] == "Augment(samples=2, noise=0.15, flips=True, scales=(0.75, 1.0, 1.25))"
    assert summary["methods"] == ["gradcam", "rise:masks=40"]
    assert {p.name.split("_")[1] for p in (tmp_path / "out").glob("a_*.npy")} == {"gradcam", "rise"}
    for flag, value, needle in [("--max-batch", "0", "--max-batch"), ("--method", "rise:mask=4", "rise takes masks")]:
        bad = camlens("explain", tmp_path / "a.png", "--model", small_model, flag, value, "--out", tmp_path / "o2")
        assert bad.returncode == 2 and needle in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "o2").exists()


def test_library_parameters_become_flags_only_as_words_of_their_own() -> None:
    from camlens.cli.common import for_cli

    assert for_cli("/data/model=v2/a.pt: exists; pass overwrite=True to replace it") == \
        "/data/model=v2/a.pt: exists; pass --overwrite to replace it"
    assert for_cli("give layer= explicitly") == "give --layer explicitly"
    assert for_cli("e.g. layout='tokens:1'") == "e.g. --layout 'tokens:1'"
    assert for_cli("pass weights=FILE, or images/mask=1.png") == "pass --weights FILE, or images/mask=1.png"
    assert for_cli("choose one with output=") == "choose one with --output"


def test_cli_errors_name_flags_where_the_library_names_parameters(small_model: Path, tmp_path: Path) -> None:
    Image.new("RGB", (50, 40), (30, 160, 90)).save(tmp_path / "a.png")
    offline = camlens("explain", tmp_path / "a.png", "--model", "resnet50", "--out", tmp_path / "o")
    assert offline.returncode == 2 and "pass --weights FILE" in offline.stderr and "weights=" not in offline.stderr
    first, again = [camlens("explain", tmp_path / "a.png", "--model", small_model, "--out", tmp_path / "o2", "--device",
                            "cpu") for _ in range(2)]
    assert again.returncode == 1 and "pass --overwrite to replace it" in again.stderr and "overwrite=" not in again.stderr
    assert "wrote 1 file to" in first.stdout and "wrote 0 files to" in again.stdout and "summary" not in again.stdout
    assert len(list((tmp_path / "o2").glob("camlens-run-*.json"))) == 1  # a run that wrote nothing leaves no summary


def test_method_aliases_are_resolved_once_at_the_edge(small_model: Path, tmp_path: Path) -> None:
    from camlens.evaluation.run import dataset, evaluate
    from camlens.lens import Lens

    for i, cls in enumerate(["ant", "bee", "cat"]):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (48, 48), (80 * i, 40, 200 - 60 * i)).save(tmp_path / "data" / cls / f"{cls}.png")
    result = camlens("evaluate", tmp_path / "data", "--model", small_model, "--method", "grad-cam,GradCAM,Grad_CAM++",
                     "--steps", "4", "--out", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics["scores"]) == ["gradcam", "gradcam++"]
    lens = Lens(str(small_model), device="cpu")
    items, _ = dataset(tmp_path / "data", lens, None)
    scores = evaluate(lens, items, ["GradCAM", "gradcam"], localization=None, examples=0).scores
    assert list(scores) == ["gradcam"]
    bad = camlens("explain", tmp_path / "data" / "ant" / "ant.png", "--model", small_model, "--method", "gradcan")
    assert bad.returncode == 2 and "did you mean gradcam" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_readme_methods_table_is_the_registrys() -> None:
    table = camlens("methods", "--markdown").stdout.strip()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table.count("\n") > 10 and table in readme


def test_a_huge_image_is_read_within_the_pixel_budget(tmp_path: Path) -> None:
    from PIL import ImageDraw

    big = Image.new("1", (4000, 3000), 0)
    ImageDraw.Draw(big).ellipse((1000, 700, 3000, 2300), fill=1)
    big.save(tmp_path / "big.png")
    result = camlens("--max-pixels", "1000000", "explain", tmp_path / "big.png", "--out", tmp_path / "out", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "4000x3000 (12.0 MP) is over the 1.0 MP budget; read at 1154x865" in warning[0]
    assert "DecompressionBomb" not in result.stderr and "warnings.warn" not in result.stderr
    (overlay,) = (tmp_path / "out").glob("*.png")
    assert Image.open(overlay).size == (1154, 865)
    bad = camlens("--max-pixels", "10", "explain", tmp_path / "big.png", "--out", tmp_path / "o2")
    assert bad.returncode == 2 and "--max-pixels must be at least 4096" in bad.stderr


def test_tables_of_names_are_never_cut_to_the_terminal(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A nested Keras layer's name longer than an 80-column terminal is printed whole (the issue:
    it was cut with an ellipsis, so it could not be copied into --layer)."""
    from rich.table import Table

    from camlens.cli.common import out_console, print_whole

    name = "functional_outer_backbone_model/" + "a_really_long_convolution_layer_name" * 2
    table = Table()
    for header in ("layer", "type", "output shape"):
        table.add_column(header)
    table.add_row(name, "Conv2D", "(None, 30, 30, 4)")
    table.add_row("conv1", "Conv2D", "(None, 30, 30, 4)")
    monkeypatch.setattr(out_console, "width", 80)
    print_whole(table)
    lines = capsys.readouterr().out.splitlines()
    assert any(name in line and "(None, 30, 30, 4)" in line for line in lines)


@pytest.mark.parametrize("args", [["--help"], ["explain", "--help"], ["evaluate", "--help"], ["serve", "--help"],
                                  ["methods"], ["targets"]])
def test_help_and_listings_import_no_framework(args: list[str]) -> None:
    """``camlens --help`` and the listings start in a fraction of a second: torch, timm, Keras
    and the web stack are imported only by the commands that use them."""
    code = ("import sys; from camlens.cli.app import main\n"
            f"sys.argv = ['camlens', *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ('torch', 'timm', 'keras', 'tensorflow', 'jax', 'transformers', 'fastapi', 'uvicorn')\n"
            "print(sorted(m for m in heavy if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr.strip().splitlines()[-1] == "[]", result.stderr
