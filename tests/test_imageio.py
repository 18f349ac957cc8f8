"""Reading every common image kind as upright RGB; clear errors; atomic, non-clobbering writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens.errors import CamlensError, ImageError
from camlens.imageio import _umask, find_images, read_image, save_image, unique_stems, write_atomic


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[:, :20] = (200, 30, 30)  # red left half
    arr[:, 20:] = rng.integers(0, 255, (30, 20, 3))
    return Image.fromarray(arr)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".bmp", ".tif", ".gif"])
def test_formats_read_as_rgb(tmp_path: Path, photo: Image.Image, suffix: str) -> None:
    path = tmp_path / f"a{suffix}"
    photo.save(path)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    r, g, b = np.asarray(img)[15, 5].astype(int)
    assert r > 150 and g < 90 and b < 90


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(read_image(tmp_path / "anim.gif"))[0, 0]) == (255, 0, 0)


def test_exif_orientation_applied(tmp_path: Path, photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rot.jpg", exif=exif)
    img = read_image(tmp_path / "rot.jpg")
    assert img.size == (30, 40)
    assert np.asarray(img)[5, 15, 0] > 150  # red half is now on top


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
    ],
)
def test_modes_become_rgb(tmp_path: Path, mode: str, value: object, expected: tuple[int, int, int]) -> None:
    path = tmp_path / ("m.tif" if mode != "L" else "m.png")
    Image.new(mode, (4, 4), value).save(path)  # type: ignore[arg-type]
    img = read_image(path)
    assert img.mode == "RGB"
    np.testing.assert_allclose(np.asarray(img)[0, 0], expected, atol=1)


def test_alpha_and_palette_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert tuple(np.asarray(read_image(tmp_path / "clear.png"))[0, 0]) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] + [0] * 765)
    pal.save(tmp_path / "pal.png")
    assert tuple(np.asarray(read_image(tmp_path / "pal.png"))[0, 0]) == (10, 20, 30)


def test_bad_inputs_give_one_line_errors(tmp_path: Path, photo: Image.Image) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")
    photo.save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cases = {
        tmp_path / "missing.png": "missing.png: no such file",
        tmp_path / "notes.jpg": "notes.jpg: not an image",
        tmp_path / "cut.jpg": "cut.jpg: truncated or corrupt image",
        tmp_path: "is a folder",
    }
    for path, message in cases.items():
        with pytest.raises(ImageError, match=message) as info:
            read_image(path)
        assert "\n" not in str(info.value)


def test_write_atomic_never_clobbers_and_leaves_no_partials(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "x.bin"
    write_atomic(dest, lambda fh: fh.write(b"first"))
    with pytest.raises(CamlensError, match="exists; pass overwrite=True"):
        write_atomic(dest, lambda fh: fh.write(b"second"))
    assert dest.read_bytes() == b"first"
    assert dest.stat().st_mode & 0o777 == 0o666 & ~_umask()

    def failing(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CamlensError, match="cannot write"):
        write_atomic(tmp_path / "out" / "y.bin", failing)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.bin"]
    write_atomic(dest, lambda fh: fh.write(b"third"), overwrite=True)
    assert dest.read_bytes() == b"third"


def test_save_image_formats(tmp_path: Path, photo: Image.Image) -> None:
    save_image(photo, tmp_path / "a.jpg")
    save_image(photo, tmp_path / "a.png")
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    assert Image.open(tmp_path / "a.png").format == "PNG"
    with pytest.raises(CamlensError, match="unknown image format"):
        save_image(photo, tmp_path / "a.xyz")


def test_find_images_and_unique_stems(tmp_path: Path, photo: Image.Image) -> None:
    for name in ["b.png", "a.jpg", "a.png", "sub/c.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        photo.save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    flat = find_images(tmp_path)
    assert [p.name for p in flat] == ["a.jpg", "a.png", "b.png"]
    deep = find_images(tmp_path, recursive=True)
    assert list(unique_stems(deep, tmp_path)) == ["a_jpg", "a_png", "b", "sub/c"]
    assert list(unique_stems([tmp_path / "a.png", tmp_path / "sub" / "a.png"])) == ["a_png", "a_png-2"]


def test_fifos_are_refused_not_read(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "x.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    assert [p.name for p in find_images(tmp_path)] == ["ok.png"]
    with pytest.raises(ImageError, match="x.jpg: not a regular file"):
        read_image(tmp_path / "x.jpg")


def test_images_over_the_pixel_budget_are_read_downscaled(tmp_path: Path) -> None:
    from PIL import ImageDraw

    from camlens.imageio import ImageReducedWarning

    bilevel = Image.new("1", (3000, 2000), 0)
    ImageDraw.Draw(bilevel).rectangle((0, 0, 1499, 1999), fill=1)  # white left half
    bilevel.save(tmp_path / "big.png")
    with pytest.warns(ImageReducedWarning, match=r"big.png: 3000x2000 \(6.0 MP\) is over the 1.0 MP budget; read at"):
        img = read_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert img.mode == "RGB" and img.width * img.height <= 1_000_000 and abs(img.width / img.height - 1.5) < 0.01
    arr = np.asarray(img)
    assert arr[:, : img.width // 2 - 2].min() == 255 and arr[:, img.width // 2 + 2 :].max() == 0  # the halves kept
    rng = np.random.default_rng(1)
    photo = np.repeat(np.repeat(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), 50, axis=0), 50, axis=1)
    Image.fromarray(photo).save(tmp_path / "big.jpg", quality=95)  # 3000x2000
    with pytest.warns(ImageReducedWarning):
        small = read_image(tmp_path / "big.jpg", max_pixels=400_000)
    assert small.width * small.height <= 400_000 and abs(small.width / small.height - 1.5) < 0.02
    blocks = np.asarray(small.resize((60, 40), Image.Resampling.BOX)).astype(int)
    assert np.abs(blocks - photo[25::50, 25::50]).mean() < 12  # the same picture, smaller
    assert read_image(tmp_path / "big.jpg").size == (3000, 2000)  # within the default budget: untouched


def test_colorize_is_matplotlibs_colormap_without_float_copies() -> None:
    import matplotlib

    from camlens.render import colorize

    heat = np.random.default_rng(2).random((64, 48)).astype(np.float32)
    heat[0, :4] = (0.0, 1.0, -0.5, 1.5)
    for name in ("jet", "viridis", "gray"):
        expected = (matplotlib.colormaps[name](np.clip(heat, 0, 1))[..., :3] * 255 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(colorize(heat, name)), expected)


def test_boxes_follow_a_downscaled_image(tmp_path: Path) -> None:
    from camlens.evaluation.boxes import Box
    from camlens.evaluation.run import Item
    from camlens.imageio import ORIGINAL_SIZE, ImageReducedWarning

    Image.new("RGB", (4000, 2000), "white").save(tmp_path / "wide.png")
    with pytest.warns(ImageReducedWarning):
        img = read_image(tmp_path / "wide.png", max_pixels=500_000)
    assert img.info[ORIGINAL_SIZE] == (4000, 2000)
    (box,) = Item(tmp_path / "wide.png", 0, [Box(400, 200, 2000, 1000)]).boxes_on(img)
    scale = img.width / 4000
    expected = (400 * scale, 200 * scale, 2000 * scale, 1000 * scale)
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx(expected, rel=1e-2)


def test_a_downscaled_16_bit_image_keeps_its_range(tmp_path: Path) -> None:
    from camlens.imageio import ImageReducedWarning

    arr = np.full((1200, 1600), 65535 // 2, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    with pytest.warns(ImageReducedWarning):
        img = read_image(tmp_path / "deep.png", max_pixels=100_000)
    np.testing.assert_allclose(np.asarray(img).mean(), 127.5, atol=1.0)  # mid-gray, not saturated white
