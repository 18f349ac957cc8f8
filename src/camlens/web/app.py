"""The web app: REST API under ``/api/`` and the pages that use it, over one :class:`Lens`.

Every request runs on the one loaded model; the PyTorch adapter's hooks act only for the thread
that placed them, so concurrent requests (FastAPI runs them on a thread pool) never see each
other's captures. camlens errors become a 4xx with a one-line JSON ``{"error": ...}``; anything
else a 500 whose ``id`` the server log also shows, with the traceback.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from camlens.errors import CamlensError, ImageError, ImageTooLarge, LayerError, MethodError, ModelError, TargetError
from camlens.imageio import IMAGE_SUFFIXES, decode_image, find_images, safe_part
from camlens.lens import Explanation, Lens
from camlens.models.record import model_spec
from camlens.models.registry import DEFAULT_MODEL
from camlens.web.runs import PICTURES, RunError, Runs, page, source_of, summary

LOG = logging.getLogger("camlens.web")
STATIC = Path(__file__).with_name("static")


class NotFound(CamlensError):
    """Something asked for by name that the server does not have (a sample, a colormap)."""


class PathError(NotFound):
    """A path that is not an image under the served root (outside it, missing, or no root)."""


class TooLarge(CamlensError):
    """An upload, a file or a request for more maps than the server accepts."""


STATUS: list[tuple[type[CamlensError], int]] = [
    (ImageTooLarge, 413), (TooLarge, 413), (ImageError, 415), (NotFound, 404), (RunError, 422),
    (TargetError, 422), (LayerError, 422), (MethodError, 422), (ModelError, 422), (CamlensError, 400),
]

MAX_MAPS = 32
"""The most maps (targets x methods x layers) one request may ask for."""
LOCAL = ("127.0.0.1", "localhost", "::1", "[::1]")
"""HTTP status per camlens error class, most specific first."""


@dataclass(frozen=True)
class Settings:
    """What ``camlens serve`` was started with.

    Args:
        model, weights, labels, device: the model, as for :class:`camlens.Lens`.
        root: the folder whose images may be opened by path (``None``: uploads only).
        max_upload: the largest upload accepted, in bytes.
        max_pixels: the most pixels an image may have; larger ones are refused from their
            header, never decoded.
        host: the address served: on a local one, only requests naming a local host (and, for
            a POST from a page, a local origin) are answered, which DNS rebinding cannot fake.
        workers: how many requests decode and run the model at once (memory stays bounded).
    """

    model: str = DEFAULT_MODEL
    weights: Path | None = None
    labels: Path | None = None
    device: str = "cpu"
    root: Path | None = None
    max_upload: int = 20 * 2**20
    max_pixels: int = 40_000_000
    host: str = "127.0.0.1"
    workers: int = 2


def create_app(settings: Settings, lens: Lens | None = None) -> FastAPI:
    """The app for ``settings``; ``lens`` (already loaded) is used instead of loading the model."""
    lens = lens or Lens(settings.model, weights=settings.weights, labels=settings.labels, device=settings.device)
    root = settings.root.resolve() if settings.root is not None else None
    app = FastAPI(title="camlens", summary="Where an image classifier looks: class activation maps over a REST API.")
    app.state.lens, app.state.settings = lens, settings
    busy = threading.BoundedSemaphore(settings.workers)
    local = settings.host in LOCAL
    runs = Runs()
    served_spec = model_spec(settings.model, settings.weights, settings.labels)
    class_index = {name: i for i, name in enumerate(lens.labels.names)}

    @app.exception_handler(CamlensError)
    async def _camlens_error(request: Request, exc: CamlensError) -> JSONResponse:
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        return JSONResponse({"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ident = uuid.uuid4().hex[:12]
        LOG.error("request %s %s failed (id %s)", request.method, request.url.path, ident, exc_info=exc)
        return JSONResponse({"error": f"internal error (id {ident}: the server log has its traceback)", "id": ident},
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}".splitlines()[0]}, status_code=422)

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        def refuse(status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": message}, status_code=status)

        if local and _host_name(request.headers.get("host", "")) not in LOCAL:
            return refuse(400, "this server answers only requests to a local address (127.0.0.1, localhost)")
        origin = request.headers.get("origin")
        if local and origin and _host_name(urlsplit(origin).netloc) not in LOCAL:
            return refuse(403, f"requests from pages of {origin} are refused")
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return refuse(411, "a POST needs a Content-Length (uploads are capped by size)")
            if int(length) > settings.max_upload + 64 * 1024:
                return refuse(413, f"upload of {int(length)} bytes is over the {settings.max_upload} bytes "
                                   "this server accepts")
        return await call_next(request)

    def image_of(upload: UploadFile | None, path: str | None) -> tuple[Image.Image, str]:
        if (upload is None) == (path is None):
            raise CamlensError("give one image: an upload (image=) or a path under the root (path=)")
        if upload is not None:
            data = upload.file.read(settings.max_upload + 1)
            if len(data) > settings.max_upload:
                raise TooLarge(f"{upload.filename or 'upload'}: over the {settings.max_upload} bytes this server accepts")
            name = upload.filename or "upload"
            return decode_image(data, name, settings.max_pixels), name
        file = confined(root, path or "")
        try:  # non-blocking: a FIFO named like an image must not hold a worker
            with os.fdopen(os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise PathError(f"{path}: not a regular file")
                if info.st_size > settings.max_upload:
                    raise TooLarge(f"{path}: {info.st_size} bytes, over the {settings.max_upload} bytes this server reads")
                data = handle.read(settings.max_upload + 1)
        except OSError as exc:
            raise PathError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
        return decode_image(data, path or "", settings.max_pixels), path or ""

    def allowed(method: str, layer: str | None, target: str | None) -> None:
        """Refuse targets that read files (``similar-to:``) and requests for more than
        :data:`MAX_MAPS` maps."""
        text = (target or "").strip().lower()
        if text.startswith("similar-to"):
            raise TargetError("similar-to: targets read a file: not available in the web app")
        if text == "all":
            raise TooLarge(f"target 'all' asks for one map per class; the web app makes at most {MAX_MAPS} per request")
        targets = int(text[4:]) if text.startswith("top-") and text[4:].isdigit() else max(1, text.count(",") + 1)
        count = targets * max(1, len([m for m in method.split(",") if m.strip()])) * max(1, len((layer or "x").split(",")))
        if count > MAX_MAPS:
            raise TooLarge(f"{count} maps asked (targets x methods x layers); the web app makes at most {MAX_MAPS} per request")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """The server is up: its model, classes and root."""
        return {"status": "ok", "model": lens.loaded.name, "classes": len(lens.labels), "root": root.name if root else None}

    @app.get("/api/methods")
    def methods() -> list[dict[str, Any]]:
        """Every method: name, aliases, settings, title, paper, needs, cost, formula."""
        from camlens.core.methods import method_table

        return method_table()

    @app.get("/api/classes")
    def classes(q: str = "", limit: Annotated[int, Query(ge=1, le=5000)] = 20) -> list[dict[str, Any]]:
        """Classes whose name contains ``q`` (every class when empty), at most ``limit``."""
        found = lens.labels.search(q) if q.strip() else list(enumerate(lens.labels.names))
        return [{"index": i, "label": name} for i, name in found[:limit]]

    @app.get("/api/layers")
    def layers() -> dict[str, Any]:
        """Candidate target layers in forward order (those with a spatial layout) and the automatic choice."""
        rows, chosen = lens.backend.layers(lens.loaded)
        return {"default": chosen, "layers": [{"name": name, "type": kind, "shape": list(shape) if shape else None,
                                               "layout": str(layout)} for name, kind, shape, layout in rows if layout]}

    @app.get("/api/colormap/{name}")
    def colormap(name: str) -> dict[str, Any]:
        """A matplotlib colormap as 256 RGB rows, for colouring raw maps in the browser."""
        import matplotlib

        try:
            cmap = matplotlib.colormaps[name]
        except KeyError:
            raise NotFound(f"unknown colormap {name!r}") from None
        lut = (cmap(np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
        return {"name": name, "lut": lut.tolist()}

    @app.get("/api/samples")
    def samples() -> list[str]:
        """The sample photos' names (scikit-image's, offline)."""
        from camlens.samples import SAMPLES

        return list(SAMPLES)

    @app.get("/api/samples/{name}", response_class=Response)
    def sample(name: str) -> Response:
        """A sample photo as PNG."""
        from camlens.samples import SAMPLES, sample_image

        if name not in SAMPLES:
            raise NotFound(f"no sample photo {name!r}; the samples are {', '.join(SAMPLES)}")
        return Response(png(sample_image(name)), media_type="image/png")

    @app.get("/api/files")
    def files(path: str = "", recursive: bool = False) -> dict[str, Any]:
        """A folder under the root: its sub-folders and images (paths relative to the root;
        ``recursive``: the images of every sub-folder too)."""
        folder = confined(root, path, folder=True)
        assert root is not None
        try:
            subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and inside(root, p))
            images = [rel(root, p) for p in find_images(folder, recursive) if inside(root, p)]
        except OSError as exc:
            raise PathError(f"{path}: cannot be listed ({exc.strerror or type(exc).__name__})") from None
        return {"path": rel(root, folder), "folders": [rel(root, p) for p in subfolders], "images": images,
                "run": (folder / "metrics.json").is_file()}

    @app.get("/api/image", response_class=Response)
    def image(path: str, size: Annotated[int, Query(ge=16, le=4096)] = 256) -> Response:
        """An image under the root, as a PNG at most ``size`` pixels on its longer side."""
        with busy:
            picture, _ = image_of(None, path)
        picture.thumbnail((size, size))
        return Response(png(picture), media_type="image/png")

    @app.post("/api/predict")
    def predict(image: Annotated[UploadFile | None, File()] = None, path: Annotated[str | None, Form()] = None,
                top: Annotated[int, Form(ge=1, le=1000)] = 5) -> dict[str, Any]:
        """The top classes of an uploaded image, or of one under the root."""
        with busy:
            picture, name = image_of(image, path)
            preds = lens.predict([picture], top=top)[0]
        return {"image": name, "width": picture.width, "height": picture.height, "predictions": [p.to_dict() for p in preds]}

    @app.post("/api/explain", response_model=None)
    def explain(image: Annotated[UploadFile | None, File()] = None, path: Annotated[str | None, Form()] = None,
                method: Annotated[str, Form()] = "gradcam", layer: Annotated[str | None, Form()] = None,
                target: Annotated[str | None, Form()] = None, top: Annotated[int, Form(ge=1, le=1000)] = 5,
                output: Annotated[str, Form(pattern="^(json|png|npy)$")] = "json",
                colormap: Annotated[str, Form()] = "jet", alpha: Annotated[float, Form(ge=0, le=1)] = 0.5,
                ) -> dict[str, Any] | Response:
        """Maps of an image for methods (comma-separated), layers (comma-separated; default the
        automatic one) and a target (a class index or name, ``top-3``...; default the top class).

        ``output``: ``json`` (every map as a grayscale PNG of the min-max scaled map at the
        image's size, coloured in the browser), ``png`` (the first map's overlay) or ``npy``
        (the first map's raw float32 values at the layer's resolution)."""
        allowed(method, layer, target)
        with busy:
            picture, name = image_of(image, path)
            layers_asked = [part.strip() for part in layer.split(",") if part.strip()] if layer else None
            found = lens.explain([picture], method, layers_asked, target, top=top)[0]
            first, stem = found[0], file_stem(name, found[0])
            if output == "png":
                return Response(png(first.overlay(colormap, alpha)), media_type="image/png",
                                headers={"Content-Disposition": f'inline; filename="{stem}.png"'})
            if output == "npy":
                buffer = io.BytesIO()
                np.save(buffer, first.raw.astype(np.float32))
                return Response(buffer.getvalue(), media_type="application/octet-stream",
                                headers={"Content-Disposition": f'attachment; filename="{stem}.npy"'})
            return {"image": name, "width": picture.width, "height": picture.height,
                    "predictions": [p.to_dict() for p in first.predictions],
                    "explanations": [{**described(e), "file": file_stem(name, e)} for e in found]}

    def run_folder(path: str) -> Path:
        """An evaluate run's folder under the root, none of its files a link out of the root."""
        folder = confined(root, path, folder=True)
        assert root is not None
        for name in ("metrics.json", "per_image.csv", "report.md", *PICTURES):
            if (folder / name).is_symlink() and not inside(root, folder / name):
                raise PathError(f"{path}/{name}: a link out of the root")
        return folder

    def image_under_root(raw: str, source: dict[str, Any]) -> str | None:
        """A run's image as a path under the root (relative paths are the evaluating
        process's, in ``source["cwd"]``), or None when it is not there."""
        assert root is not None
        where = Path(raw)
        if not where.is_absolute():
            where = Path(str(source.get("cwd") or root)) / where
        return rel(root, where) if where.suffix.lower() in IMAGE_SUFFIXES and inside(root, where) else None

    @app.get("/api/run")
    def run(path: str) -> dict[str, Any]:
        """A ``camlens evaluate`` output folder under the root: its scores, protocol and table
        columns; ``model`` names the run's model, and ``same_model`` says whether the served
        model is it (then the page shows each image's maps with the run's layer)."""
        info = summary(run_folder(path), path)
        source = info.pop("source")
        named = {k: source.get(k) for k in served_spec}
        info["model"] = ", ".join(Path(v).name if k != "model" or Path(v).is_absolute() else v
                                  for k, v in named.items() if v) or None
        info["same_model"] = bool(source) and named == served_spec
        return info

    @app.get("/api/run/rows")
    def run_rows(path: str, sort: str = "", method: str | None = None,
                 descending: bool = False, show: str = "all", q: str = "",
                 offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 ) -> dict[str, Any]:
        """The run's images, one row each with every method's scores and boxes: those ``show``
        picks (all, correct or wrong top-1) and matching ``q``, sorted by ``sort`` (a score is
        ``method``'s), ``limit`` from ``offset``; ``path`` of a row is its image under the root,
        ``target`` its true class's index in the served model (else its predicted class's)."""
        folder = run_folder(path)
        source = source_of(folder, path)
        total, rows = page(runs.rows(folder, path), sort=sort, method=method, descending=descending, show=show,
                           query=q, offset=offset, limit=limit)
        return {"total": total, "offset": offset,
                "rows": [{**r.to_dict(), "image": under or Path(r.image).name, "path": under,
                          "target": class_index.get(r.label, class_index.get(r.predicted))}
                         for r, under in ((r, image_under_root(r.image, source)) for r in rows)]}

    @app.get("/api/run/picture", response_class=FileResponse)
    def run_picture(path: str, name: str) -> FileResponse:
        """One of the run's pictures (``curves.png``: mean deletion/insertion curves,
        ``examples.png``)."""
        if name not in PICTURES:
            raise NotFound(f"name: {name!r} is not one of {', '.join(PICTURES)}")
        file = run_folder(path) / name
        if not file.is_file():
            raise NotFound(f"{path}: has no {name}")
        return FileResponse(file, media_type="image/png")

    @app.get("/", response_class=FileResponse)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/gallery", response_class=FileResponse)
    def gallery() -> FileResponse:
        return FileResponse(STATIC / "gallery.html")

    @app.get("/run", response_class=FileResponse)
    def run_page() -> FileResponse:
        return FileResponse(STATIC / "run.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def file_stem(image: str, exp: Explanation) -> str:
    """The file name (no suffix) for a map, as ``camlens explain`` names it: image, method, layer, target."""
    return "_".join(safe_part(part) for part in (Path(image).stem, exp.method, exp.layer)) + f"_{exp.tag}"


def described(exp: Explanation) -> dict[str, Any]:
    """An explanation as JSON, its map a base64 grayscale PNG (0..255 for the scaled map)."""
    gray = Image.fromarray((np.clip(exp.heatmap, 0, 1) * 255).round().astype(np.uint8), mode="L")
    return {**exp.to_dict(), "title": exp.title, "raw_shape": list(exp.raw.shape),
            "map": base64.b64encode(png(gray)).decode("ascii")}


def _host_name(netloc: str) -> str:
    """The host of a ``Host`` header or an origin's netloc, without its port."""
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def inside(root: Path, path: Path) -> bool:
    """``path``, with every symlink resolved, is ``root`` or under it."""
    try:
        return path.resolve(strict=True).is_relative_to(root)
    except (OSError, RuntimeError):
        return False


def rel(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root).as_posix() if path.resolve() != root else ""


def confined(root: Path | None, path: str, folder: bool = False) -> Path:
    """``path`` (relative, ``/``-separated) as a file (or ``folder``) under ``root``, every
    symlink resolved: absolute paths, ``..`` and links out of the root are refused."""
    if root is None:
        raise PathError("this server has no --root: open images by upload")
    parts = Path(path).parts
    if Path(path).is_absolute() or ".." in parts or "\\" in path or "\x00" in path:
        raise PathError(f"{path}: not a path under the root (relative, no '..')")
    target = root.joinpath(*parts)
    if not inside(root, target):
        raise PathError(f"{path}: no such {'folder' if folder else 'image'} under the root")
    if folder != target.is_dir() or (not folder and target.suffix.lower() not in IMAGE_SUFFIXES):
        raise PathError(f"{path}: not {'a folder' if folder else 'an image file'} under the root")
    return target.resolve()
