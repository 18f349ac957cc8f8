"""The methods that run the model again (Score-CAM, SS-CAM, IS-CAM, Faster Score-CAM,
Ablation-CAM): golden values by hand on tiny models, the skipping of dead and duplicate
channels against the naive definition, and the shared prefix of Ablation-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camlens import Explainer
from camlens.core.methods import ChannelWeighted
from camlens.core.perturbation import ISCAM, SSCAM, FasterScoreCAM
from camlens.core.record import LayerRecord, Need
from camlens.errors import CamlensError
from tests.conftest import TinyGapNet


class DeadChannels(nn.Module):
    """conv(3->5) with channels 1 and 4 forced to 0, and channel 2 copied as channel 5 -> ReLU
    -> GAP -> linear: two dead channels and one duplicate. (The copy is made after the conv: a
    conv with two equal filters need not give bitwise equal channels on several threads.)"""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        with torch.no_grad():
            self.conv.weight[[1, 4]] = 0.0
            self.conv.bias[[1, 4]] = -1.0
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(self.relu(torch.cat([y, y[:, 2:3]], dim=1)).mean(dim=(2, 3)))


class Residual(nn.Module):
    """conv -> [block: conv + ReLU] -> + the block's input -> ReLU -> GAP -> linear: a skip
    connection from before the target layer, which a shared prefix must broadcast."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(5, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.fc(F.relu(self.block(s) + s).mean(dim=(2, 3)))


def activations(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def score_cam_by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int,
                      variants: list[float] | None = None, noise: np.ndarray | None = None,
                      only: list[int] | None = None) -> np.ndarray:
    """The naive definition: every channel's own forward (each variant), the class's softmax
    probability, constant channels (and those not in ``only``) 0."""
    a = activations(model, layer, x)[0]
    weights = torch.zeros(a.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for k in range(a.shape[0]) if only is None else only:
            up = F.interpolate(a[k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            draws = [mask * s for s in (variants or [1.0])] if noise is None else [mask + torch.from_numpy(e) for e in noise[k]]
            weights[k] = float(np.mean([F.softmax(model(x * d), dim=1)[0, cls].item() for d in draws]))
    return torch.relu((weights[:, None, None] * a.double()).sum(0)).numpy()


def ours(model: nn.Module, method: object, layer: str, x: torch.Tensor, cls: int) -> np.ndarray:
    with Explainer(model, method, layer) as ex:  # type: ignore[arg-type]
        result = ex(x, cls)
    return result.maps[next(iter(result.maps))][layer][0, 0]


def counted(model: nn.Module) -> tuple[list[int], object]:
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(int(args[0].shape[0])))
    return rows, handle


def test_score_cam_equals_the_naive_definition_and_skips_dead_and_duplicate_channels() -> None:
    model = DeadChannels().eval()
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    a = activations(model, model.relu, x)[0].flatten(1)
    assert (a.amax(1) > a.amin(1)).tolist() == [True, False, True, True, False, True]  # live channels, on this input
    truth = score_cam_by_hand(model, model.relu, x, 2)
    rows, handle = counted(model)
    try:
        mine = ours(model, "scorecam", "relu", x, 2)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    np.testing.assert_allclose(mine, truth, rtol=1e-5, atol=1e-7)
    # the explained forward, then 3 masked inputs: of 6 channels, 2 are dead and 1 a duplicate
    assert rows == [1, 3]


def test_score_cam_on_a_layer_smaller_than_the_input(tiny: TinyGapNet) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    torch.manual_seed(0)
    model.eval()
    x = torch.rand(1, 3, 15, 15)
    np.testing.assert_allclose(ours(model, "scorecam", "1", x, 1), score_cam_by_hand(model, model[1], x, 1),
                               rtol=1e-5, atol=1e-7)


def test_is_cam_and_ss_cam_by_hand() -> None:
    model = TinyGapNet().eval()
    x = torch.rand(1, 3, 10, 10)
    steps = [i / ISCAM.variants for i in range(1, ISCAM.variants + 1)]
    np.testing.assert_allclose(ours(model, "iscam", "relu", x, 1), score_cam_by_hand(model, model.relu, x, 1, steps),
                               rtol=1e-5, atol=1e-7)
    # SS-CAM's noise: drawn per sample from a generator seeded 0, per live channel in order
    a = activations(model, model.relu, x)[0].numpy()
    live = [k for k in range(a.shape[0]) if a[k].max() > a[k].min()]
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, SSCAM.sigma, (len(live), SSCAM.variants, 10, 10)).astype(np.float32)
    noise = np.zeros((a.shape[0], SSCAM.variants, 10, 10), np.float32)
    noise[live] = draws
    np.testing.assert_allclose(ours(model, "sscam", "relu", x, 1), score_cam_by_hand(model, model.relu, x, 1, noise=noise),
                               rtol=1e-4, atol=1e-6)


def test_faster_score_cam_keeps_the_highest_variance_channels() -> None:
    model = DeadChannels().eval()
    x = torch.rand(1, 3, 12, 12)
    a = activations(model, model.relu, x)[0]
    top = np.argsort(-a.reshape(6, -1).var(dim=1).numpy(), kind="stable")[:2].tolist()
    two = ours(model, FasterScoreCAM(channels=2), "relu", x, 0)
    np.testing.assert_allclose(two, score_cam_by_hand(model, model.relu, x, 0, only=top), rtol=1e-5, atol=1e-7)
    assert not np.allclose(two, ours(model, "scorecam", "relu", x, 0))
    with pytest.raises(CamlensError, match="channels must be"):
        FasterScoreCAM(channels=0)


def ablation_by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int) -> np.ndarray:
    a = activations(model, layer, x)
    with torch.no_grad():
        y = model(x)[0, cls].item()
        weights = []
        for k in range(a.shape[1]):
            ablated = a.clone()
            ablated[:, k] = 0.0
            handle = layer.register_forward_hook(lambda m, i, o, ablated=ablated: ablated)
            weights.append((y - model(x)[0, cls].item()) / abs(y))
            handle.remove()
    return torch.relu((torch.tensor(weights, dtype=torch.float64)[:, None, None] * a[0].double()).sum(0)).numpy()


@pytest.mark.parametrize("model_class", [DeadChannels, Residual])
def test_ablation_cam_by_hand_running_only_the_layers_after(model_class: type[nn.Module]) -> None:
    model = model_class().eval()
    layer, name = (model.relu, "relu") if isinstance(model, DeadChannels) else (model.block, "block")
    x = torch.rand(2, 3, 12, 12)
    rows, handle = counted(model)
    try:
        with Explainer(model, "ablationcam", name) as ex:
            result = ex(x, 1)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    for i in range(2):
        np.testing.assert_allclose(result.maps["ablationcam"][name][i, 0], ablation_by_hand(model, layer, x[i : i + 1], 1),
                                   rtol=1e-5, atol=1e-6)
    # the prefix ran on one input row per forward: after the explained batch (2 rows) and the
    # shared-prefix check (twice the layer's output from 1 row, then 1 whole row), one input row
    # serves each chunk of ablated channels
    assert rows[0] == 2 and rows[1:] == [1] * (len(rows) - 1) and len(rows) == 3 + 2


def test_ablation_cam_falls_back_to_whole_forwards_when_the_prefix_cannot_be_shared() -> None:
    class Reshaping(nn.Module):  # reads the batch size from its input: one prefix row breaks it
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.relu(self.conv(x)).reshape(x.shape[0], -1))

    model = Reshaping().eval()
    x = torch.rand(1, 3, 6, 6)
    rows, handle = counted(model)
    try:
        mine = ours(model, "ablationcam", "relu", x, 2)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    np.testing.assert_allclose(mine, ablation_by_hand(model, model.relu, x, 2), rtol=1e-5, atol=1e-6)
    assert rows[-1] > 1  # whole forwards: one input row per ablated channel


@pytest.fixture(scope="module")
def bundled_at_96():  # type: ignore[no-untyped-def]
    """The bundled EfficientNet-Lite0 (1280 channels at bn2) on a real photo at 96x96 (3x3 maps),
    small enough to forward every channel naively."""
    from camlens.lens import Lens
    from camlens.samples import sample_image

    lens = Lens(device="cpu")
    x = F.interpolate(lens.tensor([sample_image("chelsea")]), size=(96, 96), mode="bilinear", align_corners=False)
    model = lens.loaded.model
    with torch.no_grad():
        cls = int(model(x).argmax())
    return model, x, cls


def test_score_cam_on_the_bundled_model_equals_the_naive_definition(bundled_at_96) -> None:  # type: ignore[no-untyped-def]
    from camlens.core import normalize

    model, x, cls = bundled_at_96
    a = activations(model, model.bn2, x)[0]
    up = F.interpolate(a[None], size=(96, 96), mode="bilinear", align_corners=False)[0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    live = (hi > lo).flatten()
    masks = torch.where(hi > lo, (up - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
    weights = torch.zeros(a.shape[0])
    with torch.no_grad():
        for start in range(0, a.shape[0], 64):  # every channel, dead ones too: the naive way
            weights[start : start + 64] = F.softmax(model(x * masks[start : start + 64, None]), dim=1)[:, cls]
    naive = torch.relu((torch.where(live, weights, 0.0)[:, None, None] * a).sum(0)).numpy()
    rows, handle = counted(model)
    try:
        mine = ours(model, "scorecam", "bn2", x, cls)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    np.testing.assert_allclose(normalize(mine), normalize(naive), atol=1e-5)
    distinct = len({m.numpy().tobytes() for m in masks[live]})
    assert sum(rows) == 1 + distinct < a.shape[0]  # one forward per distinct live mask, and no more


def test_ablation_cam_on_the_bundled_model_by_hand(bundled_at_96) -> None:  # type: ignore[no-untyped-def]
    model, x, cls = bundled_at_96
    a = activations(model, model.bn2, x)
    with torch.no_grad():
        y = model(x)[0, cls].item()
        drops = torch.zeros(a.shape[1])
        for start in range(0, a.shape[1], 64):  # whole forwards, 64 ablated copies at a time
            k = torch.arange(start, min(start + 64, a.shape[1]))
            ablated = a.repeat(len(k), 1, 1, 1)
            ablated[torch.arange(len(k)), k] = 0.0
            handle = model.bn2.register_forward_hook(lambda m, i, o, ablated=ablated: ablated)
            drops[k] = y - model(x.repeat(len(k), 1, 1, 1))[:, cls]
            handle.remove()
    truth = torch.relu((drops[:, None, None] / abs(y) * a[0]).sum(0)).numpy()
    np.testing.assert_allclose(ours(model, "ablationcam", "bn2", x, cls), truth, rtol=1e-4, atol=1e-5)


class PeerScoreCAM(ChannelWeighted):
    """The peers' Score-CAM, on camlens' probe: ``w = softmax_k(logit(x * M_k))`` over the
    channels, with torchcam's masks (min-max with +1e-8 at the layer's resolution, then bilinear
    with half-pixel centres) or pytorch-grad-cam's (bilinear with ``align_corners=True``, then
    min-max with +1e-8). Only the masks and the weighting differ from camlens' Score-CAM: the
    masked-input scores come from the same probe, which these tests compare."""

    name = "peer-scorecam"
    title = formula = paper = "test"
    needs = frozenset({Need.FORWARDS})

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def weights(self, record: LayerRecord) -> np.ndarray:
        a = torch.from_numpy(record.activations)
        size = record.probe.input_size  # type: ignore[union-attr]
        if self.peer == "torchcam":
            lo, hi = a.amin(dim=(2, 3), keepdim=True), a.amax(dim=(2, 3), keepdim=True)
            masks = F.interpolate((a - lo) / (hi - lo + 1e-8), size=size, mode="bilinear", align_corners=False)
        else:
            up = F.interpolate(a, size=size, mode="bilinear", align_corners=True)
            lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
            masks = (up - lo) / (hi - lo + 1e-8)
        logits = record.probe.score_masked(masks.numpy(), 0.0, record.columns)  # type: ignore[union-attr]  # (N, C, K)
        return torch.softmax(torch.from_numpy(logits), dim=1).permute(0, 2, 1).numpy()


def _pgc_map(model: nn.Module, x: torch.Tensor, cam_class: str, layer: nn.Module, cls: int) -> np.ndarray:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = getattr(pytorch_grad_cam, cam_class)(model=model, target_layers=[layer])
    cam.batch_size = 64
    return np.asarray(cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)]))[0]


def test_masked_scores_equal_torchcams_and_pytorch_grad_cams_score_cam(resnet: nn.Module, batch: torch.Tensor) -> None:
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    from camlens.core import normalize, upsample

    x = batch[:1]
    with torch.no_grad():
        cls = int(resnet(x).argmax())
    with TorchcamScoreCAM(resnet, target_layer="layer4", batch_size=64) as extractor:
        with torch.no_grad():
            out = resnet(x)
        theirs = extractor(class_idx=cls, scores=out)[0][0].numpy()
    np.testing.assert_allclose(normalize(ours(resnet, PeerScoreCAM("torchcam"), "layer4", x, cls)), theirs, atol=1e-4)
    mine = ours(resnet, PeerScoreCAM("pgc"), "layer4", x, cls)
    np.testing.assert_allclose(normalize(upsample(mine, (96, 96))), _pgc_map(resnet, x, "ScoreCAM", resnet.layer4, cls),
                               atol=2e-3)


def test_ablation_cam_equals_pytorch_grad_cams_after_a_relu(resnet: nn.Module, batch: torch.Tensor) -> None:
    """Where their definitions agree: a layer whose minimum is 0 (pytorch-grad-cam then zeroes
    the channel too) and a positive score (its division by y then keeps the sign)."""
    from camlens.core import normalize, upsample

    x = batch[:1]
    with torch.no_grad():
        logits = resnet(x)[0]
    cls = int(logits.argmax())
    assert logits[cls] > 0
    mine = normalize(upsample(ours(resnet, "ablationcam", "layer4", x, cls), (96, 96)))
    np.testing.assert_allclose(mine, _pgc_map(resnet, x, "AblationCAM", resnet.layer4, cls), atol=2e-3)
