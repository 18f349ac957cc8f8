"""Turning maps into pictures: colormapped heatmaps, overlays, panels, feature-map and class grids, boxes."""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from PIL import Image

from camlens.arguments import number
from camlens.core.maps import normalize, upsample
from camlens.errors import CamlensError

if TYPE_CHECKING:
    from camlens.evaluation.boxes import Box

matplotlib.use("Agg")


def colormap_names() -> list[str]:
    """All matplotlib colormap names."""
    return sorted(matplotlib.colormaps)


def check_colormap(name: str) -> str:
    """Return ``name`` if matplotlib knows it; otherwise raise with the closest names."""
    if not isinstance(name, str):
        raise CamlensError(f"colormap must be a matplotlib colormap name, not {type(name).__name__}")
    if name in matplotlib.colormaps:
        return name
    close = difflib.get_close_matches(name, colormap_names(), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else " (e.g. jet, viridis, inferno, hot, turbo)"
    raise CamlensError(f"unknown colormap {name!r}{hint}")


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` if it is an opacity in [0, 1]; otherwise raise."""
    return number(alpha, "alpha", 0.0, 1.0)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> Image.Image:
    """RGB image of a ``(H, W)`` map in [0, 1] through a matplotlib colormap."""
    cmap = matplotlib.colormaps[check_colormap(colormap)]
    lut = (cmap(np.arange(cmap.N))[:, :3] * 255.0 + 0.5).astype(np.uint8)  # the colormap's own N colours
    index = np.empty(heatmap.shape, dtype=np.uint16)  # matplotlib's binning: floor(x N), 1.0 in the last bin
    np.multiply(np.clip(heatmap, 0.0, 1.0), cmap.N, out=index, casting="unsafe")
    np.minimum(index, cmap.N - 1, out=index)
    return Image.fromarray(lut[index])  # uint8 all the way: no float RGBA copy of a large image


def overlay(image: Image.Image, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Blend a colormapped ``heatmap`` (same size as ``image``, values in [0, 1]) over the
    image: ``(1 - alpha) * image + alpha * colour``."""
    check_alpha(alpha)
    heatmap = np.asarray(heatmap)
    if heatmap.shape != (image.height, image.width):
        raise CamlensError(f"heatmap {heatmap.shape} does not match image {(image.height, image.width)}")
    return Image.blend(image.convert("RGB"), colorize(heatmap, colormap), alpha)


def panel(
    image: Image.Image, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5, title: str = ""
) -> Image.Image:
    """Three views side by side: original | heatmap | overlay, with an optional title."""
    from matplotlib.figure import Figure

    aspect = image.width / image.height
    drawn = (math.ceil(2 * 320 * aspect), 2 * 320)  # twice each view's size on the figure: no gigapixel float copies
    if image.width > drawn[0] or image.height > drawn[1]:
        image = image.copy()
        image.thumbnail(drawn, Image.Resampling.LANCZOS)
        heatmap = np.clip(upsample(heatmap, (image.height, image.width)), 0.0, 1.0)
    fig = Figure(figsize=(3 * 3.2 * aspect + 0.4, 3.2 + (0.5 if title else 0.1)), dpi=100)
    axes = fig.subplots(1, 3)
    views = [(image, "image"), (colorize(heatmap, colormap), "heatmap"), (overlay(image, heatmap, colormap, alpha), "overlay")]
    for ax, (view, name) in zip(axes, views, strict=True):
        ax.imshow(view)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return figure_to_image(fig)


def feature_grid(activations: np.ndarray, count: int = 16, colormap: str = "viridis", title: str = "") -> Image.Image:
    """Grid of the first ``count`` channels of one sample's ``(C, h, w)`` activations, each
    min-max normalised on its own and labelled with its channel index."""
    from matplotlib.figure import Figure

    check_colormap(colormap)
    if activations.ndim != 3:
        raise CamlensError(f"expected (C, h, w) activations, got shape {activations.shape}")
    n = max(1, min(count, activations.shape[0]))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + (0.4 if title else 0.0)), dpi=100)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    maps = normalize(activations[:n])
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < n:
            ax.imshow(maps[i], cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"#{i}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_to_image(fig)


def figure_to_image(fig: object) -> Image.Image:
    """Render a matplotlib figure (drawn off-screen, Agg) to an RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # type: ignore[arg-type]
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def draw_boxes(image: Image.Image, boxes: list[Box], colour: tuple[int, int, int], width: int = 0) -> Image.Image:
    """A copy of ``image`` with box outlines (pixel-edge coordinates) drawn in ``colour``; the
    line width defaults to about 1/150 of the image's larger side."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    line = width or max(1, round(max(image.size) / 150))
    for b in boxes:
        draw.rectangle([b.xmin, b.ymin, b.xmax - 1, b.ymax - 1], outline=colour, width=line)
    return out


def mark(image: Image.Image, region: np.ndarray | None = None, box: tuple[float, float, float, float] | None = None,
         colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A copy of ``image`` with what a target explained outlined: a region's ``(H, W)`` bool
    mask (its boundary pixels) and/or a box (x0, y0, x1, y1)."""
    from PIL import ImageDraw
    from scipy import ndimage

    out = image.convert("RGB")
    line = max(1, round(max(image.size) / 150))
    if region is not None and region.any():
        edge = region & ~ndimage.binary_erosion(region, iterations=line, border_value=0)
        pixels = np.asarray(out).copy()
        pixels[edge] = colour
        out = Image.fromarray(pixels)
    if box is not None and all(np.isfinite(box)):
        ImageDraw.Draw(out).rectangle([box[0], box[1], max(box[2] - 1, box[0]), max(box[3] - 1, box[1])], outline=colour,
                                      width=line)
    return out


def class_grid(
    image: Image.Image,
    maps: np.ndarray,
    labels: list[str],
    probabilities: np.ndarray,
    colormap: str = "jet",
    alpha: float = 0.5,
    cell: int = 96,
) -> Image.Image:
    """Every class's map of one image as a grid of small overlays, best class first.

    Args:
        maps: ``(classes, h, w)`` raw maps (each min-max scaled on its own for display).
        labels: one name per class; probabilities: ``(classes,)``, which orders the cells.

    Each cell is the image at ``cell`` pixels on its longer side with the map blended over it,
    captioned ``rank. label p%``; PIL only, so a thousand cells take well under a second.
    """
    from PIL import ImageDraw

    check_alpha(alpha)
    maps, probabilities = np.asarray(maps), np.asarray(probabilities)
    if maps.ndim != 3 or len(labels) != maps.shape[0] or probabilities.shape != (maps.shape[0],):
        raise CamlensError(f"expected (classes, h, w) maps with one label and probability each, got {maps.shape}")
    scale = cell / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    thumb = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    order = np.argsort(-probabilities, kind="stable")
    cols = math.ceil(math.sqrt(len(order)))
    rows = math.ceil(len(order) / cols)
    caption = 12
    sheet = Image.new("RGB", (cols * w, rows * (h + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    heat = normalize(upsample(maps[order], (h, w)))
    for rank, (c, m) in enumerate(zip(order, heat, strict=True)):
        x, y = (rank % cols) * w, (rank // cols) * (h + caption)
        sheet.paste(Image.blend(thumb, colorize(m, colormap), alpha), (x, y))
        draw.text((x + 2, y + h), f"{rank + 1}. {labels[c][: max(4, w // 6)]} {probabilities[c]:.0%}", fill=(0, 0, 0))
    return sheet
