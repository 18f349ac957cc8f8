"""How much pytorch-grad-cam's eps changes Grad-CAM++ on a real model.

pytorch-grad-cam computes alpha = g^2 / (2 g^2 + sum(A) g^3 + 1e-6). camlens uses the paper's
Eq. 19 without the eps. On the bundled EfficientNet-Lite0 (real ImageNet weights) and
scikit-image's photos, this prints the median squared gradient at the default layer (compare it
with 1e-6) and the largest difference between the two libraries' normalised maps (0..1).
Where eps is negligible the two agree to 2e-3 (tests/test_parity.py).

Run: python bench/gradcampp_eps.py
"""

from __future__ import annotations

import numpy as np

from camlens import Explainer
from camlens.core import normalize, upsample
from camlens.lens import Lens
from camlens.samples import SAMPLES, sample_image


def main() -> None:
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    lens = Lens(device="cpu")
    model = lens.loaded.model
    batch = lens.tensor([sample_image(name) for name in SAMPLES])
    size = tuple(batch.shape[2:])
    print(f"EfficientNet-Lite0 (bundled), layer bn2, top-1 class, {len(SAMPLES)} scikit-image photos")
    print(f"{'photo':10s} {'median g^2':>12s} {'max |camlens - pytorch-grad-cam|':>34s}")
    with Explainer(model, ["gradcam", "gradcam++"], "bn2") as ex:
        res = ex(batch)
    ours = normalize(upsample(res.maps["gradcam++"]["bn2"][:, 0], size))
    targets = [ClassifierOutputTarget(int(t)) for t in res.targets[:, 0]]
    with GradCAMPlusPlus(model=model, target_layers=[model.bn2]) as ref:
        theirs = ref(input_tensor=batch, targets=targets)
        grads = ref.activations_and_grads.gradients[0].numpy()
    for p in model.parameters():
        p.grad = None
    for i, name in enumerate(SAMPLES):
        g2 = np.median(grads[i] ** 2)
        print(f"{name:10s} {g2:12.2e} {np.abs(ours[i] - theirs[i]).max():34.3f}")


if __name__ == "__main__":
    main()
