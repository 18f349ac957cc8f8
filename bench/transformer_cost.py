"""Grad-CAM on vision transformers: cost relative to a plain inference forward, camlens vs
pytorch-grad-cam (with its hand-written reshape transform).

timm ViT-S/16 and Swin-T (random weights: timing does not depend on them), batch of 8 at
224x224, each library at camlens' automatic layer (ViT: ``blocks.11.norm1``, the input of the
last attention; Swin: ``norm``), top-1 class, maps upsampled to 224x224 and min-max normalised
as pytorch-grad-cam returns them. Measurements are interleaved round by round so that machine
noise hits all of them alike; medians are reported. Target: camlens / plain forward <= 1.15.
On the ViT, camlens' attention methods (rollout, gradient rollout, LeGrad: every block's
attention, so their graph starts at the first block) are timed in the same rounds.

Run: python bench/transformer_cost.py [--rounds 9] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

from camlens import Explainer, GradCAM
from camlens.core import normalize, upsample


def _vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT example: drop the class token, 14x14 grid, channels first."""
    return tensor[:, 1:, :].reshape(tensor.size(0), 14, 14, tensor.size(2)).permute(0, 3, 1, 2)


def _swin_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """timm's Swin is channels last: channels first for pytorch-grad-cam."""
    return tensor.permute(0, 3, 1, 2)


def _method(model: torch.nn.Module, method: str, x: torch.Tensor) -> Callable[[], None]:
    explainer = Explainer(model, method)

    def run() -> None:
        normalize(upsample(explainer(x).map()[:, 0], (224, 224)))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    from pytorch_grad_cam import GradCAM as PGCGradCAM

    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    cases = {
        "ViT-S/16": (timm.create_model("vit_small_patch16_224").eval(), "blocks.11.norm1", _vit_reshape),
        "Swin-T": (timm.create_model("swin_tiny_patch4_window7_224").eval(), "norm", _swin_reshape),
    }
    print(f"{'model':10s} {'':28s} {'median ms':>10s} {'ratio to forward':>17s}")
    for label, (model, layer, reshape) in cases.items():
        module = dict(model.named_modules())[layer]
        ours = GradCAM(model, layer)
        pgc = PGCGradCAM(model=model, target_layers=[module], reshape_transform=reshape)

        def plain(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                model(x).softmax(dim=1)

        def camlens_gradcam(ours: GradCAM = ours) -> None:
            result = ours(x)
            normalize(upsample(result.map()[:, 0], (224, 224)))

        def pytorch_grad_cam(pgc: PGCGradCAM = pgc, model: torch.nn.Module = model) -> None:
            pgc(input_tensor=x, targets=None)
            for p in model.parameters():
                p.grad = None  # it fills parameter .grad on every call

        runs: dict[str, Callable[[], None]] = {
            "plain forward (no_grad)": plain, "camlens Grad-CAM": camlens_gradcam, "pytorch-grad-cam Grad-CAM": pytorch_grad_cam,
        }
        if label.startswith("ViT"):
            for method in ("rollout", "gradrollout", "legrad"):
                runs[f"camlens {method}"] = _method(model, method, x)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["plain forward (no_grad)"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{label:10s} {name:28s} {median * 1000:10.1f} {median / base:17.3f}")
        pgc.activations_and_grads.release()


if __name__ == "__main__":
    main()
