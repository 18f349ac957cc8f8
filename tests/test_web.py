"""``camlens serve``'s REST API through FastAPI's test client: every endpoint, every error path,
maps equal to the library's, concurrent requests on one model; and a real server started by
the CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from camlens.web.app import Settings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from camlens.samples import write_samples

    folder = tmp_path_factory.mktemp("served")
    write_samples(folder / "photos")
    (folder / "photos" / "notes.txt").write_text("not an image")
    (folder / "photos" / "cats").mkdir()
    os.mkfifo(folder / "photos" / "pipe.png")
    (folder / "photos" / "big.png").write_bytes(b"\0" * 2_100_000)
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (folder / "photos" / "link.png").symlink_to(outside / "secret.png")
    (folder / "away").symlink_to(outside, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def client(root: Path, lens) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(create_app(Settings(root=root, max_upload=2_000_000, max_pixels=30_000_000), lens),
                      base_url="http://127.0.0.1:8000", raise_server_exceptions=False)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _map(entry: dict[str, object]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(str(entry["map"])))))


def test_listings(client: TestClient) -> None:
    from camlens.core.methods import method_classes

    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["model"] == "efficientnet_lite0" and health["classes"] == 1000
    assert health["root"] == "served0"  # its name, not where it is
    assert [m["name"] for m in client.get("/api/methods").json()] == [c.name for c in method_classes()]
    assert client.get("/api/classes", params={"q": "tabby"}).json() == [{"index": 281, "label": "tabby, tabby cat"}]
    assert len(client.get("/api/classes", params={"limit": 7}).json()) == 7
    layers = client.get("/api/layers").json()
    assert layers["default"] == "bn2" and layers["layers"][-1]["name"] == "bn2"
    assert all(entry["layout"] for entry in layers["layers"])
    lut = client.get("/api/colormap/viridis").json()["lut"]
    assert len(lut) == 256 and lut[0] == [68, 1, 84]
    assert client.get("/api/samples").json() == ["chelsea", "coffee", "rocket", "astronaut"]
    assert Image.open(io.BytesIO(client.get("/api/samples/coffee").content)).size == (600, 400)
    assert client.get("/docs").status_code == 200 and "/api/explain" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "function paint" in client.get("/static/app.js").text


def test_folders_under_the_root(client: TestClient) -> None:
    listing = client.get("/api/files", params={"path": "photos"}).json()
    assert listing["folders"] == ["photos/cats"]  # not the symlink out of the root
    assert listing["images"] == [f"photos/{n}.png" for n in ("astronaut", "big", "chelsea", "coffee", "rocket")]  # no FIFO
    assert client.get("/api/files").json()["folders"] == ["photos"]
    every = client.get("/api/files", params={"recursive": "true"}).json()["images"]
    assert every == listing["images"]  # photos/cats is empty; nothing through the symlinked folder
    assert "/static/gallery.js" in client.get("/gallery").text
    thumb = Image.open(io.BytesIO(client.get("/api/image", params={"path": "photos/coffee.png", "size": 100}).content))
    assert thumb.size == (100, 67)


def test_predict_and_explain_equal_the_library(client: TestClient, lens, samples_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from camlens.imageio import read_image

    picture = read_image(samples_dir / "chelsea.png")
    expected = lens.explain([picture], "gradcam,gradcam++", ["bn2", "blocks.5"], "tabby cat")[0]
    by_path = client.post("/api/predict", data={"path": "photos/chelsea.png", "top": "3"}).json()
    upload = client.post("/api/predict", data={"top": "3"}, files={"image": ("c.png", _png(picture), "image/png")}).json()
    assert by_path["predictions"] == upload["predictions"] == [p.to_dict() for p in lens.predict([picture], top=3)[0]]
    got = client.post("/api/explain", data={"path": "photos/chelsea.png", "method": "gradcam,gradcam++",
                                            "layer": "bn2,blocks.5", "target": "tabby cat"}).json()
    assert (got["width"], got["height"]) == picture.size
    assert [(e["method"], e["layer"]) for e in got["explanations"]] == [(e.method, e.layer) for e in expected]
    for entry, exp in zip(got["explanations"], expected, strict=True):
        assert entry["target"]["index"] == 281 and entry["file"] == f"chelsea_{exp.method}_{exp.layer}_281-tabby"
        np.testing.assert_array_equal(_map(entry), (np.clip(exp.heatmap, 0, 1) * 255).round().astype(np.uint8))
    raw = client.post("/api/explain", data={"path": "photos/chelsea.png", "method": "gradcam", "output": "npy"})
    assert 'filename="chelsea_gradcam_bn2_' in raw.headers["content-disposition"]
    top = lens.explain([picture], "gradcam")[0][0]
    np.testing.assert_array_equal(np.load(io.BytesIO(raw.content)), top.raw.astype(np.float32))
    overlay = client.post("/api/explain", data={"path": "photos/chelsea.png", "output": "png", "colormap": "viridis",
                                                "alpha": "0.3"})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(overlay.content))),
                                  np.asarray(top.overlay("viridis", 0.3)))


def _huge_png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` with a few bytes of pixels: small on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("request_kwargs", "status", "message"), [
    ({}, 400, "give one image"),
    ({"data": {"path": "photos/chelsea.png"}, "files": {"image": ("a.png", b"x", "image/png")}}, 400, "give one image"),
    ({"files": {"image": ("fake.png", b"GIF89a not really", "image/png")}}, 415, "fake.png: not an image"),
    ({"files": {"image": ("huge.png", _huge_png(30000, 30000), "image/png")}}, 413, "huge.png: image too large"),
    ({"files": {"image": ("wide.png", _huge_png(8000, 5000), "image/png")}}, 413, "wide.png: 8000x5000 is 40.0 MP, over"),
    ({"files": {"image": ("big.bin", b"\0" * 2_100_000, "image/png")}}, 413, "over the 2000000 bytes"),
    ({"files": {"image": ("edge.bin", b"\0" * 2_030_000, "image/png")}}, 413, "edge.bin: over the 2000000 bytes"),
    ({"data": {"path": "photos/big.png"}}, 413, "photos/big.png: 2100000 bytes, over"),
    ({"data": {"path": "photos/pipe.png"}}, 404, "photos/pipe.png: not a regular file"),
    ({"data": {"path": "photos/chelsea.png", "target": "similar-to:/etc/hostname"}}, 422, "not available in the web app"),
    ({"data": {"path": "photos/chelsea.png", "target": "all"}}, 413, "at most 32 per request"),
    ({"data": {"path": "photos/chelsea.png", "target": "top-9", "method": "gradcam,gradcam++,layercam,xgradcam"}},
     413, "36 maps asked"),
    ({"data": {"path": "../outside/secret.png"}}, 404, "not a path under the root"),
    ({"data": {"path": "/etc/passwd"}}, 404, "not a path under the root"),
    ({"data": {"path": "photos/link.png"}}, 404, "no such image under the root"),
    ({"data": {"path": "away/secret.png"}}, 404, "no such image under the root"),
    ({"data": {"path": "photos/missing.png"}}, 404, "no such image under the root"),
    ({"data": {"path": "photos/notes.txt"}}, 404, "not an image file"),
    ({"data": {"path": "photos/chelsea.png", "target": "no such class"}}, 422, "no class named 'no such class'"),
    ({"data": {"path": "photos/chelsea.png", "method": "gradcan"}}, 422, "gradcan"),
    ({"data": {"path": "photos/chelsea.png", "layer": "blocks.99"}}, 422, "blocks.99"),
    ({"data": {"path": "photos/chelsea.png", "output": "gif"}}, 422, "output: String should match pattern"),
])
def test_bad_requests_get_a_4xx_with_one_line(client: TestClient, request_kwargs: dict[str, object], status: int,
                                              message: str | None) -> None:
    response = client.post("/api/explain", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    if message is not None:
        error = response.json()["error"]
        assert message in error and "\n" not in error, error


def test_folder_paths_and_other_endpoints_are_confined(client: TestClient, root: Path, lens) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/files", params={"path": "../"}).status_code == 404
    assert client.get("/api/files", params={"path": "away"}).status_code == 404
    assert client.get("/api/image", params={"path": "photos/link.png"}).status_code == 404
    assert client.get("/api/colormap/nope").json() == {"error": "unknown colormap 'nope'"}
    assert client.get("/api/samples/nope").status_code == 404
    assert client.get("/api/nothing-here").json() == {"error": "Not Found"}
    rootless = TestClient(create_app(Settings(), lens), base_url="http://localhost:8000")
    answer = rootless.post("/api/predict", data={"path": "photos/chelsea.png"})
    assert answer.status_code == 404 and "no --root" in answer.json()["error"]
    assert rootless.get("/api/health").json()["root"] is None


def test_other_hosts_origins_and_unsized_posts_are_refused(client: TestClient) -> None:
    """DNS rebinding (a foreign Host), a cross-site page's POST (a foreign Origin), and a body
    without Content-Length (chunked, so its size is unknown until read) never reach the model."""
    assert client.get("/api/health", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    cross = client.post("/api/predict", data={"path": "photos/chelsea.png"}, headers={"origin": "http://evil.example"})
    assert cross.status_code == 403 and "evil.example" in cross.json()["error"]
    same = client.post("/api/predict", data={"path": "photos/chelsea.png"}, headers={"origin": "http://127.0.0.1:8000"})
    assert same.status_code == 200

    def chunks() -> Iterator[bytes]:
        yield b"--x\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\nphotos/chelsea.png\r\n--x--\r\n"

    unsized = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert unsized.status_code == 411 and "Content-Length" in unsized.json()["error"]


def test_an_unexpected_failure_is_a_500_with_an_id_in_the_log(lens, caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings(), lens)
    client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.lens, "predict", broken)
    with caplog.at_level("ERROR", logger="camlens.web"):
        response = client.post("/api/predict", files={"image": ("a.png", _png(Image.new("RGB", (32, 32))), "image/png")})
    assert response.status_code == 500
    ident = response.json()["id"]
    assert ident in response.json()["error"] and "boom" not in response.json()["error"]
    assert any(ident in r.getMessage() and r.exc_info for r in caplog.records)


def test_concurrent_requests_on_one_model_get_their_own_maps(client: TestClient, lens) -> None:  # type: ignore[no-untyped-def]
    """Two photos x two methods from four threads: every answer equals the one-at-a-time map,
    and no hook is left on the model afterwards."""
    jobs = [(photo, method) for photo in ("chelsea", "coffee") for method in ("cam", "gradcam")] * 3
    alone = {job: client.post("/api/explain", data={"path": f"photos/{job[0]}.png", "method": job[1]}).json()
             for job in set(jobs)}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda job: client.post("/api/explain", data={"path": f"photos/{job[0]}.png",
                                                                             "method": job[1]}).json(), jobs))
    for job, answer in zip(jobs, answers, strict=True):
        np.testing.assert_array_equal(_map(answer["explanations"][0]), _map(alone[job]["explanations"][0]))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lens.loaded.model.modules())


def health(port: int, process: subprocess.Popen[str], wait: float = 120.0) -> dict[str, object] | None:
    """``/api/health`` of a server starting on ``port`` (None if it never answers or exits first),
    asked directly, never through a proxy (urllib's global opener keeps the proxy it first saw)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with opener.open(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
                return dict(json.loads(answer.read()))
        except OSError:
            time.sleep(0.3)
    return None


def serve(args: list[str], port: int, cwd: Path | None = None) -> tuple[dict[str, object] | None, str, str]:
    """``camlens ARGS`` (a ``serve`` on ``port``) in a process of its own until ``/api/health``
    answers, then stopped: that answer (None if it never came) and what the server printed."""
    exe = Path(sys.executable).with_name("camlens")
    server = subprocess.Popen([str(exe), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"})
    try:
        answer = health(port, server)
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    return answer, out, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_camlens_serve_starts_a_real_server(host: str, tmp_path: Path) -> None:
    port = _free_port()
    answer, out, err = serve(["serve", "--host", host, "--port", str(port), "--device", "cpu"], port)
    assert answer is not None and answer["status"] == "ok", out + err
    assert f"http://{host}:{port}/" in out
    assert ("no authentication" in err) == (host == "0.0.0.0"), err


def test_camlens_serve_refuses_a_root_that_is_not_a_folder(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("camlens")
    result = subprocess.run([str(exe), "serve", "--root", str(tmp_path / "nope")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: --root {tmp_path / 'nope'}: not a folder"]
