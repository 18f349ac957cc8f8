"""Folder runs at scale: a run stopped or killed at any point is finished by ``--resume`` with
exactly the outputs of an uninterrupted run, and ``torchrun`` ranks share a run with the same
outputs, bit for bit, as one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens import runner
from camlens.distributed import World
from camlens.errors import CamlensError
from camlens.ledger import FOLDER
from camlens.lens import Lens

BIN = Path(sys.executable).parent
ENV = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}  # torchrun's ranks run one thread each: so does the
# one-process run they are compared with (a thread count can change a float sum's rounding)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small_cnn checkpoint (64x64 inputs, classes ant/bee/cat)."""
    import torch

    from camlens.models import Labels, Preprocessing, save_checkpoint
    from camlens.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(64, 64), interpolation="bilinear")
    folder = tmp_path_factory.mktemp("small")
    return save_checkpoint(folder / "small.pt", "small_cnn", SmallCNN(3).eval(), Labels(("ant", "bee", "cat")), prep)


def pictures(folder: Path, count: int, size: tuple[int, int] = (96, 72)) -> Path:
    """``count`` different pictures, with a clash of stems (``p000.jpg`` beside ``p000.png``) and
    one file that is not an image."""
    rng = np.random.default_rng(7)
    folder.mkdir()
    for n in range(count):
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"p{n:03d}.png")
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(folder / "p000.jpg")
    (folder / "p001.jpg").write_bytes(b"not an image")
    return folder


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file by name, but the summary (whose name has the run's start time) and the
    ledger."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and not p.name.startswith("camlens-run-")}


def summary(out: Path) -> dict[str, object]:
    """The run's summary, its output folder written OUT."""
    [path] = out.glob("camlens-run-*.json")
    return json.loads(path.read_text().replace(str(out), "OUT"))  # type: ignore[no-any-return]


def stored(out: Path) -> dict[str, np.ndarray]:
    """Every array of the run's map store."""
    import zarr

    group = zarr.open_group(str(out / "maps.zarr"), mode="r")
    return {name: array[...] for name, array in group.arrays()} | {
        f"maps/{m}/{layer}": array[...] for m, sub in group["maps"].groups() for layer, array in sub.arrays()}


def same_store(a: Path, b: Path) -> bool:
    left, right = stored(a), stored(b)
    return left.keys() == right.keys() and all(
        np.array_equal(left[k], right[k], equal_nan=left[k].dtype.kind == "f") for k in left)


def explain(folder: Path, out: Path, model: Path, *extra: str, torchrun: int = 0) -> subprocess.Popen[str]:
    head = [str(BIN / "camlens")]
    if torchrun:
        head = [str(BIN / "torchrun"), f"--nproc_per_node={torchrun}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=localhost:{free_port()}", "-m", "camlens"]
    return subprocess.Popen(
        [*head, "explain", str(folder), "--model", str(model), "--method", "gradcam,cam", "--save-raw", "--panel", "--store",
         "--batch-size", "4", "--out", str(out), "--device", "cpu", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


def ours_untraced(stderr: str) -> bool:
    """No traceback through camlens' code (torchrun reports a rank's exit code 1 with its own)."""
    return not [line for line in stderr.splitlines() if line.strip().startswith('File "') and "/camlens/" in line]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def finished(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=600)
    return proc.returncode, stderr


@pytest.fixture(scope="module")
def whole(small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The inputs and the outputs of one uninterrupted one-process run."""
    base = tmp_path_factory.mktemp("whole")
    folder = pictures(base / "in", 48)
    code, stderr = finished(explain(folder, base / "out", small))
    assert code == 1 and "p001.jpg" in stderr and "Traceback" not in stderr  # the one bad file, listed
    return folder, base / "out"


def test_a_run_killed_at_any_point_is_finished_by_resume_with_the_same_outputs(
    small: Path, whole: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, reference = whole
    out = tmp_path / "out"
    for delay in (0.0, 0.2):
        proc = explain(folder, out, small, "--resume")
        deadline = time.monotonic() + 300
        while len(list(out.glob("*.npy"))) < 8 * (1 + 5 * delay):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        assert 0 < len(list(out.glob("*_panel.png"))) < len(list(reference.glob("*_panel.png")))  # killed midway
    assert not list(out.glob("camlens-run-*.json"))  # a killed run writes no summary
    code, stderr = finished(explain(folder, out, small, "--resume"))
    assert code == 1 and "p001.jpg" in stderr
    assert outputs(out) == outputs(reference) and same_store(out, reference)
    assert summary(out) == summary(reference)
    again = explain(folder, out, small, "--resume")  # nothing left to do: nothing changes
    assert finished(again)[0] == 1 and outputs(out) == outputs(reference) and len(list(out.glob("camlens-run-*"))) == 1


def test_resume_refuses_other_settings_in_one_line(small: Path, whole: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = whole
    out = tmp_path / "out"
    proc = explain(folder, out, small)
    while not list(out.glob("*.npy")):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    code, stderr = finished(explain(folder, out, small, "--resume", "--colormap", "viridis"))
    assert code == 2 and stderr.strip().splitlines() == [
        f"error: {out}: its last run had another colormap ('jet', now 'viridis'); resume it with the same settings, "
        "or leave out --resume"]


def test_a_stopped_run_resumed_in_the_library_ends_as_one_run(small: Path, tmp_path: Path) -> None:
    lens = Lens(small, device="cpu")
    paths = sorted(pictures(tmp_path / "in", 10).iterdir())
    options = runner.RenderOptions(save_raw=True)
    alone = runner.run(lens, paths, tmp_path / "alone", methods=["gradcam"], options=options, batch_size=3)
    stop = runner.StopRequest()
    first = runner.run(lens, paths, tmp_path / "out", methods=["gradcam"], options=options, batch_size=3, stop=stop,
                       progress=lambda n: setattr(stop, "signal", signal.SIGINT))
    assert first.interrupted == signal.SIGINT and len(first.pending) == len(paths) - 3
    told: list[int] = []
    second = runner.run(lens, paths, tmp_path / "out", methods=["gradcam"], options=options, batch_size=3, resume=True,
                        progress=told.append)
    assert told[0] == 3 and sum(told) == len(paths)  # the batch done before counts first
    assert second.summary is not None and second.summary.name == first.summary.name  # type: ignore[union-attr]
    assert outputs(tmp_path / "out") == outputs(tmp_path / "alone") and second.pending == []
    assert summary(tmp_path / "out") == summary(tmp_path / "alone")
    assert [r.source for r in second.images] == [r.source for r in alone.images]


def test_ranks_share_the_batches_and_every_input_once() -> None:
    for size in (1, 2, 3):
        shares = [World(r, size).share(23, 4) for r in range(size)]
        assert sorted(i for s in shares for i in s) == list(range(23))
        assert all(len({i // 4 for i in s}) * 4 >= len(s) for s in shares)  # whole blocks of 4
    assert World(1, 2).share(10, 3) == [3, 4, 5, 9]
    with pytest.raises(CamlensError, match="block size must be at least 1"):
        World().share(3, 0)


def test_torchrun_ranks_write_what_one_process_writes(small: Path, whole: tuple[Path, Path], tmp_path: Path) -> None:
    folder, reference = whole
    out = tmp_path / "out"
    code, stderr = finished(explain(folder, out, small, torchrun=2))
    assert code == 1 and "p001.jpg: not an image" in stderr and ours_untraced(stderr), stderr
    assert {n.split("_gradcam")[0] for n in outputs(out)} >= {"p000_jpg", "p000_png"}  # apart, though on two ranks
    assert outputs(out) == outputs(reference) and same_store(out, reference)
    assert summary(out) == summary(reference)
    assert sorted(p.name for p in (out / FOLDER).iterdir()) == ["rank-0.jsonl", "rank-1.jsonl", "run.json"]


def test_a_rank_that_dies_fails_the_run_and_resume_on_any_number_of_ranks_completes_it(
    small: Path, whole: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, reference = whole
    out = tmp_path / "out"
    proc = explain(folder, out, small, torchrun=2)
    deadline = time.monotonic() + 300
    while len(list(out.glob("*.npy"))) < 8:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(ranks[-1]), signal.SIGKILL)
    code, stderr = finished(proc)
    assert code != 0 and ours_untraced(stderr), stderr
    assert len(outputs(out)) < len(outputs(reference))
    code, stderr = finished(explain(folder, out, small, "--resume"))  # one process finishes what two ranks began
    assert code == 1 and "p001.jpg" in stderr, stderr
    assert outputs(out) == outputs(reference) and summary(out) == summary(reference) and same_store(out, reference)


def test_the_map_store_holds_every_raw_map_with_paths_targets_and_predictions(small: Path, tmp_path: Path) -> None:
    import zarr

    lens = Lens(small, device="cpu")
    paths = sorted(pictures(tmp_path / "in", 7).iterdir())
    files = runner.run(lens, paths, tmp_path / "files", methods=["gradcam", "cam"], target="top-2",
                       options=runner.RenderOptions(overlay=False, save_raw=True), batch_size=3)
    runner.run(lens, paths, tmp_path / "out", methods=["gradcam", "cam"], target="top-2",
               options=runner.RenderOptions(overlay=False, store=True), batch_size=3)
    assert not list((tmp_path / "out").glob("*.npy"))
    group = zarr.open_group(str(tmp_path / "out" / "maps.zarr"), mode="r")
    assert list(group["paths"][:]) == [str(p) for p in paths] and group.attrs["labels"] == ["ant", "bee", "cat"]
    bad = paths.index(tmp_path / "in" / "p001.jpg")
    assert list(group["done"][:]) == [i != bad for i in range(len(paths))]
    maps = group["maps/gradcam/" + files.images[0].explanations[0]["layer"]]
    assert maps.shape[:2] == (len(paths), 2) and maps.chunks[0] == 3 and np.isnan(maps[bad]).all()
    for i, report in enumerate(files.images):
        if report.error:
            continue
        assert [p.index for p in report.predictions] == list(group["predicted"][i])
        for entry in report.explanations:
            slot = [t for t in group["targets"][i]].index(entry["target"]["index"])
            raw = group[f"maps/{entry['method']}/{entry['layer']}"][i, slot]
            np.testing.assert_array_equal(raw, np.load(entry["outputs"][0]))
    with pytest.raises(CamlensError, match=r"maps.zarr: exists; pass overwrite=True to replace it, or resume=True"):
        runner.run(lens, paths, tmp_path / "out", methods=["gradcam"], options=runner.RenderOptions(store=True))


def test_resume_deals_the_blocks_left_evenly() -> None:
    done = {0, 4, 8}  # first indices of the blocks an earlier attempt finished
    shares = [World(r, 2).share(20, 4, skip=done.__contains__) for r in range(2)]
    assert shares == [[12, 13, 14, 15], [16, 17, 18, 19]]  # not both left to rank 1


def test_resume_without_a_ledger_never_replaces_a_store_and_retries_what_failed_to_write(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from camlens.lens import Explanation

    lens = Lens(small, device="cpu")
    paths = sorted(pictures(tmp_path / "in", 5).iterdir())
    store = runner.RenderOptions(store=True)
    runner.run(lens, paths, tmp_path / "out", methods=["gradcam"], options=store, batch_size=2)
    shutil.rmtree(tmp_path / "out" / FOLDER)  # say, copied without its hidden folder
    with pytest.raises(CamlensError, match="maps.zarr: exists; pass overwrite=True"):
        runner.run(lens, paths, tmp_path / "out", methods=["gradcam"], options=store, batch_size=2, resume=True)
    assert (tmp_path / "out" / "maps.zarr" / "zarr.json").is_file()

    real, calls = Explanation.overlay, []

    def full_disk(self: Explanation, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        calls.append(1)
        if len(calls) == 3:  # one image's overlay, once
            raise OSError(28, "No space left on device")
        return real(self, colormap, alpha)

    monkeypatch.setattr(Explanation, "overlay", full_disk)
    first = runner.run(lens, paths, tmp_path / "again", methods=["gradcam"], batch_size=2)
    assert len(first.failed) == 2 and "No space left on device" in str([r.error for r in first.failed])
    monkeypatch.setattr(Explanation, "overlay", real)
    second = runner.run(lens, paths, tmp_path / "again", methods=["gradcam"], batch_size=2, resume=True)
    assert [r.source.name for r in second.failed] == ["p001.jpg"]  # the unreadable file stays failed
    assert len(list((tmp_path / "again").glob("*_gradcam_*.png"))) == len(paths) - 1
