"""The web app in a real browser: Playwright driving Debian's Chromium against a real uvicorn
server (Playwright's own browser download does not work offline; ``.ci/run`` installs Chromium
and sets ``CAMLENS_BROWSER_REQUIRED=1``, so there a missing browser fails instead of skipping)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CAMLENS_BROWSER_REQUIRED") == "1":
        raise RuntimeError("CAMLENS_BROWSER_REQUIRED=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lens) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import uvicorn

    from camlens.samples import write_samples
    from camlens.web.app import Settings, create_app
    from tests.test_web_runs import make_run

    root = tmp_path_factory.mktemp("browser_root")
    write_samples(root / "photos")
    make_run(root, lens)  # pets/tabby/chelsea.png, pets/espresso/coffee.png (right / wrong) and their run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(Settings(root=root, max_pixels=30_000_000), lens)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready]")  # every control is wired
    yield page
    context.close()


def _drop(page, data: bytes, name: str, kind: str = "image/png") -> None:  # type: ignore[no-untyped-def]
    """Drop a file on the drop zone as a person would (a DataTransfer with one File)."""
    page.evaluate("""([bytes, name, kind]) => {
        const file = new File([new Uint8Array(bytes)], name, { type: kind });
        const transfer = new DataTransfer();
        transfer.items.add(file);
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
    }""", [list(data), name, kind])


def _pixels(page) -> list[int]:  # type: ignore[no-untyped-def]
    return page.evaluate("""() => {
        const c = document.querySelector("#grid canvas");
        return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 97 === 0));
    }""")


def test_drop_a_photo_click_a_class_recolour_without_a_request(page, samples_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _drop(page, (samples_dir / "chelsea.png").read_bytes(), "chelsea.png")
    page.wait_for_selector("#predrows tr:nth-child(5)")
    rows = page.locator("#predrows tr")
    assert rows.count() == 5 and "Egyptian cat" in rows.nth(0).inner_text()
    page.wait_for_selector("#grid canvas")
    assert "Egyptian cat" in page.inner_text("#resulttitle")
    first = _pixels(page)
    third = rows.nth(2).get_attribute("data-index")
    with page.expect_response(lambda r: r.url.endswith("/api/explain")):
        rows.nth(2).click()
    page.wait_for_function("() => !document.getElementById('resulttitle').textContent.includes('Egyptian')")
    second = _pixels(page)
    assert second != first
    expected = f"camlens explain chelsea.png --method gradcam --target {third} --colormap jet --alpha 0.5"
    assert page.inner_text("#command") == expected
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.locator("#alpha").fill("0.9")
    page.wait_for_function("() => document.getElementById('command').textContent.endsWith('--alpha 0.9')")
    assert _pixels(page) != second and requests == []  # recoloured in the browser, no request


def test_a_sample_is_one_click_and_methods_fill_a_grid(page) -> None:  # type: ignore[no-untyped-def]
    page.locator("#methods input[value='gradcam++']").check()
    page.click("#samples button:has-text('coffee')")
    page.wait_for_function("() => document.querySelectorAll('#grid canvas').length === 2")
    captions = page.locator("#grid figcaption").all_inner_texts()
    assert any("gradcam @ bn2: espresso" in c for c in captions) and any("gradcam++ @ bn2" in c for c in captions)


@pytest.mark.parametrize(("data", "name", "message"), [
    (b"plain text, not a picture", "notes.png", "notes.png: not an image"),
])
def test_a_bad_file_shows_its_one_line_error(page, data: bytes, name: str, message: str) -> None:  # type: ignore[no-untyped-def]
    _drop(page, data, name)
    page.wait_for_selector("#error:not([hidden])")
    assert message in page.inner_text("#error")


def test_a_file_name_is_shown_as_text_never_run(page, samples_dir: Path) -> None:  # type: ignore[no-untyped-def]
    name = "<img src=x onerror=window.pwned=1>.png"
    _drop(page, (samples_dir / "rocket.png").read_bytes(), name)
    page.wait_for_selector("#grid canvas")
    assert page.evaluate("() => window.pwned === undefined") and page.locator("#grid img").count() == 0
    assert name in page.inner_text("#command")


def test_an_oversize_image_and_a_path_outside_the_root_are_refused(page, server: str) -> None:  # type: ignore[no-untyped-def]
    from tests.test_web import _huge_png

    _drop(page, _huge_png(8000, 5000), "wide.png")
    page.wait_for_selector("#error:not([hidden])")
    assert "wide.png: 8000x5000 is 40.0 MP" in page.inner_text("#error")
    page.goto(server + "/?path=../../etc/passwd")
    page.wait_for_selector("#error:not([hidden])")
    assert "not a path under the root" in page.inner_text("#error")


def _gallery(browser, server: str, path: str):  # type: ignore[no-untyped-def]
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(f"{server}/gallery?path={path}")
    page.wait_for_selector("body[data-ready]")
    return page


def test_a_folder_gallery_predicts_filters_and_opens_a_photo(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page = _gallery(browser, server, "pets")
    assert page.locator("#thumbs figure").count() == 2 and not page.locator("#truthfilter").is_hidden()
    page.click("#run")
    page.wait_for_function("() => document.getElementById('progress').textContent === '2 / 2 predicted'")
    captions = page.locator("#thumbs figcaption").all_inner_texts()
    assert captions[0].startswith("espresso") and captions[1].startswith("Egyptian cat")
    page.select_option("#bytruth", "wrong")
    assert [f.is_visible() for f in page.locator("#thumbs figure").all()] == [False, True]
    page.select_option("#bytruth", "correct")
    assert [f.is_visible() for f in page.locator("#thumbs figure").all()] == [True, False]
    page.select_option("#bytruth", "")
    page.select_option("#byclass", "Egyptian cat")
    assert page.inner_text("#count") == "1 of 2 images"
    page.click("#thumbs figure:visible a")
    page.wait_for_selector("#predrows tr")
    assert page.url.endswith("/?path=pets%2Ftabby%2Fchelsea.png") and "Egyptian cat" in page.inner_text("#predrows")
    page.context.close()


def test_a_long_folder_run_can_be_cancelled(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page = _gallery(browser, server, "photos")
    page.route("**/api/predict", lambda route: None)  # the first prediction never answers
    page.click("#run")
    page.wait_for_function("() => !document.getElementById('cancel').disabled")
    page.click("#cancel")
    page.wait_for_function("() => document.getElementById('progress').textContent.startsWith('cancelled')")
    assert page.inner_text("#progress") == "cancelled at 0 / 4" and page.is_enabled("#run")
    page.context.close()


def test_a_gallery_outside_the_root_shows_its_error(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page = _gallery(browser, server, "../..")
    assert "not a path under the root" in page.inner_text("#error")
    page.context.close()


def test_boxes_from_the_map_follow_the_threshold_in_the_browser(page, samples_dir: Path, lens) -> None:  # type: ignore[no-untyped-def]
    """The box drawn at a threshold is the library's (largest 8-connected region of the scaled
    map above it), within the map's 8-bit quantisation: at most 2 px apart."""
    from camlens.evaluation.boxes import boxes_from_map
    from camlens.imageio import read_image

    _drop(page, (samples_dir / "coffee.png").read_bytes(), "coffee.png")
    page.wait_for_selector("#grid canvas")
    assert page.get_attribute("#grid canvas", "data-box") == ""  # off by default
    heatmap = lens.explain([read_image(samples_dir / "coffee.png")], "gradcam")[0][0].heatmap
    for threshold in ("0.2", "0.6"):
        page.locator("#boxt").fill(threshold)
        page.wait_for_function(f"() => document.getElementById('boxtv').textContent === '{float(threshold):.2f}'")
        drawn = [int(v) for v in page.get_attribute("#grid canvas", "data-box").split(",")]
        box = boxes_from_map(heatmap, float(threshold))[0]
        assert max(abs(a - b) for a, b in zip(drawn, (box.xmin, box.ymin, box.xmax, box.ymax), strict=True)) <= 2, (drawn, box)


def test_an_evaluate_run_ranks_methods_sorts_images_and_shows_maps_and_boxes(browser, server: str) -> None:  # type: ignore[no-untyped-def]
    page = _gallery(browser, server, "runs/pets")
    page.click("#runlink")
    page.wait_for_selector("body[data-ready]")
    page.wait_for_function("() => document.querySelectorAll('#rows tbody tr').length === 2")
    run = page.evaluate("async () => (await fetch('/api/run?path=runs/pets')).json()")
    assert page.inner_text("#title") == "pets" and "2 images, classification accuracy 50.0%" in page.inner_text("#about")
    page.click("#scores th[data-key=deletion_auc]")  # lower is better: ranked up
    ranked = [tr.get_attribute("data-method") for tr in page.locator("#scores tbody tr").all()]
    assert ranked == sorted(run["methods"], key=lambda m: run["scores"][m]["deletion_auc"])
    page.click("#scores th[data-key=insertion_auc]")  # higher is better: ranked down
    ranked = [tr.get_attribute("data-method") for tr in page.locator("#scores tbody tr").all()]
    assert ranked == sorted(run["methods"], key=lambda m: -run["scores"][m]["insertion_auc"])
    assert page.evaluate("() => [...document.querySelectorAll('#pictures img')].map((i) => i.naturalWidth > 0)") == [True] * 2
    page.select_option("#sort", "probability")
    page.select_option("#order", "worst")
    page.wait_for_function("() => document.querySelector('#rows tbody tr').dataset.image === 'pets/tabby/chelsea.png'")
    page.select_option("#show", "correct")
    page.wait_for_function("() => document.querySelectorAll('#rows tbody tr').length === 1")
    assert page.get_attribute("#rows tbody tr", "data-image") == "pets/espresso/coffee.png"
    assert page.inner_text("#range") == "1-1 of 1 images"
    row = page.evaluate("async () => (await fetch('/api/run/rows?path=runs/pets&show=correct')).json()")["rows"][0]
    page.click("#rows tbody tr")
    page.wait_for_function("() => document.getElementById('detailnote').textContent.includes('true boxes green')")
    assert page.locator("#views canvas").count() == 3
    assert page.get_attribute("#views canvas[data-method=gradcam]", "data-box") == ",".join(
        f"{v:g}" for v in row["boxes"]["gradcam"])
    plain, coloured = (page.evaluate(f"""() => {{
        const c = document.querySelector("#views canvas[data-method='{m}']");
        return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 101 === 0));
    }}""") for m in ("", "gradcam"))
    assert plain != coloured  # the map is drawn over the photo
    page.context.close()
