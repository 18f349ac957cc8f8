"""``evaluate`` split over processes: shares, exact sums, and the merged result equal to one
process's bit for bit, in the library (ranks run one after another) and under ``torchrun``."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from camlens.distributed import World
from camlens.evaluation.faithfulness import Curves
from camlens.evaluation.localization import LocalizationMeter, LocalizationProtocol
from camlens.evaluation.meters import ExactSum, FaithfulnessMeter, units
from camlens.evaluation.run import EvalResult, FaithfulnessProtocol, evaluate, evaluate_share, merge_rows

BATCH = 4
STEPS = 4


@pytest.mark.parametrize(("count", "size", "block"), [(0, 2, 3), (1, 3, 4), (10, 2, 4), (17, 3, 2), (33, 4, 16)])
def test_shares_cover_every_index_once_in_whole_blocks(count: int, size: int, block: int) -> None:
    shares = [World(rank=r, size=size).share(count, block) for r in range(size)]
    assert sorted(i for share in shares for i in share) == list(range(count))
    for r, share in enumerate(shares):
        assert all(i // block % size == r for i in share) and share == sorted(share)


def test_units_are_exact_for_every_kind_of_float() -> None:
    values = [0.0, -0.0, 1.0, -2.5, 0.1, 1e-310, -5e-324, 2.0**-1074, 1.7976931348623157e308, 1 / 3]
    assert [Fraction(unit, 2**1074) for unit in units(values)] == [Fraction(value) for value in values]


def test_exact_sums_do_not_depend_on_order_grouping_or_merging() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(500), rng.random(200) * 1e-12, rng.normal(size=300) * 1e6, [1e-320, 3e300]])
    plain = [ExactSum() for _ in range(3)]
    plain[0].add(values)
    shuffled = values.copy()
    rng.shuffle(shuffled)
    for chunk in np.array_split(shuffled, 37):
        plain[1].add(chunk)
    halves = [ExactSum(), ExactSum()]
    halves[0].add(values[::2])
    halves[1].add(values[1::2])
    halves[1].merge(halves[0])
    plain[2] = halves[1]
    assert len({s.units[0] for s in plain}) == 1
    means = [float(s.mean(len(values), 100)) for s in plain]
    assert means[0] == means[1] == means[2]
    assert means[0] == float(100 * sum(map(Fraction, values.tolist())) / len(values))  # correctly rounded
    # float sums in other orders differ, which is why the meters do not use them
    small = values[:1000]
    assert len({float(np.sum(small)), float(np.sum(small[::-1])), sum(small.tolist()), sum(sorted(small.tolist()))}) > 1

    curves = rng.random((40, 6))
    one, parts = ExactSum((6,)), ExactSum((6,))
    one.add(curves)
    for k in random.Random(1).sample(range(40), 40):
        parts.add(curves[k : k + 1])
    assert np.array_equal(one.mean(40), parts.mean(40)) and one.mean(40).shape == (6,)
    special = ExactSum()
    special.add([1.0, np.inf, 2.0])
    assert special.mean(3)[()] == np.inf


def test_meters_merge_to_one_pass() -> None:
    rng = np.random.default_rng(3)
    fractions = np.linspace(0, 1, STEPS + 1)
    drop, increase = rng.random(12), rng.random(12) > 0.5
    curves = Curves(fractions, rng.random((12, STEPS + 1)), rng.random((12, STEPS + 1)))
    one, first, second = FaithfulnessMeter(), FaithfulnessMeter(), FaithfulnessMeter()
    one.update(drop, increase, curves)
    for meter, part in ((second, slice(5, 12)), (first, slice(0, 5))):
        meter.update(drop[part], increase[part], Curves(fractions, curves.deletion[part], curves.insertion[part]))
    first.merge(second)
    empty = FaithfulnessMeter()
    empty.merge(first)
    for merged in (first, empty):
        assert merged.summary() == one.summary()
        assert all(np.array_equal(merged.mean_curves()[k], one.mean_curves()[k]) for k in ("deletion", "insertion"))
    proto = LocalizationProtocol()
    a, b = LocalizationMeter(proto), LocalizationMeter(proto)
    a.count, a.top1, a.hits[3, 1] = 2, 1, 2
    b.count, b.gt_known, b.hits[3, 1] = 1, 1, 1
    a.merge(b)
    assert (a.count, a.top1, a.gt_known, int(a.hits.sum()), int(a.hits[3, 1])) == (3, 1, 1, 3, 3)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A small digits-canvas test set (2 images per digit, boxed), two corrupt files in it, and
    a random small_cnn for 32x32 inputs with the ten digits as classes."""
    from camlens.data.digits_canvas import CanvasSpec, generate
    from camlens.models import Labels, Preprocessing, save_checkpoint
    from camlens.models.small_cnn import SmallCNN

    root = tmp_path_factory.mktemp("digits")
    boxes = generate(root / "data", 1, 2, seed=0, spec=CanvasSpec(size=48, digit_min=16, digit_max=28, clutter=2))
    data = root / "data" / "test"
    (data / "2" / "test_2_broken.png").write_bytes(b"not a png")  # item 6: in block 1, rank 1's (batches of 4)
    (data / "3" / "test_3_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")  # item 9: in block 2, rank 0's
    import torch

    torch.manual_seed(0)
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(32, 32), interpolation="bilinear")
    model = save_checkpoint(root / "small.pt", "small_cnn", SmallCNN(10).eval(),
                            Labels(tuple(str(d) for d in range(10))), prep)
    return data, boxes, model


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread, as under torchrun (which sets OMP_NUM_THREADS=1): with so small a
    model, two threads on this 2-core machine, shared with other tests, are several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same(merged: EvalResult, alone: EvalResult) -> None:
    assert merged.scores == alone.scores and merged.methods == alone.methods and merged.layer == alone.layer
    assert (merged.images, merged.accuracy, merged.localized, merged.failed, merged.protocol) == (
        alone.images, alone.accuracy, alone.localized, alone.failed, alone.protocol)
    assert merged.fractions is not None and alone.fractions is not None
    assert np.array_equal(merged.fractions, alone.fractions) and merged.curves.keys() == alone.curves.keys()
    for m, curves in alone.curves.items():
        assert all(np.array_equal(merged.curves[m][k], curves[k]) for k in ("deletion", "insertion"))
    assert len(merged.examples) == len(alone.examples) > 0
    for ours, theirs in zip(merged.examples, alone.examples, strict=True):
        assert ours.image.tobytes() == theirs.image.tobytes() and (ours.truth, ours.predicted) == (theirs.truth, theirs.predicted)
        assert ours.boxes == theirs.boxes and ours.found == theirs.found and ours.heatmaps.keys() == theirs.heatmaps.keys()
        assert all(np.array_equal(ours.heatmaps[m], theirs.heatmaps[m]) for m in theirs.heatmaps)


def test_two_shares_merge_to_the_one_process_evaluation(digits: tuple[Path, Path, Path], one_thread: None) -> None:
    from camlens.evaluation.annotations import read_annotations
    from camlens.evaluation.run import dataset
    from camlens.lens import Lens

    data, boxes, model = digits
    lens = Lens(str(model), device="cpu")
    items, problems = dataset(data, lens, read_annotations(boxes))
    assert problems == [] and len(items) == 22
    faithful = FaithfulnessProtocol(steps=STEPS, batch_size=8)
    rows = io.StringIO()
    alone = evaluate(lens, items, "cam,gradcam", faithful=faithful, batch_size=BATCH, examples=5, per_image=rows)
    assert alone.images == 20 and len(alone.failed) == 2 and alone.localized == 20
    maxbox = [alone.scores[m]["maxboxacc_v2"] for m in alone.methods]
    assert all(0 < v < 100 for v in maxbox), maxbox  # a hit matrix with hits and misses
    parts = [io.StringIO(), io.StringIO()]
    # rank 1 first, its images read by a worker process: the order and the reader change nothing
    tallies = [evaluate_share(lens, items, ["cam", "gradcam"], faithful=faithful, batch_size=BATCH, examples=5,
                              rows=parts[r], world=World(r, 2), workers=r) for r in (1, 0)][::-1]
    assert [t.images for t in tallies] == [11, 9] and [len(t.failed) for t in tallies] == [1, 1]
    assert [len(t.row_blocks) for t in tallies] == [3, 3]
    merged_rows = io.StringIO()
    merge_rows([(part, t.row_blocks) for part, t in zip(parts, tallies, strict=True)], merged_rows)
    assert merged_rows.getvalue() == rows.getvalue() and len(rows.getvalue().splitlines()) == 1 + 20 * 2
    backwards = copy.deepcopy(tallies[1])
    backwards.merge(copy.deepcopy(tallies[0]))
    tallies[0].merge(tallies[1])
    _assert_same(tallies[0].result(), alone)
    _assert_same(backwards.result(), alone)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_writes_the_files_of_one_process(digits: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, boxes, model = digits
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("no torchrun")
    args = ["evaluate", str(data), "--boxes", str(boxes), "--model", str(model), "--method", "cam,gradcam", "--steps",
            str(STEPS), "--batch-size", str(BATCH), "--examples", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None)
    commands = {"alone": [sys.executable, "-m", "camlens"],
                "many": [str(torchrun), "--nnodes=1", "--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "camlens"]}
    started = {name: subprocess.Popen([*command, *args, "--out", str(tmp_path / name)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, command in commands.items()}
    done = {}
    for name, process in started.items():  # side by side: most of their time is importing torch
        stdout, stderr = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    alone, many = done["alone"], done["many"]
    assert alone.returncode == many.returncode == 1, (alone.stderr, many.stderr)  # the two corrupt files
    for broken in ("test_2_broken.png", "test_3_broken.png"):  # listed once, by rank 0, in image order
        assert many.stderr.count(broken) == 1 and broken in alone.stderr
    assert many.stderr.index("test_2_broken") < many.stderr.index("test_3_broken")
    assert "2 images or annotation records not evaluated" in many.stderr and many.stdout.count("wrote 6 files") == 1
    for name in ("metrics.csv", "per_image.csv", "report.md", "curves.png", "examples.png"):  # byte for byte
        assert (tmp_path / "many" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("alone", "many")]
    assert metrics[0] == metrics[1] and metrics[0]["images"] == 20
    with open(tmp_path / "many" / "per_image.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 20 * 2
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == sorted(p.name for p in (tmp_path / "alone").iterdir())
