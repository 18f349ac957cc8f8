"""Screenshots of the web app's main views for the docs, taken in Debian's Chromium by Playwright
against a real server on the bundled model and the sample photos.

Run: python bench/web_screenshots.py [OUT] [--run DIR]    (OUT default docs/)

Writes web_photo.png and web_gallery.png; with ``--run DIR`` (a ``camlens evaluate`` output
folder) also web_run.png, served with the model that ``DIR/metrics.json`` records. The docs'
one is a run of the digits-canvas benchmark's model (``bash bench/digits_benchmark.sh``) on five
test images of each digit:

    mkdir -p runs/digits-50 && for d in 0 1 2 3 4 5 6 7 8 9; do mkdir -p runs/digits-50/data/$d &&
      cp $(ls runs/digits-benchmark/data/test/$d/*.png | head -5) runs/digits-50/data/$d/; done
    camlens evaluate runs/digits-50/data --boxes runs/digits-benchmark/data/boxes.csv \
      --model runs/digits-benchmark/model.pt --method cam,gradcam,gradcam++,scorecam --out runs/digits-50/eval
    python bench/web_screenshots.py docs --run runs/digits-50/eval
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from camlens.lens import Lens
from camlens.samples import write_samples
from camlens.web.app import Settings, create_app

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(out: Path, run: Path | None) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: no chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_samples(root / "photos")
        for label, photo in (("tabby", photos[0]), ("espresso", photos[1])):
            (root / "pets" / label).mkdir(parents=True)
            shutil.copy(photo, root / "pets" / label / photo.name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        url = start(Settings(root=root), port)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready]")
            page.locator("#methods input[value='gradcam++']").check()
            page.locator("#methods input[value='layercam']").check()
            page.click("#samples button:has-text('chelsea')")
            page.wait_for_function("() => document.querySelectorAll('#grid canvas').length === 3", timeout=120_000)
            page.screenshot(path=str(out / "web_photo.png"), full_page=True)
            page.goto(url + "/gallery?path=pets")
            page.wait_for_selector("body[data-ready]")
            page.click("#run")
            page.wait_for_function("() => document.getElementById('progress').textContent.endsWith('predicted')")
            page.screenshot(path=str(out / "web_gallery.png"), full_page=True)
            if run is not None:
                run_page(browser, run, out / "web_run.png")
            browser.close()
    print(f"wrote {out / 'web_photo.png'}, {out / 'web_gallery.png'}" + (f" and {out / 'web_run.png'}" if run else ""))


def start(settings: Settings, port: int | None = None) -> str:
    """A real uvicorn server for ``settings`` in a thread of this process; its URL."""
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    lens = Lens(settings.model, weights=settings.weights, labels=settings.labels, device="cpu")
    server = uvicorn.Server(uvicorn.Config(create_app(settings, lens), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def run_page(browser, run: Path, out: Path) -> None:  # type: ignore[no-untyped-def]
    """The run page served with the run's model: methods ranked by MaxBoxAccV2, images by
    Grad-CAM's IoU (worst first), the first one opened."""
    source = json.loads((run / "metrics.json").read_text())["source"]
    root = Path(os.path.commonpath([run.resolve(), source["data"]]))
    weights, labels = (Path(source[k]) if source[k] else None for k in ("weights", "labels"))
    url = start(Settings(model=source["model"], weights=weights, labels=labels, root=root))
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(f"{url}/run?path={run.resolve().relative_to(root).as_posix()}")
    page.wait_for_selector("body[data-ready]")
    page.click("#scores th[data-key=maxboxacc_v2]")
    page.select_option("#method", "gradcam")
    page.select_option("#sort", "iou")
    page.select_option("#order", "worst")
    page.wait_for_timeout(500)
    page.click("#rows tbody tr")
    page.wait_for_function("() => document.getElementById('detailnote').textContent.includes('true boxes green')",
                           timeout=120_000)
    page.screenshot(path=str(out), full_page=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("docs"))
    parser.add_argument("--run", type=Path, help="a camlens evaluate output folder, for web_run.png")
    options = parser.parse_args()
    main(options.out, options.run)
