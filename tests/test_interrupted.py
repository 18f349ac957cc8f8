"""Interrupted and failing runs: every image gets all of its files or none, Ctrl-C and SIGTERM
stop after the batch with a summary, and a killed run's leftovers are finished or removed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens import runner
from camlens.errors import CamlensError
from camlens.imageio import clean_leftovers, write_atomic, write_group

EXE = Path(sys.executable).with_name("camlens")


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.suffix in {".part", ".journal"}]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failing_or_interrupted_group_writes_nothing(tmp_path: Path) -> None:
    def fail(fh: object) -> None:
        raise CamlensError("render failed")

    def interrupt(fh: object) -> None:
        raise KeyboardInterrupt

    for bad, error in ((fail, CamlensError), (interrupt, KeyboardInterrupt)):
        with pytest.raises(error):
            write_group([(tmp_path / "a.txt", lambda fh: fh.write(b"a")), (tmp_path / "b.txt", bad)])
        assert list(tmp_path.iterdir()) == []

    (tmp_path / "b.txt").write_bytes(b"mine")
    with pytest.raises(CamlensError, match="b.txt: exists; pass overwrite=True"):
        write_group([(tmp_path / "a.txt", lambda fh: fh.write(b"a")), (tmp_path / "b.txt", lambda fh: fh.write(b"b"))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"] and (tmp_path / "b.txt").read_bytes() == b"mine"

    done = write_group([(tmp_path / "a.txt", lambda fh: fh.write(b"A")), (tmp_path / "b.txt", lambda fh: fh.write(b"B"))],
                       overwrite=True)
    assert [p.read_bytes() for p in done] == [b"A", b"B"] and not leftovers(tmp_path)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_group_killed_while_moving_is_finished_by_the_next_run(tmp_path: Path, overwrite: bool) -> None:
    # The writer dies (os._exit, as under SIGKILL) right after the first of three files is in place.
    if overwrite:
        for name in "abc":
            (tmp_path / f"{name}.txt").write_text("old")
    call = "replace" if overwrite else "link"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from camlens import imageio
        real, calls = os.{call}, []
        def dying(src, dst):
            if not str(dst).endswith(".journal"):
                calls.append(dst)
                if len(calls) == 2:
                    os._exit(9)
            real(src, dst)
        os.{call} = dying
        out = Path(sys.argv[1])
        imageio.write_group([(out / f"{{n}}.txt", lambda fh, n=n: fh.write(n.encode() * 3)) for n in "abc"],
                            overwrite={overwrite})
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    left = 3 if overwrite else 4  # the journal, and the temporary files not moved (a hard link leaves the first too)
    assert len(leftovers(tmp_path)) == left
    assert (tmp_path / "a.txt").read_text() == "aaa"
    for name in "bc":
        assert (tmp_path / f"{name}.txt").read_text() == "old" if overwrite else not (tmp_path / f"{name}.txt").exists()

    assert clean_leftovers(tmp_path) == left
    assert [(tmp_path / f"{n}.txt").read_text() for n in "abc"] == ["aaa", "bbb", "ccc"]
    assert not leftovers(tmp_path)


def test_leftovers_of_dead_writers_go_and_those_of_live_ones_stay(tmp_path: Path) -> None:
    dead, live = dead_pid(), os.getpid()
    stale = tmp_path / "sub" / f".x.png.camlens{dead}-abc123.part"
    stale_journal = tmp_path / f".camlens{dead}-0011.journal"  # written only partly: not JSON
    busy = tmp_path / f".y.png.camlens{live}-def456.part"
    user = tmp_path / ".notes.part"  # not camlens': never touched
    for p in (stale, stale_journal, busy, user):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"{")
    assert clean_leftovers(tmp_path) == 2
    assert not stale.exists() and not stale_journal.exists() and busy.exists() and user.exists()


def test_write_atomic_names_its_temporary_file_for_its_process(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(fh) -> None:  # type: ignore[no-untyped-def]
        seen.extend(p.name for p in tmp_path.iterdir())
        fh.write(b"x")

    write_atomic(tmp_path / "out.png", write)
    assert len(seen) == 1 and seen[0].startswith(f".out.png.camlens{os.getpid()}-") and seen[0].endswith(".part")


def test_an_image_that_fails_to_render_leaves_nothing_and_the_others_go_on(lens, samples_dir: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from camlens.lens import Explanation

    real = Explanation.panel

    def panel(self: Explanation, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
        if self.image.size == Image.open(samples_dir / "rocket.png").size:
            raise MemoryError("no room for the panel")
        return real(self, colormap, alpha)

    monkeypatch.setattr(Explanation, "panel", panel)
    inputs = [samples_dir / "coffee.png", samples_dir / "rocket.png", samples_dir / "chelsea.png"]
    options = runner.RenderOptions(panel=True, save_raw=True)
    report = runner.run(lens, inputs, tmp_path, methods=["cam", "gradcam"], options=options, batch_size=2)
    assert [r.source.name for r in report.failed] == ["rocket.png"]
    assert "rocket.png: cannot render its outputs (MemoryError: no room for the panel)" in str(report.failed[0].error)
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("camlens-run-", ".camlens-run")))
    assert len(names) == 12 and not [n for n in names if n.startswith("rocket")] and not leftovers(tmp_path)
    summary = json.loads(report.summary.read_text())  # type: ignore[union-attr]
    assert summary["interrupted"] is None and summary["not_tried"] == [] and len(summary["images"]) == 2


def test_a_stop_request_ends_the_run_after_its_batch(lens, samples_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inputs = [samples_dir / f"{n}.png" for n in ("coffee", "rocket", "chelsea", "astronaut")]
    stop = runner.StopRequest()

    def progress(n: int) -> None:
        stop.signal = signal.SIGTERM  # as if SIGTERM came during the first batch

    report = runner.run(lens, inputs, tmp_path, methods=["gradcam"], batch_size=2, progress=progress, stop=stop)
    assert report.interrupted == signal.SIGTERM and report.pending == inputs[2:]
    assert [r.source for r in report.images] == inputs[:2] and not report.failed
    summary = json.loads(report.summary.read_text())  # type: ignore[union-attr]
    assert summary["interrupted"] == "SIGTERM" and summary["not_tried"] == [str(p) for p in inputs[2:]]
    assert len(summary["images"]) == 2 and len(list(tmp_path.glob("*.png"))) == 2


def test_stop_on_signals_catches_the_first_signal_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    heard: list[int] = []
    with runner.stop_on_signals(heard.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.signal == signal.SIGTERM and heard == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


def photos(samples_dir: Path, folder: Path, copies: int) -> Path:
    folder.mkdir()
    for n in range(copies):
        for name in ("coffee", "rocket", "chelsea", "astronaut"):
            shutil.copy(samples_dir / f"{name}.png", folder / f"{name}{n:02d}.png")
    return folder


def start(folder: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(EXE), "explain", str(folder), "--method", "cam,gradcam", "--panel", "--batch-size", "1", "--out", str(out),
         "--device", "cpu", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )


def wait_for_output(out: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while not list(out.glob("*.png")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def complete_images(out: Path, stems: list[str]) -> dict[str, int]:
    """How many files each input has: 4 (two methods, overlay and panel) or 0."""
    return {s: len([p for p in out.glob(f"{s}_*.png")]) for s in stems}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_command_after_its_batch_with_a_summary(samples_dir: Path, tmp_path: Path, signum: int) -> None:
    folder = photos(samples_dir, tmp_path / "in", 6)
    out = tmp_path / "out"
    proc = start(folder, out)
    wait_for_output(out, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "stopping after this batch" in stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    summary = json.loads(next(out.glob("camlens-run-*.json")).read_text())
    assert summary["interrupted"] == signal.Signals(signum).name and summary["not_tried"]
    done = {Path(i["source"]).stem for i in summary["images"]}
    counts = complete_images(out, sorted(p.stem for p in folder.iterdir()))
    assert {s for s, n in counts.items() if n} == done and set(counts.values()) <= {0, 4}
    assert len(done) + len(summary["not_tried"]) == 24 and not leftovers(out)


def test_a_killed_run_leaves_whole_images_once_the_next_run_starts(samples_dir: Path, tmp_path: Path) -> None:
    folder = photos(samples_dir, tmp_path / "in", 4)
    stems = sorted(p.stem for p in folder.iterdir())
    out = tmp_path / "out"
    for delay in (0.0, 0.15, 0.4):
        proc = start(folder, out, "--overwrite")
        wait_for_output(out, proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        other = tmp_path / f"other{delay}.png"
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(other)
        again = subprocess.run([str(EXE), "explain", str(other), "--out", str(out), "--device", "cpu"],
                               capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert set(complete_images(out, stems).values()) <= {0, 4} and not leftovers(out)
    assert list(out.glob("camlens-run-*.json"))
