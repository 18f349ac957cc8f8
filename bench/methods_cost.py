"""Every method's cost as a ratio to a plain inference forward: camlens, pytorch-grad-cam, torchcam.

Two models: ResNet-50 at ``layer4`` (random weights: timing does not depend on them) and the
bundled EfficientNet-Lite0 at ``bn2``; a batch of 8 at 224x224, the top-1 class. Every timed
call includes the prediction (the forward pass) and maps upsampled to 224x224 and min-max
normalised, as pytorch-grad-cam returns them (torchcam's maps are upsampled with camlens'
function). For each method the plain forward, camlens and the peers run once per round, in
an order shuffled every round, so machine noise hits them alike; medians are reported. Targets: every one-backward
method <= 1.10x a forward; CAM for all 1000 classes <= 1.2x.

The last rows explain every one of the 1000 classes of each image in one call (CAM: one matrix
product; Grad-CAM: batched vector-Jacobian products in chunks) and report the peak resident
memory of a process that does only that, next to one that only runs the plain forward.

Run: python bench/methods_cost.py [--rounds 9] [--batch 8] [--models resnet50,efficientnet_lite0] [--methods all]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from camlens import Explainer
from camlens.core import method_names, normalize, upsample

PGC = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "gradcam++-pgc": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
    "shapleycam": "ShapleyCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM",
}
TORCHCAM = {"cam": "CAM", "gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


def build(name: str) -> tuple[torch.nn.Module, str]:
    if name == "resnet50":
        import torchvision

        torch.manual_seed(0)
        return torchvision.models.resnet50().eval(), "layer4"
    from camlens.models import load_model

    return load_model(name, device="cpu").model, "bn2"


def timers(model: torch.nn.Module, layer: str, method: str, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    size = tuple(x.shape[2:])
    out: dict[str, Callable[[], None]] = {}
    ours = Explainer(model, method, layer)

    def camlens_call() -> None:
        normalize(upsample(ours(x).map()[:, 0], size))

    out["camlens"] = camlens_call
    if method in PGC:
        import pytorch_grad_cam

        pgc = getattr(pytorch_grad_cam, PGC[method])(model=model, target_layers=[dict(model.named_modules())[layer]])

        def pgc_call() -> None:
            pgc(input_tensor=x, targets=None)
            for p in model.parameters():
                p.grad = None  # it fills parameter .grad on every call; clear so memory stays flat

        out["pytorch-grad-cam"] = pgc_call
    if method in TORCHCAM:
        import torchcam.methods

        def torchcam_call() -> None:
            kwargs = {"fc_layer": "fc" if layer == "layer4" else "classifier"} if method == "cam" else {}
            with getattr(torchcam.methods, TORCHCAM[method])(model, target_layer=layer, **kwargs) as extractor:
                scores = model(x)
                cams = extractor(scores.argmax(1).tolist(), scores)[0]
                normalize(upsample(cams.detach().numpy(), size))
            for p in model.parameters():
                p.grad = None

        out["torchcam"] = torchcam_call
    return out


def _timed(runs: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds of each run; every round runs them all, in a shuffled order."""
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(model: torch.nn.Module, layer: str, x: torch.Tensor, rounds: int, methods: list[str]) -> None:
    def plain() -> None:
        with torch.no_grad():
            model(x).softmax(dim=1)

    print(f"{'method':22s} {'camlens':>9s} {'pytorch-grad-cam':>17s} {'torchcam':>9s}   (ratio to a no_grad forward)")
    for method in methods:
        median = _timed({"forward": plain, **timers(model, layer, method, x)}, rounds)
        ratio = {name: t / median["forward"] for name, t in median.items()}
        cells = [f"{ratio[k]:.3f}" if k in ratio else "-" for k in ("camlens", "pytorch-grad-cam", "torchcam")]
        print(f"{method:22s} {cells[0]:>9s} {cells[1]:>17s} {cells[2]:>9s}")
    runs = {"forward": plain}
    for method in ("cam", "gradcam"):
        ex = Explainer(model, method, layer)

        def call(ex: Explainer = ex) -> None:
            ex(x, targets="all").map()

        runs[method] = call
    median = _timed(runs, rounds)
    for method in ("cam", "gradcam"):
        print(f"{method + ', all classes':22s} {median[method] / median['forward']:9.3f}")


_PEAK = """
import sys, torch
sys.path.insert(0, {bench!r})
from methods_cost import build
from camlens import Explainer
model, layer = build({model!r})
x = torch.randn({batch}, 3, 224, 224)
if {task!r} == "forward":
    with torch.no_grad():
        model(x)
else:
    Explainer(model, "gradcam", layer)(x, targets="all").map()
status = open("/proc/self/status").read()  # VmHWM: this process's peak RSS (ru_maxrss survives exec)
print(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024)
"""


def peak_memory(model_name: str, batch: int) -> None:
    """Peak resident memory of a fresh process that runs only the plain forward, and of one
    that runs only Grad-CAM for all 1000 classes (same model, same batch)."""
    peaks = {}
    for task in ("forward", "gradcam-all"):
        code = _PEAK.format(bench=str(Path(__file__).resolve().parent), model=model_name, batch=batch, task=task)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks[task] = float(done.stdout.strip().splitlines()[-1])
    print(f"peak RSS: plain forward {peaks['forward']:.0f} MB, Grad-CAM for all 1000 classes {peaks['gradcam-all']:.0f} MB "
          f"(+{peaks['gradcam-all'] - peaks['forward']:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default="resnet50,efficientnet_lite0")
    parser.add_argument("--methods", default="all", help="comma-separated method names, 'all' or 'none'")
    args = parser.parse_args()
    for name in args.models.split(","):
        model, layer = build(name)
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        print(f"\n{name} at {layer}, batch {args.batch} at 224x224, {args.rounds} interleaved rounds, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}")
        chosen = method_names() if args.methods == "all" else [] if args.methods == "none" else args.methods.split(",")
        measure(model, layer, x, args.rounds, chosen)
        peak_memory(name, args.batch)


if __name__ == "__main__":
    main()
