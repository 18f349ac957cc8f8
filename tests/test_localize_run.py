"""``camlens localize`` on the folder-run pipeline (:func:`camlens.runner.run` with a
:class:`~camlens.runner.Boxing`): the boxes and IoUs of the maps, drawn on the overlays, in
``localize.json``; stopped and resumed, or shared by torchrun ranks, as one uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens import imageio, runner
from camlens.errors import CamlensError
from camlens.evaluation.annotations import read_annotations
from camlens.evaluation.boxes import best_iou, boxes_from_map
from camlens.lens import Lens
from tests.test_scale import BIN, ENV, free_port, ours_untraced, pictures, small  # noqa: F401  (small: a fixture)

METHODS = ["gradcam", "cam"]


def annotated(folder: Path, count: int) -> tuple[list[Path], Path]:
    """``count`` pictures (see :func:`tests.test_scale.pictures`: one is not an image), one of
    them large, and a CSV of true boxes for some: two for ``p000.png``, one for ``big.png``, none
    for the others, and one record that cannot be read."""
    pictures(folder, count)
    big = (np.random.default_rng(3).random((144, 192, 3)) * 255).astype(np.uint8)
    Image.fromarray(big).save(folder / "big.png")
    csv = folder.parent / "boxes.csv"
    csv.write_text("image,label,xmin,ymin,xmax,ymax\np000.png,ant,10,8,60,50\np000.png,bee,50,30,90,70\n"
                   "big.png,cat,40,20,160,120\np002.png,ant,one,2,3,4\n")
    return sorted(folder.iterdir()), csv


def localize_json(out: Path) -> dict[str, object]:
    """``out/localize.json``, its output folder written OUT."""
    return json.loads((out / "localize.json").read_text().replace(str(out), "OUT"))  # type: ignore[no-any-return]


def drawn_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*_boxes.*"))}


@pytest.mark.parametrize(("threshold", "largest", "min_area"), [(0.2, True, 0.0), (0.5, False, 0.01)])
def test_the_boxes_and_ious_are_those_of_the_maps_and_drawn_on_the_overlays(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float, largest: bool,  # noqa: F811
    min_area: float,
) -> None:
    monkeypatch.setattr(imageio, "_max_pixels", 10_000)  # big.png (192x144) is read downscaled, the others whole
    lens = Lens(small, device="cpu")
    paths, csv = annotated(tmp_path / "in", 4)
    truth = read_annotations(csv)
    boxing = runner.Boxing(threshold, largest, min_area, truth)
    with pytest.warns(imageio.ImageReducedWarning):
        report = runner.run(lens, paths, tmp_path / "out", methods=METHODS, batch_size=8, root=tmp_path / "in",
                            boxing=boxing, summary_name="localize.json")
    summary = json.loads((tmp_path / "out" / "localize.json").read_text())
    assert report.summary == tmp_path / "out" / "localize.json"
    assert {k: summary[k] for k in ("threshold", "largest_only", "min_area", "interrupted", "not_tried", "methods")} == {
        "threshold": threshold, "largest_only": largest, "min_area": min_area, "interrupted": None, "not_tried": [],
        "methods": METHODS}
    assert [f["source"] for f in summary["failed"]] == [str(tmp_path / "in" / "p001.jpg")]
    readable = [p for p in paths if p.name != "p001.jpg"]
    assert [r["source"] for r in summary["images"]] == [str(p) for p in readable]
    with pytest.warns(imageio.ImageReducedWarning):
        read = [imageio.read_image(p) for p in readable]
    boxed = 0
    for record, picture, explanations in zip(summary["images"], read, lens.explain(read, METHODS), strict=True):
        assert set(record) == {"source", "size", "true_boxes", "maps"} and record["size"] == list(picture.size)
        true = truth.for_image(record["source"], tmp_path / "in") or []
        width, height = Image.open(record["source"]).size
        if picture.size != (width, height):  # read downscaled: so are its true boxes
            assert picture.width < width and Path(record["source"]).name == "big.png"
            true = [b.scaled(picture.width / width, picture.height / height) for b in true]
        assert record["true_boxes"] == [b.to_dict() for b in true]
        assert [(m["method"], m["target"]) for m in record["maps"]] == [
            (e.method, e.target.to_dict()) for e in explanations]
        for entry, exp in zip(record["maps"], explanations, strict=True):
            found = boxes_from_map(exp.heatmap, threshold, largest=largest, min_area=min_area)
            assert entry["boxes"] == [b.to_dict() for b in found]
            assert entry.get("iou") == (round(best_iou(found, true), 4) if true else None)
            assert set(entry) == {"method", "layer", "target", "boxes", "output"} | ({"iou"} if true else set())
            assert Path(entry["output"]).name.endswith(f"_{exp.method}_{exp.tag}_boxes.png")
            drawn, plain = np.asarray(Image.open(entry["output"])), np.asarray(exp.overlay())
            changed = (drawn != plain).any(axis=-1)
            assert changed.any() == bool(found or true)  # a constant map has no box
            assert {tuple(c) for c in drawn[changed]} <= {(255, 0, 0), (0, 220, 0)}  # the boxes, nothing else
            boxed += bool(found)
    scored = {Path(r["source"]).name for r in summary["images"] if all("iou" in m for m in r["maps"])}
    assert boxed >= len(readable) and scored == {"big.png", "p000.png", "p000.jpg"}  # the .jpg by its stem


def test_a_stopped_localize_run_resumed_ends_as_one_run(small: Path, tmp_path: Path) -> None:  # noqa: F811
    lens = Lens(small, device="cpu")
    paths, csv = annotated(tmp_path / "in", 9)
    boxing = runner.Boxing(0.3, truth=read_annotations(csv))
    run = partial(runner.run, lens, paths, methods=METHODS, batch_size=3, summary_name="localize.json")
    run(tmp_path / "alone", boxing=boxing)
    stop = runner.StopRequest()
    first = run(tmp_path / "out", boxing=boxing, stop=stop, progress=lambda n: setattr(stop, "signal", signal.SIGINT))
    stopped = localize_json(tmp_path / "out")
    assert first.interrupted == signal.SIGINT and stopped["interrupted"] == "SIGINT"
    assert len(stopped["not_tried"]) == len(paths) - 3 and len(stopped["images"]) == 3  # type: ignore[arg-type]
    with pytest.raises(CamlensError, match=r"localize.json: exists; pass overwrite=True to replace it, or resume=True"):
        run(tmp_path / "out", boxing=boxing)
    second = run(tmp_path / "out", boxing=boxing, resume=True)
    assert second.summary == tmp_path / "out" / "localize.json" and second.pending == []
    assert localize_json(tmp_path / "out") == localize_json(tmp_path / "alone")
    assert drawn_files(tmp_path / "out") == drawn_files(tmp_path / "alone")
    with pytest.raises(CamlensError, match="another boxing"):
        run(tmp_path / "out", boxing=runner.Boxing(0.4), resume=True)


def localize(folder: Path, csv: Path, out: Path, model: Path, *extra: str, torchrun: int = 0) -> subprocess.CompletedProcess[str]:
    head = [str(BIN / "camlens")]
    if torchrun:
        head = [str(BIN / "torchrun"), f"--nproc_per_node={torchrun}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=localhost:{free_port()}", "-m", "camlens"]
    return subprocess.run([*head, "localize", str(folder), "--model", str(model), "--method", ",".join(METHODS), "--boxes",
                           str(csv), "--batch-size", "2", "--out", str(out), "--device", "cpu", *extra],
                          capture_output=True, text=True, env=ENV, timeout=600)


def test_the_command_refuses_its_summary_there_and_torchrun_ranks_write_what_one_process_writes(
    small: Path, tmp_path: Path  # noqa: F811
) -> None:
    paths, csv = annotated(tmp_path / "in", 6)
    alone = localize(tmp_path / "in", csv, tmp_path / "alone", small)
    assert alone.returncode == 1, alone.stderr  # the file that is not an image, the record that cannot be read
    assert alone.stdout.strip() == f"boxed {len(paths) - 1} images; wrote {tmp_path / 'alone'}/ " \
                                   f"(summary: {tmp_path / 'alone' / 'localize.json'})"
    assert "2 inputs or annotation records not used" in alone.stderr and "boxes.csv:5" in alone.stderr
    again = localize(tmp_path / "in", csv, tmp_path / "alone", small)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: {tmp_path / 'alone' / 'localize.json'}: exists; pass --overwrite to replace it, "
        "or --resume to finish its run")
    ranks = localize(tmp_path / "in", csv, tmp_path / "ranks", small, torchrun=2)
    assert ranks.returncode == 1 and ours_untraced(ranks.stderr), ranks.stderr
    assert localize_json(tmp_path / "ranks") == localize_json(tmp_path / "alone")
    assert drawn_files(tmp_path / "ranks") == drawn_files(tmp_path / "alone")
