"""The high-level API: camlens.explain, Lens, Explanation, targets by name and top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchvision

import camlens
from camlens.errors import CamlensError, TargetError
from camlens.lens import Lens
from camlens.samples import sample_image


def test_one_call_explain_on_a_file(samples_dir: Path, tmp_path: Path) -> None:
    exp = camlens.explain(samples_dir / "coffee.png", method="gradcam", target="Espresso", device="cpu")
    assert isinstance(exp, camlens.Explanation)
    assert exp.target.index == 967 and exp.target.label == "espresso" and exp.predictions[0].index == 967
    assert exp.layer == "bn2" and exp.raw.shape == (7, 7)
    assert exp.heatmap.shape == (400, 600) and exp.heatmap.min() == 0.0 and exp.heatmap.max() == 1.0
    assert exp.overlay(colormap="hot", alpha=0.3).size == (600, 400)
    path = exp.save(tmp_path / "x.png")
    with pytest.raises(CamlensError, match="exists; pass overwrite=True to replace it") as info:
        exp.save(path)
    assert "--" not in str(info.value)  # the library names its parameter; the CLI says --overwrite
    exp.save(path, panel=True, overwrite=True)
    assert exp.to_dict()["target"] == {"index": 967, "label": "espresso", "probability": round(exp.target.probability, 6)}


def test_targets_mix_names_indices_and_top_k(lens: Lens) -> None:
    cat = sample_image("chelsea")
    [items] = lens.explain([cat], ["gradcam", "cam"], None, ["top-2", "tabby", 282], top=3)
    targets = list(dict.fromkeys(e.target.index for e in items))
    top2 = [p.index for p in items[0].predictions[:2]]
    assert targets[:2] == top2 and set(targets) == set(top2) | {281, 282}
    assert [e.method for e in items[:2]] == ["gradcam", "cam"]
    assert len(items) == 2 * len(targets) and len(items[0].predictions) == 3
    with pytest.raises(TargetError, match="no class named 'tabbby'"):
        lens.explain([cat], target="tabbby")


def test_finer_targets_by_name_on_the_bundled_model(lens: Lens) -> None:
    """Finer-CAM on the cat (top class Egyptian cat, then tabby and tiger cat): against its
    neighbours the map differs from the plain Grad-CAM of the same class; the file tag and the
    title say which score it is."""
    cat = sample_image("chelsea")
    [items] = lens.explain([cat], "gradcam", None, ["finer", "finer:tiger cat", "Egyptian cat"])
    finer_top, finer_tiger, plain = items
    assert finer_top.kind == finer_tiger.kind == "finer" and plain.kind == "class"
    assert finer_top.target.index == plain.target.index == 285 and finer_tiger.target.index == 282
    assert finer_top.tag == plain.tag + "-finer" and "Egyptian cat" in finer_top.title
    assert np.corrcoef(finer_top.raw.ravel(), plain.raw.ravel())[0, 1] < 0.99
    with pytest.raises(TargetError, match="no class named"):
        lens.explain([cat], target="finer:tabbby")


def test_lens_on_a_users_module_with_labels(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=3).eval()
    (tmp_path / "labels.txt").write_text("ant\nbee\nwasp\n")
    lens = Lens(model, labels=tmp_path / "labels.txt")
    [items] = lens.explain([sample_image("rocket")], "gradcam++", ["layer3", "layer4"], target="wasp")
    assert [(e.layer, e.target.label) for e in items] == [("layer3", "wasp"), ("layer4", "wasp")]
    assert all(np.isfinite(e.heatmap).all() for e in items)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_array_and_pil_inputs_agree(lens: Lens) -> None:
    arr = np.asarray(sample_image("coffee"))
    a = lens.explain([arr])[0][0]
    b = lens.explain([sample_image("coffee")])[0][0]
    np.testing.assert_allclose(a.raw, b.raw)
    with pytest.raises(CamlensError, match="uint8 array"):
        lens.explain([arr.astype(np.float32)])


def test_features_of_a_layer(lens: Lens) -> None:
    name, acts = lens.features(sample_image("chelsea"), "blocks.1")
    assert name == "blocks.1" and acts.shape == (24, 56, 56)
    auto, last = lens.features(sample_image("chelsea"))
    assert auto == "bn2" and last.shape == (1280, 7, 7)


def test_an_explanation_shows_itself_in_jupyter(lens) -> None:  # type: ignore[no-untyped-def]
    from camlens.lens import Prediction
    from camlens.samples import sample_image

    exp = lens.explain([sample_image("coffee")], "gradcam")[0][0]
    png = exp._repr_png_()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    page = exp._repr_html_()
    assert page.startswith("<div><img src=\"data:image/png;base64,") and page.count("<tr>") == 1 + len(exp.predictions)
    assert "espresso" in page and f"{exp.predictions[0].probability:.1%}" in page
    exp.predictions[0] = Prediction(exp.predictions[0].index, "<script>alert(1)</script>", 0.5)
    assert "<script>" not in exp._repr_html_() and "&lt;script&gt;" in exp._repr_html_()


def test_a_class_and_its_probability_are_two_explanations_with_their_own_names(tiny) -> None:  # type: ignore[no-untyped-def]
    from camlens.lens import Lens
    from camlens.models.preprocess import Preprocessing
    from camlens.targets import Class, Probability

    lens = Lens(tiny, preprocessing=Preprocessing(input_size=(8, 8)))
    picture = np.zeros((8, 8, 3), np.uint8)
    [items] = lens.explain([picture], "gradcam", "relu", [Class(1), Probability(1), "1"])
    assert [e.kind for e in items] == ["class", "probability"]
    assert len({e.tag for e in items}) == 2 and items[1].tag.endswith("-probability")
