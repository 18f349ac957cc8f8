"""Parity of every method with pytorch-grad-cam and torchcam: max |difference| of normalised maps.

Two settings: the bundled EfficientNet-Lite0 (real ImageNet weights) on scikit-image's four
sample photos at ``bn2``, top-3 classes; and a random-weight ResNet-18 at ``layer3`` and
``layer4`` on three random inputs, three classes each. Maps are compared as each peer returns
them: pytorch-grad-cam's ReLU'd, min-max scaled and resized to the input (camlens' are
rectified, upsampled and min-max scaled the same way), torchcam's ReLU'd and min-max scaled at
layer resolution. For the projection methods (Eigen-CAM, Eigen-Grad-CAM, KPCA-CAM) the peer's
sign is arbitrary; "peer flipped" counts the maps where pytorch-grad-cam kept the other sign
than camlens' rule, and the difference is then taken against the peer's map of the other sign.
Prints Markdown tables (docs/methods.md).

Run: python bench/parity_table.py
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

from camlens import Explainer
from camlens.core import normalize, upsample

PGC = {
    "gradcam": "GradCAM", "gradcam++-pgc": "GradCAMPlusPlus", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
    "shapleycam": "ShapleyCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM",
}
TORCHCAM = {"cam": "CAM", "gradcam": "GradCAM", "gradcam++": "GradCAMpp", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}
PROJECTIONS = {"eigencam", "kpcacam", "eigengradcam"}


def ours(model: torch.nn.Module, x: torch.Tensor, method: str, layer: str, targets: np.ndarray) -> np.ndarray:
    with Explainer(model, method, layer) as ex:
        raw = ex(x, targets=targets).map()
    return raw  # (N, K, h, w)


def pgc_maps(model: torch.nn.Module, x: torch.Tensor, name: str, layer: str, targets: np.ndarray) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = []
    with getattr(pytorch_grad_cam, name)(model=model, target_layers=[dict(model.named_modules())[layer]]) as ref:
        for k in range(targets.shape[1]):
            out.append(ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets[:, k]]))
    for p in model.parameters():
        p.grad = None
    return np.stack(out, axis=1)


def torchcam_maps(model: torch.nn.Module, x: torch.Tensor, name: str, layer: str, targets: np.ndarray) -> np.ndarray:
    import torchcam.methods

    kwargs = {"fc_layer": "fc" if layer.startswith("layer") else "classifier"} if name == "CAM" else {}
    out = np.zeros((len(x), targets.shape[1]), dtype=object)
    with getattr(torchcam.methods, name)(model, target_layer=layer, **kwargs) as extractor:
        for i in range(len(x)):
            for k in range(targets.shape[1]):
                scores = model(x[i : i + 1])
                out[i, k] = extractor(int(targets[i, k]), scores)[0][0].detach().numpy()
    for p in model.parameters():
        p.grad = None
    return np.stack([np.stack(list(row)) for row in out])


def compare(model: torch.nn.Module, x: torch.Tensor, layer: str, targets: np.ndarray) -> list[tuple[str, str, str, str]]:
    rows = []
    size = tuple(x.shape[2:])
    for method in dict.fromkeys([*PGC, *TORCHCAM]):
        if method == "cam" and layer not in ("bn2", "layer4"):
            continue  # CAM applies only to the layer that feeds the classifier
        raw = ours(model, x, method, layer, targets)
        if method in PGC:
            theirs = pgc_maps(model, x, PGC[method], layer, targets)
            mine = normalize(upsample(np.maximum(raw, 0), size))
            flipped = 0
            if method in PROJECTIONS:  # compare with the peer's map of either sign
                agree = np.abs(mine - theirs).max(axis=(2, 3))
                disagree = np.abs(mine - _other_sign(model, x, method, layer, targets)).max(axis=(2, 3))
                flipped = int((disagree < agree).sum())
                diff = float(np.minimum(agree, disagree).max())
            else:
                diff = float(np.abs(mine - theirs).max())
            count = f"{flipped}/{theirs.shape[0] * theirs.shape[1]}" if method in PROJECTIONS else ""
            rows.append((method, "pytorch-grad-cam " + PGC[method], f"{diff:.1e}", count))
        if method in TORCHCAM:
            theirs = torchcam_maps(model, x, TORCHCAM[method], layer, targets)
            mine = normalize(raw if method == "cam" else np.maximum(raw, 0))
            rows.append((method, "torchcam " + TORCHCAM[method], f"{float(np.abs(mine - theirs).max()):.1e}", ""))
    return rows


def _other_sign(model: torch.nn.Module, x: torch.Tensor, method: str, layer: str, targets: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's map with the other sign of its projection: the projection of the
    activations (or of gradient x activations) by its own function, negated, then its pipeline."""
    from pytorch_grad_cam.utils import svd_on_activations as svd

    captured: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda mod, i, o: captured.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    out = np.zeros((len(x), targets.shape[1], *x.shape[2:]), np.float32)
    for k in range(targets.shape[1]):
        if method == "eigengradcam":
            (g,) = torch.autograd.grad(logits[torch.arange(len(x)), torch.as_tensor(targets[:, k])].sum(), captured,
                                       retain_graph=True)
            stack = (g * captured[0]).detach().numpy()
        else:
            stack = captured[0].detach().numpy()
        project = svd.get_2d_projection_kernel if method == "kpcacam" else svd.get_2d_projection
        out[:, k] = normalize(upsample(normalize(np.maximum(-project(stack), 0)), tuple(x.shape[2:])))
    for p in model.parameters():
        p.grad = None
    return out


def main() -> None:
    from camlens.lens import Lens
    from camlens.samples import sample_image

    lens = Lens(device="cpu")
    photos = [sample_image(n) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    x = lens.tensor(photos)
    with torch.no_grad():
        top3 = lens.loaded.model(x).argsort(dim=1, descending=True)[:, :3].numpy()
    settings = [("EfficientNet-Lite0 (bundled weights), 4 photos, top-3, bn2", lens.loaded.model, x, "bn2", top3)]
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=20).eval()
    rx = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    targets = np.array([[3, 11, 17]] * 3)
    for layer in ("layer3", "layer4"):
        settings.append((f"ResNet-18 (random weights), 3 inputs x 3 classes, {layer}", resnet, rx, layer, targets))
    for title, model, inputs, layer, tgt in settings:
        print(f"\n**{title}**\n")
        print("| camlens method | peer | max abs difference | peer flipped |")
        print("| --- | --- | --- | --- |")
        for row in compare(model, inputs, layer, tgt):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
