"""Grad-CAM cost relative to a plain inference forward, camlens vs pytorch-grad-cam.

ResNet-50 (random weights: timing does not depend on them), batch of 8 at 224x224, target layer
``layer4``, top-1 class. Each timed call includes the prediction (the forward pass) and maps
upsampled to 224x224 and min-max normalised, as pytorch-grad-cam returns them. The three
measurements are interleaved round by round, so machine noise hits all of them alike; medians
are reported. Target: camlens / plain forward <= 1.10. The top-3 row explains the three best
classes of every image from the same single forward pass.

Run: python bench/gradcam_overhead.py [--rounds 15] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from camlens import GradCAM
from camlens.core import normalize, upsample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    from pytorch_grad_cam import GradCAM as PGCGradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)

    def plain() -> None:
        with torch.no_grad():
            model(x).softmax(dim=1)

    ours = GradCAM(model, "layer4")

    def camlens_gradcam() -> None:
        result = ours(x)
        normalize(upsample(result.map()[:, 0], (args.size, args.size)))

    def camlens_top3() -> None:
        result = ours(x, top=3)
        normalize(upsample(result.map(), (args.size, args.size)))

    pgc = PGCGradCAM(model=model, target_layers=[model.layer4])

    def pytorch_grad_cam() -> None:
        pgc(input_tensor=x, targets=None)
        for p in model.parameters():
            p.grad = None  # it fills parameter .grad on every call; clear so memory stays flat

    runs: dict[str, Callable[[], None]] = {
        "plain forward (no_grad)": plain,
        "camlens Grad-CAM": camlens_gradcam,
        "camlens Grad-CAM, top-3": camlens_top3,
        "pytorch-grad-cam Grad-CAM": pytorch_grad_cam,
    }
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    pgc.__exit__(None, None, None)
    ours.close()

    base = statistics.median(times["plain forward (no_grad)"])
    print(f"ResNet-50, batch {args.batch} at {args.size}x{args.size}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':28s} {'median ms':>10s} {'ratio to forward':>17s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {med * 1000:10.1f} {med / base:17.3f}")
    ratio = statistics.median(times["camlens Grad-CAM"]) / base
    print(f"camlens ratio {ratio:.3f} ({'meets' if ratio <= 1.10 else 'MISSES'} the <= 1.10 target)")


if __name__ == "__main__":
    main()
