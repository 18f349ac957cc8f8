"""Screenshots of the web app's main views for the docs, taken in Debian's Chromium by Playwright
against a real server on the bundled model and the sample photos.

Run: python bench/web_screenshots.py [OUT]    (default docs/; writes web_photo.png, web_gallery.png)
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from camlens.explain import Lens
from camlens.samples import write_samples
from camlens.web.app import Settings, create_app

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(out: Path) -> None:
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
        server = uvicorn.Server(uvicorn.Config(create_app(Settings(root=root), Lens(device="cpu")), host="127.0.0.1",
                                               port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
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
            browser.close()
        server.should_exit = True
    print(f"wrote {out / 'web_photo.png'} and {out / 'web_gallery.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs"))
