"""The evaluate-run browser's API (``/api/run``): a real evaluate run of the bundled model
under the served root, its summary and per-image rows checked against its files and against
the library, and every error path."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from camlens.web.app import Settings, create_app  # noqa: E402

RUN = "runs/pets"
PETS = (("tabby", "chelsea", (100, 20, 400, 300)), ("espresso", "coffee", (150, 50, 450, 300)))


def make_run(root: Path, lens) -> str:  # type: ignore[no-untyped-def]
    """``camlens evaluate`` of the bundled model (CAM and Grad-CAM, 8 deletion steps) on two
    photos in class sub-folders of ``root/pets`` (the cat is predicted wrong) with true boxes,
    run from ``root`` so that per_image.csv holds relative paths; written to ``root/runs/pets``."""
    from camlens.evaluation import report
    from camlens.evaluation.annotations import read_annotations
    from camlens.evaluation.run import FaithfulnessProtocol, dataset, evaluate
    from camlens.models.record import model_spec
    from camlens.models.registry import DEFAULT_MODEL
    from camlens.samples import sample_image

    lines = ["image,label,xmin,ymin,xmax,ymax"]
    for label, photo, box in PETS:
        (root / "pets" / label).mkdir(parents=True, exist_ok=True)
        sample_image(photo).save(root / "pets" / label / f"{photo}.png")
        lines.append(f"{label}/{photo}.png,{label}," + ",".join(map(str, box)))
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    with contextlib.chdir(root):
        items, problems = dataset(Path("pets"), lens, read_annotations(Path("boxes.csv")))
        assert not problems
        with tempfile.TemporaryFile("w+", newline="") as rows:
            result = evaluate(lens, items, "cam,gradcam", faithful=FaithfulnessProtocol(steps=8), per_image=rows,
                              examples=2)
            result.source = {**model_spec(DEFAULT_MODEL), "data": str(root / "pets"), "boxes": str(root / "boxes.csv"),
                             "cwd": os.getcwd()}
            report.write(result, Path(RUN), rows, title="pets", overwrite=False)
    return RUN


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, lens) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("runs_root")
    make_run(folder, lens)
    return folder


@pytest.fixture(scope="module")
def client(root: Path, lens) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(Settings(root=root), lens), base_url="http://127.0.0.1:8000",
                      raise_server_exceptions=False)


def _per_image(root: Path) -> list[dict[str, str]]:
    with open(root / RUN / "per_image.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str) -> float | None:
    return float(text) if text else None


def test_a_run_summary_is_its_metrics_json(client: TestClient, root: Path) -> None:
    metrics = json.loads((root / RUN / "metrics.json").read_text())
    run = client.get("/api/run", params={"path": RUN}).json()
    assert run["title"] == "pets" and run["methods"] == ["cam", "gradcam"] and run["layer"] == "bn2"
    assert run["scores"] == metrics["scores"] and run["images"] == 2 and run["classification_accuracy"] == 50.0
    assert run["model"] == "efficientnet_lite0" and run["same_model"] is True
    assert "source" not in run  # the server's own folders stay on the server
    assert [c["key"] for c in run["columns"]] == ["top1_loc", "gt_known_loc", "maxboxacc_v2", "pointing_game",
                                                  "average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc"]
    assert run["pictures"] == ["curves.png", "examples.png"]
    picture = client.get("/api/run/picture", params={"path": RUN, "name": "curves.png"})
    assert picture.headers["content-type"] == "image/png" and picture.content == (root / RUN / "curves.png").read_bytes()
    assert client.get("/api/files", params={"path": RUN}).json()["run"] is True
    assert client.get("/api/files", params={"path": "pets"}).json()["run"] is False
    assert "/static/run.js" in client.get("/run").text


def test_rows_gather_per_image_csv_per_image(client: TestClient, root: Path, lens) -> None:  # type: ignore[no-untyped-def]
    rows = client.get("/api/run/rows", params={"path": RUN}).json()
    assert rows["total"] == 2 and [r["path"] for r in rows["rows"]] == ["pets/espresso/coffee.png", "pets/tabby/chelsea.png"]
    by_image = {r["path"]: r for r in rows["rows"]}
    for line in _per_image(root):
        row = by_image[line["image"]]  # relative to the evaluating process's folder, the root here
        assert (row["label"], row["predicted"], row["probability"]) == (line["label"], line["predicted"],
                                                                         float(line["probability"]))
        scores = row["scores"][line["method"]]
        for key in ("iou", "pointing_hit", "average_drop", "increase", "deletion_auc", "insertion_auc"):
            assert scores[key] == _number(line[key]), key
        assert row["boxes"][line["method"]] == [float(v) for v in line["box"].split()]
    cat = by_image["pets/tabby/chelsea.png"]
    assert cat["correct"] is False and cat["true_boxes"] == [[100.0, 20.0, 400.0, 300.0]]
    assert cat["target"] == lens.labels.index("tabby") == 281 and (cat["width"], cat["height"]) == (451, 300)


def test_a_rows_box_is_the_librarys_cam_box(client: TestClient, root: Path, lens) -> None:  # type: ignore[no-untyped-def]
    """The box shown for a method is the largest region above the protocol's 0.2 of the true
    class's map, computed by the library alone."""
    from camlens.evaluation.boxes import boxes_from_map
    from camlens.imageio import read_image

    rows = client.get("/api/run/rows", params={"path": RUN}).json()["rows"]
    for row in rows:
        heatmap = lens.explain([read_image(root / row["path"])], "gradcam", target=str(row["target"]))[0][0].heatmap
        box = boxes_from_map(heatmap, 0.2)[0]
        assert row["boxes"]["gradcam"] == pytest.approx([box.xmin, box.ymin, box.xmax, box.ymax], abs=0.05)


@pytest.mark.parametrize(("params", "order"), [
    ({"sort": "probability", "descending": "true"}, ["coffee", "chelsea"]),
    ({"sort": "probability"}, ["chelsea", "coffee"]),
    ({"sort": "image", "descending": "true"}, ["chelsea", "coffee"]),
    ({"show": "wrong"}, ["chelsea"]),
    ({"show": "correct"}, ["coffee"]),
    ({"q": "TABBY"}, ["chelsea"]),
    ({"offset": "1", "limit": "1"}, ["chelsea"]),
])
def test_rows_filter_sort_and_page(client: TestClient, params: dict[str, str], order: list[str]) -> None:
    found = client.get("/api/run/rows", params={"path": RUN, **params}).json()
    assert [Path(r["path"]).stem for r in found["rows"]] == order
    assert found["total"] == (2 if "show" not in params and "q" not in params else 1)


@pytest.mark.parametrize("key", ["iou", "deletion_auc", "insertion_auc", "average_drop"])
def test_rows_sort_by_any_score_of_a_method(client: TestClient, root: Path, key: str) -> None:
    lines = [line for line in _per_image(root) if line["method"] == "cam"]
    expected = [Path(line["image"]).stem for line in sorted(lines, key=lambda line: -float(line[key]))]
    found = client.get("/api/run/rows", params={"path": RUN, "sort": key, "method": "cam", "descending": "true"}).json()
    assert [Path(r["path"]).stem for r in found["rows"]] == expected


def test_another_served_model_is_told_apart(root: Path, lens) -> None:  # type: ignore[no-untyped-def]
    other = TestClient(create_app(Settings(root=root, model="timm:resnet18"), lens), base_url="http://127.0.0.1")
    run = other.get("/api/run", params={"path": RUN}).json()
    assert run["same_model"] is False and run["model"] == "efficientnet_lite0"


def test_an_edited_run_is_read_again(client: TestClient, root: Path) -> None:
    shutil.copytree(root / RUN, root / "runs" / "edited")
    first = client.get("/api/run/rows", params={"path": "runs/edited"}).json()["rows"][0]["probability"]
    text = (root / "runs" / "edited" / "per_image.csv").read_text()
    (root / "runs" / "edited" / "per_image.csv").write_text(text.replace(f"{first:.6f}", "0.123456"))
    assert client.get("/api/run/rows", params={"path": "runs/edited"}).json()["rows"][0]["probability"] == 0.123456


def _broken_runs(root: Path) -> None:
    runs = root / "broken"
    for name in ("garbage", "link", "fifo", "columns", "boxes", "list"):
        shutil.copytree(root / RUN, runs / name)
    (runs / "garbage" / "metrics.json").write_text("{not json")
    (runs / "list" / "metrics.json").write_text("[1, 2]")
    outside = Path(tempfile.mkdtemp())
    (outside / "metrics.json").write_text((root / RUN / "metrics.json").read_text())
    (runs / "link" / "metrics.json").unlink()
    (runs / "link" / "metrics.json").symlink_to(outside / "metrics.json")
    (runs / "fifo" / "per_image.csv").unlink()
    os.mkfifo(runs / "fifo" / "per_image.csv")
    (runs / "columns" / "per_image.csv").write_text("image,label\na.png,cat\n")
    (runs / "boxes" / "per_image.csv").write_text(
        (root / RUN / "per_image.csv").read_text().replace("100.0 20.0 400.0 300.0", "100.0 20.0 400.0", 1))


@pytest.mark.parametrize(("url", "params", "status", "message"), [
    ("/api/run", {"path": "pets"}, 422, "pets: not a camlens evaluate folder (no metrics.json)"),
    ("/api/run", {"path": "../"}, 404, "not a path under the root"),
    ("/api/run", {"path": "broken/garbage"}, 422, "broken/garbage/metrics.json: not readable JSON"),
    ("/api/run", {"path": "broken/list"}, 422, "not written by camlens evaluate"),
    ("/api/run", {"path": "broken/link"}, 404, "broken/link/metrics.json: a link out of the root"),
    ("/api/run/rows", {"path": "broken/fifo"}, 422, "no per_image.csv"),
    ("/api/run/rows", {"path": "broken/columns"}, 422, "per_image.csv: no method, predicted, probability column"),
    ("/api/run/rows", {"path": "broken/boxes"}, 422, "per_image.csv line 4: a box is not 'xmin ymin xmax ymax'"),
    ("/api/run/rows", {"path": RUN, "sort": "speed"}, 422, "sort: 'speed' is not one of"),
    ("/api/run/rows", {"path": RUN, "sort": "iou", "method": "rise"}, 422, "method: 'rise' is not a method of this run"),
    ("/api/run/rows", {"path": RUN, "show": "some"}, 422, "show: 'some' is not one of all, correct, wrong"),
    ("/api/run/rows", {"path": RUN, "limit": "0"}, 422, "limit:"),
    ("/api/run/picture", {"path": RUN, "name": "report.md"}, 404, "name: 'report.md' is not one of"),
])
def test_bad_run_requests_get_a_4xx_with_one_line(client: TestClient, root: Path, url: str, params: dict[str, str],
                                                  status: int, message: str) -> None:
    if not (root / "broken").exists():
        _broken_runs(root)
    response = client.get(url, params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error, error
