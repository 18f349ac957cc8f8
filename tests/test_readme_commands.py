"""Every shell command in the README, run as a new user would type it, offline.

The photos and folders a command names are made once (a new user has their own); a command runs
exactly as written unless :data:`STAND_INS` says otherwise, and the reason is there. A command
whose model or data downloads on first use is run twice: as written, where it must fail at once
with one line and write nothing (downloads go to a dead proxy, so this holds online too), then
with a stand-in (``--weights`` with random weights of the same architecture). The Keras commands
run in tests/keras_cases/test_keras_readme.py, once per backend."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tests.readme import DEAD_PROXY, files_under, is_keras, readme_commands, run_cli

WEIGHTS_ONLINE = "cannot get pretrained weights for"


@dataclass(frozen=True)
class StandIn:
    extra: tuple[str, ...] = ()
    """Arguments appended to the README command."""
    offline: str | None = None
    """As written, the command must fail offline with one line containing this."""
    expect: str | None = None
    """A listing command: its output contains this (else the command must write files)."""
    why: str = ""


def _weights(name: str) -> StandIn:
    return StandIn(("--weights", f"{name}.pth"), offline=f"{WEIGHTS_ONLINE} '{name}'",
                   why="its pretrained weights download on first use; random weights of the same architecture stand in")


STAND_INS: dict[str, StandIn] = {
    "camlens explain a.jpg --model resnet50 --layer layer3 --colormap viridis --alpha 0.6 --top 5": _weights("resnet50"),
    "camlens explain a.jpg --model resnet50 --layer layer1,layer2,layer3,layer4 --panel": _weights("resnet50"),
    "camlens explain street.jpg --model fcn_resnet50 --target person": _weights("fcn_resnet50"),
    "camlens explain street.jpg --model fcn_resnet50 --mask region.png": _weights("fcn_resnet50"),
    "camlens explain street.jpg --model fasterrcnn_resnet50_fpn --target box:40,60,200,310:person":
        _weights("fasterrcnn_resnet50_fpn"),
    "camlens layers resnet50": StandIn(expect="layer4"),
    "camlens classes cat": StandIn(expect="tabby"),
    "camlens methods": StandIn(expect="scorecam"),
    "camlens targets": StandIn(expect="similar-to"),
    "camlens data digits-canvas --out digits": StandIn(
        ("--train-per-class", "8", "--test-per-class", "1"),
        why="90 images instead of 3,300, so that the 15-epoch training below takes seconds"),
    "camlens train cifar10 --out c10.pt --arch resnet18": StandIn(offline="cannot get dataset 'cifar10'"),
}
SERVERS = {"camlens serve": 8000, "camlens serve --model pets.pt --root photos/ --port 8080": 8080}
"""Commands that start a server: run in a process of their own on a free port instead of the
README's, until ``/api/health`` answers; then stopped."""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the README's commands name: photos, folders, a mask, VOC boxes, stand-in weights."""
    from camlens.samples import sample_image

    root = tmp_path_factory.mktemp("readme")
    cat, cup, person = sample_image("chelsea"), sample_image("coffee"), sample_image("astronaut")
    for name, image in {"photo.jpg": cat, "cat.jpg": cat, "a.jpg": cup, "img.jpg": person, "street.jpg": person,
                        "cat2.jpg": cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                        "cat_flipped.png": cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)}.items():
        image.save(root / name)
    scene = Image.new("RGB", (cat.width + cup.width, max(cat.height, cup.height)))
    scene.paste(cat, (0, 0))
    scene.paste(cup, (cat.width, 0))
    scene.save(root / "scene.png")
    mask = np.zeros((person.height, person.width), np.uint8)
    mask[30:200, 150:330] = 255  # the astronaut's head
    Image.fromarray(mask).save(root / "region.png")
    (root / "photos").mkdir()
    (root / "annotations").mkdir()
    for name, image, box in [("cat.jpg", cat, (140, 20, 400, 300)), ("cup.jpg", cup, (170, 15, 420, 310))]:
        image.save(root / "photos" / name)
        (root / "annotations" / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{image.width}</width><height>{image.height}"
            f"</height></size><object><name>{Path(name).stem}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}"
            f"</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")
    for label, image in [("cat", cat), ("cup", cup)]:
        (root / "my_photos" / label).mkdir(parents=True)
        for i in range(5):
            crop = image.crop((20 * i, 10 * i, image.width - 20 * (4 - i), image.height - 10 * (4 - i)))
            crop.resize((160, 120)).save(root / "my_photos" / label / f"{i}.jpg")
    torch.manual_seed(0)
    for name in ("resnet50", "fcn_resnet50", "fasterrcnn_resnet50_fpn"):
        extra = {"weights_backbone": None} if name != "resnet50" else {}
        model = torchvision.models.get_model(name, weights=None, **extra)
        torch.save(model.state_dict(), root / f"{name}.pth")
    return root


def test_every_stand_in_is_a_readme_command() -> None:
    assert set(STAND_INS) | set(SERVERS) <= set(readme_commands()), set(STAND_INS) - set(readme_commands())
    assert {c for c in readme_commands() if c.startswith("camlens serve")} == set(SERVERS)


@pytest.mark.parametrize("command", [c for c in readme_commands() if not is_keras(c) and c not in SERVERS])
def test_readme_command_runs_offline(command: str, workspace: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)
    stand_in = STAND_INS.get(command, StandIn())
    args = shlex.split(command)[1:]
    before = files_under(workspace)
    if stand_in.offline:
        failed = run_cli(args, capsys)
        lines = failed.err.strip().splitlines()
        assert failed.code == 2 and len(lines) == 1 and stand_in.offline in lines[0], failed.err
        assert files_under(workspace) == before
        if not stand_in.extra:
            return
    result = run_cli([*args, *stand_in.extra], capsys)
    assert result.code == 0, result.err
    if stand_in.expect:
        assert stand_in.expect in result.out
    else:
        assert files_under(workspace) - before, f"{command} wrote nothing"


@pytest.mark.parametrize("command", list(SERVERS))
def test_readme_serve_command_serves(command: str, workspace: Path) -> None:
    """(After the commands above: pets.pt was trained by one of them.)"""
    from tests.test_web import _free_port, serve

    port = _free_port()
    args = shlex.split(command)[1:]
    args = [str(port) if a == str(SERVERS[command]) else a for a in args] + ([] if "--port" in args else ["--port", str(port)])
    answer, out, err = serve(args, port, cwd=workspace)
    assert answer is not None and answer["status"] == "ok", out + err
    assert f"http://127.0.0.1:{port}/" in out
    if "--root" in args:
        assert answer["model"] == "pets.pt" and answer["root"] == "photos"
