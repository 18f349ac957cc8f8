"""``evaluate`` stopped, killed or split and resumed: the state records each scored block as
JSON, a resumed run scores only what is missing (and the blocks of the examples), and ends with
exactly the result of an uninterrupted run."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from camlens.distributed import World
from camlens.errors import CamlensError
from camlens.evaluation.faithfulness import Curves
from camlens.evaluation.localization import LocalizationMeter, LocalizationProtocol
from camlens.evaluation.meters import ExactSum, FaithfulnessMeter, MethodMeter
from camlens.evaluation.run import (
    EvalResult,
    EvalTally,
    EvaluationInterrupted,
    FaithfulnessProtocol,
    Item,
    evaluate,
    evaluate_share,
)
from camlens.runner import StopRequest
from tests import test_evaluate_distributed as distributed

digits, one_thread = distributed.digits, distributed.one_thread  # its fixtures, here too

BATCH = 4
METHODS = ["cam", "gradcam"]
FAITHFUL = FaithfulnessProtocol(steps=4, batch_size=8)
EXAMPLES = 3  # items 0, 10, 21: blocks 0, 2 and 5 of 0..5 are scored again on every resume


def test_meters_and_tallies_read_back_as_they_were() -> None:
    rng = np.random.default_rng(5)
    sums = ExactSum((3,))
    sums.add(np.concatenate([rng.random((4, 3)), [[np.inf, 1e-320, -2.5e300]]]))
    back = ExactSum.from_json(json.loads(json.dumps(sums.to_json())))
    assert (back.shape, back.units, back.special) == (sums.shape, sums.units, sums.special)
    scores = ExactSum((3,))
    scores.add(rng.random((16, 3)))
    assert len(json.dumps(scores.to_json())) < 200  # odd parts and shifts, not 320 digits a score

    fractions = np.linspace(0, 1, 5)
    faith = FaithfulnessMeter()
    faith.update(rng.random(6), rng.random(6) > 0.5, Curves(fractions, rng.random((6, 5)), rng.random((6, 5))))
    proto = LocalizationProtocol(maxbox_step=0.1)
    loc = LocalizationMeter(proto)
    loc.count, loc.top1, loc.gt_known, loc.pointing = 6, 2, 3, 4
    loc.hits[:4, 1:] = 5
    method = MethodMeter(proto)
    method.localization, method.faithfulness = loc, faith
    for meter in (MethodMeter(proto), method):  # a meter of nothing too
        again = MethodMeter.from_json(json.loads(json.dumps(meter.to_json())), proto)
        assert again.summary() == meter.summary() and again.to_json() == meter.to_json()
        assert np.array_equal(again.localization.hits, meter.localization.hits)
        assert again.localization.hits.dtype == np.int64
    assert all(np.array_equal(again.faithfulness.mean_curves()[k], faith.mean_curves()[k]) for k in ("deletion", "insertion"))
    assert np.array_equal(again.faithfulness.fractions, fractions) and again.summary()["gt_known_loc"] == 50.0

    tally = EvalTally(["cam"], {"p": 1}, {"cam": method}, images=6, labelled=5, correct=4, localized=6, layer="conv",
                      failed=[(7, "a.png: not an image \udcff")])
    copy = EvalTally.from_json(json.loads(json.dumps(tally.to_json())), tally.empty())
    assert copy.to_json() == tally.to_json() and copy.result().scores == tally.result().scores

    bad: list[Callable[[dict[str, Any]], object]] = [
        lambda d: d["meters"]["cam"]["localization"]["hits"].pop(),  # another shape than the protocol's
        lambda d: d["meters"]["cam"]["localization"].update(count=-1),
        lambda d: d["meters"]["cam"]["faithfulness"]["curves"][0]["units"].pop(),
        lambda d: d["meters"]["cam"]["faithfulness"]["drop"]["units"][0].append(1),
        lambda d: d["meters"]["cam"]["faithfulness"]["drop"]["units"][0].__setitem__(1, 10**6),
        lambda d: d["meters"]["cam"]["faithfulness"].update(fractions=None),
        lambda d: d["meters"].update(gradcam=d["meters"]["cam"]),
        lambda d: d.update(failed=[[1, 2]]),
        lambda d: d.update(images="6"),
        lambda d: d.pop("layer"),
    ]
    for spoil in bad:
        data = json.loads(json.dumps(tally.to_json()))
        spoil(data)
        with pytest.raises(CamlensError):
            EvalTally.from_json(data, tally.empty())


@pytest.fixture(scope="module")
def case(digits: tuple[Path, Path, Path]) -> tuple[Any, list[Item]]:
    from camlens.evaluation.annotations import read_annotations
    from camlens.evaluation.run import dataset
    from camlens.lens import Lens

    data, boxes, model = digits
    lens = Lens(str(model), device="cpu")
    items, problems = dataset(data, lens, read_annotations(boxes))
    assert problems == [] and len(items) == 22  # 6 blocks of 4, the last of 2; items 6 and 9 unreadable
    return lens, items


def run(case: tuple[Any, list[Item]], state: Path | None, **kwargs: Any) -> tuple[EvalResult, str]:
    lens, items = case
    rows = io.StringIO()
    kwargs = {"methods": METHODS, "examples": EXAMPLES, **kwargs}
    result = evaluate(lens, items, kwargs.pop("methods"), faithful=FAITHFUL, batch_size=BATCH, per_image=rows,
                      state=state, **kwargs)
    return result, rows.getvalue()


@pytest.fixture(scope="module")
def alone(case: tuple[Any, list[Item]], tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalResult, str, Path]:
    """The uninterrupted evaluation, and the state it recorded (resumed with none there: a new one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = tmp_path_factory.mktemp("whole") / ".camlens-eval"
        result, rows = run(case, state, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert result.images == 20 and len(result.failed) == 2 and len(result.examples) == EXAMPLES
    assert sorted(p.name for p in state.iterdir()) == ["rank-0.jsonl", "settings.json"]
    assert len((state / "rank-0.jsonl").read_bytes().splitlines()) == 6
    return result, rows, state


def stopper(after: int) -> tuple[StopRequest, Callable[[int], None]]:
    """A stop request set (as by Ctrl-C) once ``after`` batches were scored."""
    stop, seen = StopRequest(), []

    def progress(n: int) -> None:
        seen.append(n)
        if len(seen) == after:
            stop.signal = signal.SIGINT

    return stop, progress


def same(got: tuple[EvalResult, str], alone: tuple[EvalResult, str, Path]) -> None:
    distributed._assert_same(got[0], alone[0])
    assert got[1] == alone[1] and got[0].failed == alone[0].failed


def test_a_stopped_evaluation_resumed_is_the_uninterrupted_one(case: tuple[Any, list[Item]], alone: Any,
                                                                tmp_path: Path, one_thread: None) -> None:
    state = tmp_path / ".camlens-eval"
    stop, progress = stopper(2)
    with pytest.raises(EvaluationInterrupted) as stopped:
        run(case, state, stop=stop, progress=progress)
    assert (stopped.value.signal, stopped.value.done, stopped.value.total) == (signal.SIGINT, 8, 22)
    assert "SIGINT stopped the evaluation after 8 of 22 images" in str(stopped.value)
    assert len((state / "rank-0.jsonl").read_bytes().splitlines()) == 2
    counted: list[int] = []
    same(run(case, state, resume=True, progress=counted.append), alone)
    assert counted == [4, 4, 4, 4, 4, 2]  # block 1 recorded (said first); 0, 2 (examples), 3, 4, 5 scored
    assert len((state / "rank-0.jsonl").read_bytes().splitlines()) == 2 + 5

    # without resume: a new evaluation, the old record gone
    stop, progress = stopper(1)
    with pytest.raises(EvaluationInterrupted):
        run(case, state, stop=stop, progress=progress)
    assert len((state / "rank-0.jsonl").read_bytes().splitlines()) == 1


def test_a_killed_evaluation_resumed_is_the_uninterrupted_one(case: tuple[Any, list[Item]], alone: Any,
                                                               tmp_path: Path, one_thread: None) -> None:
    state = tmp_path / ".camlens-eval"
    shutil.copytree(alone[2], state)
    journal = state / "rank-0.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["block"] for line in lines] == list(range(6))
    planted = {"block": 4, "rows": "planted\n", "tally": {"images": 4}}  # not a tally: block 4 is scored again
    lines[4] = json.dumps(planted, separators=(",", ":")).encode() + b"\n"
    journal.write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])  # killed while writing block 5
    same(run(case, state, resume=True), alone)
    again = journal.read_bytes().splitlines()
    assert len(again) == 6 + 4 and [json.loads(line)["block"] for line in again[6:]] == [0, 2, 4, 5]

    # everything is recorded now: with no example to show, nothing is scored (the stop asked at once is moot)
    stop = StopRequest()
    stop.signal = signal.SIGTERM
    result, rows = run(case, state, resume=True, stop=stop, examples=0)
    assert result.scores == alone[0].scores and rows == alone[1] and result.examples == []


def test_two_ranks_one_stopped_resumed_by_one_process(case: tuple[Any, list[Item]], alone: Any, tmp_path: Path,
                                                      one_thread: None) -> None:
    lens, items = case
    state = tmp_path / ".camlens-eval"
    kwargs: dict[str, Any] = dict(faithful=FAITHFUL, batch_size=BATCH, examples=EXAMPLES, state=state)
    whole = evaluate_share(lens, items, METHODS, world=World(0, 2), rows=io.StringIO(), **kwargs)  # blocks 0, 2, 4
    stop, progress = stopper(1)
    half = evaluate_share(lens, items, METHODS, world=World(1, 2), stop=stop, progress=progress, **kwargs)
    assert (whole.interrupted, half.interrupted, len(half.row_blocks)) == (None, signal.SIGINT, 0)
    assert half.images + len(half.failed) == 4  # block 1 of 1, 3, 5
    assert sorted(p.name for p in state.iterdir()) == ["rank-0.jsonl", "rank-1.jsonl", "settings.json"]
    same(run(case, state, resume=True), alone)
    assert len((state / "rank-0.jsonl").read_bytes().splitlines()) == 3 + 4  # 0, 2, 5 for the examples; 3
    assert len((state / "rank-1.jsonl").read_bytes().splitlines()) == 1


def test_a_resume_with_other_settings_is_refused(case: tuple[Any, list[Item]], alone: Any, tmp_path: Path) -> None:
    state = tmp_path / ".camlens-eval"
    shutil.copytree(alone[2], state)
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    lens, items = case
    refusals = [
        (dict(methods=["gradcam"]), r"another list of methods \(\[\"cam\", \"gradcam\"\], now \[\"gradcam\"\]\)"),
        (dict(batch_size=5), r"another batch size \(4, now 5\)"),
        (dict(localization=None), r"another localization protocol \(\{.*, now null\)"),
        (dict(items=items[:-1]), r"another count of images \(22, now 21\)"),
        (dict(items=[*items[:-1], Item(items[-1].path, items[-1].label, None)]), r"another list of images \(or "),
    ]
    for change, message in refusals:
        arguments: dict[str, Any] = {"methods": METHODS, "faithful": FAITHFUL, "batch_size": BATCH,
                                     "examples": EXAMPLES, "state": state, "resume": True, "items": items, **change}
        with pytest.raises(CamlensError, match=message) as refused:
            evaluate(lens, arguments.pop("items"), arguments.pop("methods"), **arguments)
        assert "\n" not in str(refused.value) and str(refused.value).startswith(f"{state}: its last evaluation had")
        assert str(refused.value).endswith("; resume it with the same settings, or leave out --resume")
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before  # nothing written


def test_a_killed_evaluate_command_resumes_to_the_files_of_an_uninterrupted_one(
    digits: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, boxes, model = digits
    args = ["evaluate", str(data), "--boxes", str(boxes), "--model", str(model), "--method", "cam,gradcam", "--steps",
            "16", "--batch-size", str(BATCH), "--examples", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}

    def start(out: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "camlens", *args, "--out", str(out), *extra], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    alone, killed = start(tmp_path / "alone"), start(tmp_path / "out")
    ledger = tmp_path / "out" / ".camlens-eval" / "rank-0.jsonl"
    while not (ledger.exists() and ledger.read_bytes().count(b"\n") >= 1):
        assert killed.poll() is None, killed.communicate()
        time.sleep(0.005)
    killed.kill()
    killed.communicate()
    assert ledger.read_bytes().count(b"\n") < 6 and not (tmp_path / "out" / "metrics.json").exists()  # midway
    stopped = start(tmp_path / "out", "--resume")
    while ledger.read_bytes().count(b"\n") < 2:
        assert stopped.poll() is None, stopped.communicate()
        time.sleep(0.005)
    stopped.send_signal(signal.SIGINT)
    _, stderr = stopped.communicate(timeout=300)
    if stopped.returncode == 130:  # else it had finished before the signal: nothing to resume
        assert "stopped the evaluation after" in stderr and "--resume finishes it" in stderr and "Traceback" not in stderr
        resumed = start(tmp_path / "out", "--resume")
        _, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 1, stderr  # the two corrupt files, as the uninterrupted run
    assert alone.communicate(timeout=300) and alone.returncode == 1
    for name in ("metrics.csv", "metrics.json", "per_image.csv", "report.md", "curves.png", "examples.png"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes(), name
    assert not (tmp_path / "out" / ".camlens-eval").exists()  # the report is the record once written
