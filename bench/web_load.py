"""Load test of ``camlens serve``: a real uvicorn server on 127.0.0.1 with the bundled model, 8
concurrent clients, 400 requests of mixed explain (CAM / Grad-CAM, by path and by upload) and
predict on the sample photos. Checks every answer against the library computing alone (the maps
exactly, the predictions exactly), counts failures, prints p50 / p95 latency and throughput,
and that no hook is left on the model. Stops by itself.

Run: python bench/web_load.py [REQUESTS] [CLIENTS]    (default 400 and 8)
"""

from __future__ import annotations

import base64
import io
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from camlens.imageio import read_image
from camlens.lens import Lens
from camlens.samples import write_samples
from camlens.web.app import Settings, create_app


def main(requests: int, clients: int) -> int:
    lens = Lens(device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_samples(root / "photos")
        pictures = {p.name: read_image(p) for p in photos}
        uploads = {name: (root / "photos" / name).read_bytes() for name in pictures}
        expected_maps = {(name, m): (np.clip(lens.explain([pic], m)[0][0].heatmap, 0, 1) * 255).round().astype(np.uint8)
                         for name, pic in pictures.items() for m in ("cam", "gradcam")}
        expected_top = {name: [p.to_dict() for p in lens.predict([pic], top=5)[0]] for name, pic in pictures.items()}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        server = uvicorn.Server(uvicorn.Config(create_app(Settings(root=root), lens), host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        names = sorted(pictures)
        jobs = [(names[i % len(names)], ("predict", "cam", "gradcam")[i % 3], i % 2 == 0) for i in range(requests)]
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def one(job: tuple[str, str, bool]) -> None:
            name, what, by_path = job
            files = None if by_path else {"image": (name, uploads[name], "image/png")}
            data = {"path": f"photos/{name}"} if by_path else {}
            if what != "predict":
                data["method"] = what
            start = time.perf_counter()
            try:
                with httpx.Client(base_url=url, timeout=300, trust_env=False) as client:
                    answer = client.post("/api/predict" if what == "predict" else "/api/explain", data=data, files=files)
                took = time.perf_counter() - start
                if answer.status_code != 200:
                    raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
                body = answer.json()
                if what == "predict":
                    if body["predictions"] != expected_top[name]:
                        raise RuntimeError("predictions differ from the library's")
                else:
                    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["explanations"][0]["map"]))))
                    if not np.array_equal(got, expected_maps[name, what]):
                        raise RuntimeError(f"{what} map of {name} differs from the library's")
                with lock:
                    latencies.append(took)
            except Exception as exc:  # counted and listed: the run goes on
                with lock:
                    failures.append(f"{name} {what}: {exc}")

        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, jobs))
        wall = time.perf_counter() - began
        server.should_exit = True
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in lens.loaded.model.modules())
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    print(f"{requests} requests, {clients} clients, bundled efficientnet_lite0 on the CPU "
          f"({len(names)} photos; predict, CAM, Grad-CAM; half by path, half uploaded)")
    print(f"failures {len(failures)}   hooks left on the model {hooks}")
    print(f"latency p50 {statistics.median(latencies) * 1000:.0f} ms   p95 {q[18] * 1000:.0f} ms   "
          f"throughput {len(latencies) / wall:.1f} requests/s   wall {wall:.1f} s")
    for failure in failures[:10]:
        print("  " + failure)
    return 1 if failures or hooks else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 400, int(sys.argv[2]) if len(sys.argv) > 2 else 8))
