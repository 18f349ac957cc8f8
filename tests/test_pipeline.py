"""The folder pipeline (camlens.pipeline): decoding workers ahead of the model and writing
threads behind it change nothing in what a run writes; the fast output options."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.errors import CamlensError
from camlens.pipeline import Behind, loaded_batches, readable
from camlens.runner import RenderOptions, run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Seven photos (crops of the samples, two sizes, JPEG and PNG) and a corrupt file among them."""
    from camlens.samples import SAMPLES, sample_image

    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(7):
        picture = sample_image(SAMPLES[i % len(SAMPLES)]).crop((10 * i, 0, 300 + 10 * i, 200 + 20 * (i % 2)))
        path = root / f"p{i}.{'jpg' if i % 2 else 'png'}"
        picture.save(path)
        paths.append(path)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths.insert(3, root / "broken.png")
    return paths


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_order_read_and_prepared_once(folder: list[Path], lens, workers: int) -> None:  # type: ignore[no-untyped-def]
    from camlens.imageio import read_image

    batches = list(loaded_batches(folder, 3, prepare=lens.loaded.preprocessing, workers=workers))
    assert [len(b) for b in batches] == [3, 3, 2]
    items = [item for batch in batches for item in batch]
    assert [item.index for item in items] == list(range(8)) and [item.path for item in items] == folder
    assert items[3].picture is None and items[3].error is not None and "broken.png" in items[3].error
    for item in items[:3] + items[4:]:
        expected = read_image(item.path)
        assert item.picture is not None and item.picture.tobytes() == expected.tobytes()
        np.testing.assert_array_equal(item.prepared, lens.loaded.preprocessing([expected])[0])
    kept, pictures, stacked = readable(batches[1])
    assert [k.index for k in kept] == [4, 5] and len(pictures) == 2 and stacked is not None and stacked.shape[0] == 2


def _written(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(("camlens-run-", ".camlens-run"))}


def test_workers_and_writer_threads_change_no_byte(folder: list[Path], lens, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    options = RenderOptions(save_raw=True, panel=True)
    alone = run(lens, folder, tmp_path / "alone", methods=["gradcam", "cam"], options=options, batch_size=3, workers=0)
    piped = run(lens, folder, tmp_path / "piped", methods=["gradcam", "cam"], options=options, batch_size=3, workers=2)
    assert _written(tmp_path / "alone") == _written(tmp_path / "piped")
    assert len(_written(tmp_path / "piped")) == 7 * 2 * 3
    assert [r.error is not None for r in piped.images] == [r.error is not None for r in alone.images]
    assert [r.source.name for r in piped.failed] == ["broken.png"]
    assert [[p.to_dict() for p in r.predictions] for r in piped.images] == [[p.to_dict() for p in r.predictions]
                                                                            for r in alone.images]


def test_fast_output_options(folder: list[Path], lens, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = [p for p in folder if p.name != "broken.png"][:2]
    run(lens, images, tmp_path / "raw", methods=["gradcam"], options=RenderOptions(overlay=False, save_raw=True))
    assert sorted(Path(name).suffix for name in _written(tmp_path / "raw")) == [".npy", ".npy"]
    run(lens, images, tmp_path / "webp", methods=["gradcam"], options=RenderOptions(image_format="webp"))
    webp = sorted((tmp_path / "webp").glob("*.webp"))
    assert len(webp) == 2 and Image.open(webp[0]).format == "WEBP"
    for level in (0, 9):
        run(lens, images[:1], tmp_path / f"png{level}", methods=["gradcam"], options=RenderOptions(png_level=level))
    fast, small = (next((tmp_path / f"png{level}").glob("*.png")) for level in (0, 9))
    assert fast.stat().st_size > 300 * 200 * 3 > small.stat().st_size  # level 0 stores the pixels, 9 compresses
    assert Image.open(fast).tobytes() == Image.open(small).tobytes()  # the same pixels


@pytest.mark.parametrize(("options", "message"), [
    (RenderOptions(overlay=False), "nothing to write"),
    (RenderOptions(image_format="gif"), "unknown image format 'gif'; use png, jpg or webp"),
    (RenderOptions(png_level=10), "PNG compression level must be 0 to 9"),
])
def test_output_options_that_cannot_work_are_refused_first(folder: list[Path], lens, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            options: RenderOptions, message: str) -> None:
    with pytest.raises(CamlensError, match=message):
        run(lens, folder[:1], tmp_path / "out", methods=["gradcam"], options=options)
    assert not (tmp_path / "out").exists()


def test_behind_bounds_the_waiting_jobs_and_raises_a_jobs_error() -> None:
    release = threading.Event()
    started: list[int] = []

    def job(k: int) -> None:
        started.append(k)
        release.wait(10)

    behind = Behind(threads=1, limit=2)
    behind.submit(job, 0)
    behind.submit(job, 1)
    waiter = threading.Thread(target=behind.submit, args=(job, 2))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # two jobs wait: a third submit blocks until one is done
    release.set()
    waiter.join(10)
    assert not waiter.is_alive()
    behind.wait()
    assert started == [0, 1, 2]

    def broken() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Behind(threads=2) as failing:
        failing.submit(broken)
