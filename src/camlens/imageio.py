"""Reading images of any common kind as RGB, and writing files atomically without clobbering."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camlens.errors import CamlensError, ImageError, ImageTooLarge

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MAX_NAME_BYTES = 200
"""Longest output file name, in UTF-8 bytes: under the usual 255-byte limit with room for the
temporary ``.NAME.camlensPID-XXXXXXXX.part`` name that :func:`write_atomic` writes first."""


MAX_PIXELS = 25_000_000
"""Default pixel budget of :func:`read_image` (a 6000x4000 photo fits): larger images are read
downscaled, so that maps, overlays and panels stay bounded in memory."""

_max_pixels = int(os.environ.get("CAMLENS_MAX_PIXELS", MAX_PIXELS))


def set_max_pixels(pixels: int) -> None:
    """Set the pixel budget of :func:`read_image` for this process (the CLI's ``--max-pixels``;
    the ``CAMLENS_MAX_PIXELS`` environment variable sets the default).

    Raises:
        CamlensError: fewer than 4096 pixels.
    """
    global _max_pixels
    if pixels < 4096:
        raise CamlensError(f"max_pixels must be at least 4096, got {pixels}")
    _max_pixels = int(pixels)


ORIGINAL_SIZE = "camlens_original_size"
"""Key of ``Image.info`` holding a downscaled image's original ``(width, height)``."""


class ImageReducedWarning(UserWarning):
    """An image was larger than the pixel budget and was read downscaled."""


def read_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB, upright, at most ``max_pixels`` pixels.

    JPEG, PNG, WebP, BMP, TIFF and GIF (first frame) are read; EXIF orientation is applied;
    grayscale, palette, CMYK and 16-bit images become RGB; transparency is composited on white.
    An image of more pixels than ``max_pixels`` (default :func:`set_max_pixels`'s, else
    :data:`MAX_PIXELS`) is read downscaled to fit, keeping its aspect ratio: JPEG through the
    decoder's own reduction (never decoded whole), others reduced in their own mode before any
    RGB copy; an :class:`ImageReducedWarning` says so in one line, and ``info[ORIGINAL_SIZE]``
    keeps the original size (so that boxes drawn on the original are rescaled).

    Raises:
        ImageError: missing file, not an image, or truncated/corrupt data; the message names
            the file and the cause in one line.
    """
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        raise ImageError(f"an image path is a str or a Path, not {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    if not p.is_file():  # a FIFO, socket or device would block or stream forever
        raise ImageError(f"{p}: not a regular file")
    budget = _max_pixels if max_pixels is None else int(max_pixels)
    rgb, (width, height) = _decode(p, str(p), budget, refuse=False)
    if rgb.width * rgb.height < width * height:
        rgb.info[ORIGINAL_SIZE] = (width, height)
        warnings.warn(f"{p}: {width}x{height} ({width * height / 1e6:.1f} MP) is over the {budget / 1e6:.1f} MP "
                      f"budget; read at {rgb.width}x{rgb.height} (max_pixels= to change it)",
                      ImageReducedWarning, stacklevel=2)
    return rgb


UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
"""What :func:`decode_image` decodes: the formats of :data:`IMAGE_SUFFIXES`, no other Pillow
plugin (EPS would run Ghostscript)."""


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Bytes received (an upload) as 8-bit RGB, upright, like :func:`read_image`; an image of
    more than ``max_pixels`` pixels is refused from its header, before any decoding, and only
    :data:`UPLOAD_FORMATS` are decoded.

    Raises:
        ImageError: not an image, truncated or corrupt, or too many pixels (naming ``name``).
    """
    return _decode(io.BytesIO(data), name, int(max_pixels), refuse=True, formats=UPLOAD_FORMATS)[0]


def _decode(source: Path | BinaryIO, name: str, budget: int, refuse: bool,
            formats: tuple[str, ...] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The first frame of ``source`` as upright RGB within ``budget`` pixels (reduced, or with
    ``refuse`` an :class:`ImageError`), and its size in the file; ``formats`` limits the
    decoders tried (Pillow's names)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget bounds the memory
            with Image.open(source, formats=formats) as img:
                img.seek(0)
                width, height = img.size
                if width * height > budget and refuse:
                    raise ImageTooLarge(f"{name}: {width}x{height} is {width * height / 1e6:.1f} MP, over the "
                                     f"{budget / 1e6:.1f} MP this accepts")
                if width * height > budget and img.format == "JPEG":
                    scale = math.sqrt(budget / (width * height))
                    img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
                img.load()
                rgb = to_rgb(ImageOps.exif_transpose(_within(img, budget)))
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image, or a format camlens cannot read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name}: image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image ({exc})") from exc
    return rgb, (width, height)


def _within(img: Image.Image, budget: int) -> Image.Image:
    """``img`` scaled down to at most ``budget`` pixels, else ``img`` itself: first reduced by
    an integer factor (box filter, in its own mode; bilevel and palette images first become
    8-bit gray or RGBA), then resized (Lanczos) the rest of the way."""
    width, height = img.size
    if width * height <= budget:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")  # keeps the 16-bit range, which to_rgb scales
    elif img.mode == "P":
        img = img.convert("RGBA")
    elif img.mode not in {"L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK"}:
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    factor = math.isqrt(width * height // budget)
    if factor > 1:
        img = img.reduce(factor)
    if img.width * img.height > budget:
        scale = math.sqrt(budget / (img.width * img.height))
        img = img.resize((max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale))),
                         Image.Resampling.LANCZOS)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB (16-bit and float scaled, alpha over white)."""
    if img.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max()), 1e-12) if arr.max() > 1.0 else 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" or img.mode in {"LA", "PA", "La"}:
        img = img.convert("RGBA")
    if img.mode in {"RGBA", "RGBa"}:
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def find_images(root: Path, recursive: bool = False) -> list[Path]:
    """Image files (by suffix) in a folder, sorted; sub-folders only when ``recursive``."""
    pattern = root.rglob("*") if recursive else root.glob("*")
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_PART = re.compile(r"\.camlens(\d+)-[^./]*\.(part|journal)$")
"""Names of :func:`write_atomic`'s temporary files and :func:`write_group`'s journals: they
carry the writing process' id, so that a later run knows a dead writer's leftovers."""


def _temporary(dest: Path, suffix: str = ".part") -> tuple[int, Path]:
    """A new hidden temporary file next to ``dest``, named for this process (see :data:`_PART`)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.camlens{os.getpid()}-", suffix=suffix, dir=dest.parent)
    except OSError as exc:
        raise CamlensError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    return fd, Path(name)


def _write_part(dest: Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write`` into a new temporary file next to ``dest``; the file is removed if it fails."""
    fd, tmp = _temporary(dest)
    try:
        os.chmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CamlensError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
        raise
    return tmp


def _place(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move a written temporary file to its name: replacing, or (a hard link) never."""
    try:
        if overwrite:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest)
    except FileExistsError as exc:
        raise CamlensError(f"{dest}: exists; pass overwrite=True to replace it") from exc
    except OSError as exc:
        raise CamlensError(f"{dest}: cannot write ({exc.strerror or exc})") from exc


def write_atomic(dest: Path, write: Callable[[BinaryIO], object], overwrite: bool = False) -> Path:
    """Write a file via a temporary file in the same folder, then move it into place.

    Without ``overwrite`` an existing ``dest`` is never replaced (the move is a hard link, which
    fails if the name exists). A failure or an interruption leaves no partial file behind; a
    killed process' temporary file is removed by the next :func:`clean_leftovers`.

    Raises:
        CamlensError: ``dest`` exists and ``overwrite`` is False, or the write failed.
    """
    return write_group([(dest, write)], overwrite)[0]


def write_group(files: Sequence[tuple[Path, Callable[[BinaryIO], object]]], overwrite: bool = False) -> list[Path]:
    """Write several files as one: all of them appear, or none does.

    Each file is written to a temporary file first (a failing ``write``, e.g. a rendering
    error, or Ctrl-C leaves nothing); then a journal listing the moves is written and the
    files are moved into place. If the process is killed while moving, the next
    :func:`clean_leftovers` finishes the moves from the journal, so a group is never left half
    there. Names that exist are refused up front unless ``overwrite``.

    Raises:
        CamlensError: a name exists and ``overwrite`` is False, or a write failed.
    """
    if not overwrite:
        for dest, _ in files:
            if dest.exists():
                raise CamlensError(f"{dest}: exists; pass overwrite=True to replace it")
    parts: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    journal: Path | None = None
    try:
        for dest, write in files:
            parts.append((_write_part(dest, write), dest))
        if len(parts) > 1:
            moves = [[os.path.relpath(tmp, parts[0][1].parent), os.path.relpath(dest, parts[0][1].parent)]
                     for tmp, dest in parts]
            record = json.dumps({"overwrite": overwrite, "moves": moves}).encode()
            journal = parts[0][1].parent / f".camlens{os.getpid()}-{os.urandom(4).hex()}.journal"
            _place(_write_part(journal, lambda fh: fh.write(record)), journal, True)
        for tmp, dest in parts:
            _place(tmp, dest, overwrite)
            placed.append(dest)
    except BaseException:
        if not overwrite:  # hard links: the names this group made are its own
            for dest in placed:
                dest.unlink(missing_ok=True)
        raise
    finally:
        for tmp, _ in parts:
            tmp.unlink(missing_ok=True)
        if journal is not None:
            journal.unlink(missing_ok=True)
    return [dest for _, dest in parts]


def clean_leftovers(folder: Path) -> int:
    """Finish or remove what killed camlens processes left under ``folder``; return the count.

    A journal of a dead process (see :func:`write_group`) has its moves finished, so that its
    group of files is whole; then its temporary files are removed. Files of live processes
    (another run writing here) are left alone. Temporary files never count as outputs: they are
    hidden and end in ``.part``.
    """
    if not folder.is_dir():
        return 0
    found = [p for p in folder.rglob(".*") if (m := _PART.search(p.name)) and not _alive(int(m[1]))]
    for journal in (p for p in found if p.suffix == ".journal"):
        try:
            record = json.loads(journal.read_text())
            for tmp_name, dest_name in record["moves"]:
                tmp, dest = journal.parent / tmp_name, journal.parent / dest_name
                if tmp.exists() and (record["overwrite"] or not dest.exists()):
                    (os.replace if record["overwrite"] else os.link)(tmp, dest)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable journal was not yet complete: its moves had not started
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def image_writer(dest: Path, image: Image.Image | Callable[[], Image.Image], png_level: int = 6,
                 ) -> Callable[[BinaryIO], None]:
    """A writer for :func:`write_group`: ``image`` (or the one ``image()`` renders, at write
    time) encoded in the format of ``dest``'s suffix (PNG at zlib level ``png_level``, JPEG
    and WebP at quality 95; WebP with libwebp's effort 2 of 6, which was measured twice as fast as
    its default 4 for files 0.4% larger at 640x427).

    Raises:
        CamlensError: the suffix is not an image format.
    """
    fmt = Image.registered_extensions().get(dest.suffix.lower())
    if fmt is None:
        raise CamlensError(f"{dest}: unknown image format {dest.suffix!r}; use .png or .jpg")
    options: dict[str, int] = {"quality": 95} if fmt in {"JPEG", "WEBP"} else {}
    if fmt == "PNG":
        options["compress_level"] = png_level
    if fmt == "WEBP":
        options["method"] = 2

    def write(fh: BinaryIO) -> None:
        img = image() if callable(image) else image
        (img.convert("RGB") if fmt == "JPEG" else img).save(fh, format=fmt, **options)

    return write


def array_writer(arr: np.ndarray) -> Callable[[BinaryIO], None]:
    """A writer for :func:`write_group`: ``arr`` as ``.npy``."""
    return lambda fh: np.save(fh, arr)


def save_image(img: Image.Image, dest: Path, overwrite: bool = False) -> Path:
    """Save a PIL image atomically; format from the suffix (PNG, JPEG, WebP...)."""
    return write_atomic(dest, image_writer(dest, img), overwrite)


def save_array(arr: np.ndarray, dest: Path, overwrite: bool = False) -> Path:
    """Save a NumPy array as ``.npy`` atomically."""
    return write_atomic(dest, array_writer(arr), overwrite)


def safe_part(text: str) -> str:
    """A label, layer or model name as one file-name part: ASCII letters, digits and ``._+-``
    (other runs become ``-``), no leading or trailing dots, never empty."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text.strip()).strip("-.") or "x"


def fit_name(name: str) -> str:
    """``name`` if it fits in :data:`MAX_NAME_BYTES`, else its beginning, ``~``, a hash of the
    whole name and its extension: deterministic, and distinct names stay distinct."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 8:
        stem, ext = name, ""
    tail = f"~{hashlib.sha1(name.encode()).hexdigest()[:12]}{'.' + ext if ext else ''}"
    return stem.encode()[: MAX_NAME_BYTES - len(tail.encode())].decode(errors="ignore") + tail


def output_path(out: Path, name: str) -> Path:
    """Where output ``name`` goes under the folder ``out``.

    ``name`` may hold sub-folders (an input's path relative to its folder); each part is
    shortened by :func:`fit_name`, and the path must stay inside ``out`` (no ``..``, no
    absolute part, no symlinked sub-folder leading out).

    Raises:
        CamlensError: the name would leave ``out``.
    """
    parts = PurePath(name).parts
    if not parts or PurePath(name).is_absolute() or any(p in {".", ".."} for p in parts):
        raise CamlensError(f"{name!r}: output name would leave the output folder {out}")
    path = out.joinpath(*(fit_name(p) for p in parts))
    if not path.resolve().is_relative_to(out.resolve()):
        raise CamlensError(f"{path}: leads outside the output folder {out}")
    return path


def unique_stems(paths: list[Path], root: Path | None = None) -> Iterator[str]:
    """Output name stems for inputs: the file stem, made unique where two inputs share one
    (``a.jpg`` and ``a.png`` -> ``a_jpg`` and ``a_png``); relative sub-folders are kept."""
    def stem(p: Path) -> str:
        rel = p.relative_to(root) if root is not None and p.is_relative_to(root) else Path(p.name)
        return str(rel.with_suffix(""))

    counts: dict[str, int] = {}
    for p in paths:
        counts[stem(p)] = counts.get(stem(p), 0) + 1
    used: dict[str, int] = {}
    for p in paths:
        s = stem(p)
        if counts[s] > 1:
            s = f"{s}_{p.suffix.lstrip('.').lower()}"
        used[s] = used.get(s, 0) + 1
        yield s if used[s] == 1 else f"{s}-{used[s]}"
