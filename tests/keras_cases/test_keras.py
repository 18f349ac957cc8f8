"""The Keras adapter on the current backend: parity with PyTorch, heads, nesting, hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import Explainer, GradCAM
from camlens.adapters.keras import KerasExplainer
from camlens.core import ATTENTION_NEEDS, method_names, normalize
from camlens.errors import LayerError, MethodError, ModelError
from tests.keras_cases.conftest import keras, small_cnn

METHODS = method_names(without=ATTENTION_NEEDS)  # every method a CNN has maps for, on all three backends
SPECS = [f"{m}:masks=64" if m == "rise" else m for m in METHODS]  # as asked for: RISE with fewer masks than its 4000
NOT_CAM = [m for m in METHODS if m != "cam"]
NOT_CAM_SPECS = [s for s in SPECS if s != "cam"]


def _torch_twin(model: keras.Model) -> nn.Module:
    """The same network in PyTorch, with the Keras weights (kernels transposed to NCHW)."""
    twin = nn.Sequential()
    twin.conv1 = nn.Conv2d(3, 8, 3, padding=1)
    twin.relu1 = nn.ReLU()
    twin.conv2 = nn.Conv2d(8, 6, 3, padding=1)
    twin.relu2 = nn.ReLU()
    twin.pool = nn.AdaptiveAvgPool2d(1)
    twin.flat = nn.Flatten()
    twin.fc = nn.Linear(6, 4)
    with torch.no_grad():
        for name in ["conv1", "conv2"]:
            kernel, bias = model.get_layer(name).get_weights()
            getattr(twin, name).weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            getattr(twin, name).bias.copy_(torch.from_numpy(bias))
        kernel, bias = model.get_layer("fc").get_weights()
        twin.fc.weight.copy_(torch.from_numpy(kernel.T.copy()))
        twin.fc.bias.copy_(torch.from_numpy(bias))
    return twin.eval()


def test_same_maps_as_pytorch_for_the_same_network(batch: np.ndarray) -> None:
    model = small_cnn("softmax")
    twin = _torch_twin(model)
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    targets = [0, 2, 3]
    with KerasExplainer(model, SPECS) as ke:
        k = ke(batch, targets)
    with Explainer(twin, SPECS, "relu2") as te:
        t = te(x, targets)
    np.testing.assert_allclose(k.logits, t.logits, atol=1e-4)
    for method in METHODS:
        np.testing.assert_allclose(normalize(k.maps[method]["conv2"]), normalize(t.maps[method]["relu2"]), atol=1e-4)
    with KerasExplainer(model, ["cam", "gradcam"]) as ke, Explainer(twin, ["cam", "gradcam"], "relu2") as te:
        ka, ta = ke(batch, "all"), te(x, "all")
    for method in ["cam", "gradcam"]:
        assert ka.maps[method]["conv2"].shape == (3, 4, 12, 12)
        np.testing.assert_allclose(normalize(ka.maps[method]["conv2"]), normalize(ta.maps[method]["relu2"]), atol=1e-4)
    with KerasExplainer(model, NOT_CAM_SPECS, "conv1") as ke, Explainer(twin, NOT_CAM_SPECS, "relu1") as te:
        k1, t1 = ke(batch, targets), te(x, targets)
    for method in NOT_CAM:
        np.testing.assert_allclose(normalize(k1.maps[method]["conv1"]), normalize(t1.maps[method]["relu1"]), atol=1e-4)


def test_smoothing_and_flips_match_pytorch_for_the_same_network(batch: np.ndarray) -> None:
    """The same noise (drawn channels first in both layouts) and the same mirror images."""
    from camlens import Augment

    model = small_cnn("softmax")
    twin = _torch_twin(model)
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    augment = Augment(samples=2, flips=True)
    methods = ["gradcam", "ablationcam"]
    with Explainer(model, methods, "conv2", augment=augment) as ke, Explainer(twin, methods, "relu2", augment=augment) as te:
        k, t = ke(batch), te(x)
    np.testing.assert_array_equal(k.targets, t.targets)
    for method in methods:
        np.testing.assert_allclose(k.maps[method]["conv2"], t.maps[method]["relu2"], rtol=1e-3, atol=1e-5)


def test_second_order_route_matches_pytorch_on_a_curved_head(batch: np.ndarray) -> None:
    """conv -> GAP -> Dense(tanh) -> Dense: the Hessian term of Shapley-CAM is not zero here."""
    rng = np.random.default_rng(3)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(5, 3, padding="same", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7, activation="tanh", name="hidden")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="out")(x))
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(scale=0.8, size=w.shape).astype("float32") for w in layer.get_weights()])
    twin = nn.Sequential()
    twin.conv = nn.Conv2d(3, 5, 3, padding=1)
    twin.pool, twin.flat = nn.AdaptiveAvgPool2d(1), nn.Flatten()
    twin.hidden, twin.tanh, twin.out = nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)
    with torch.no_grad():
        kernel, bias = model.get_layer("conv").get_weights()
        twin.conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
        twin.conv.bias.copy_(torch.from_numpy(bias))
        for name in ("hidden", "out"):
            kernel, bias = model.get_layer(name).get_weights()
            getattr(twin, name).weight.copy_(torch.from_numpy(kernel.T.copy()))
            getattr(twin, name).bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    both = ["shapleycam", "gradcam"]
    with KerasExplainer(model, both, "conv") as ke, Explainer(twin.eval(), both, "conv") as te:
        k, t = ke(batch, top=2), te(xt, top=2)
    np.testing.assert_allclose(k.maps["shapleycam"]["conv"], t.maps["shapleycam"]["conv"], rtol=1e-3, atol=1e-5)
    assert not np.allclose(t.maps["shapleycam"]["conv"], t.maps["gradcam"]["conv"], atol=1e-4)


def test_softmax_head_explains_pre_softmax_scores_without_editing_the_model(batch: np.ndarray) -> None:
    soft, logits = small_cnn("softmax"), small_cnn("logits")
    before = [w.copy() for w in soft.get_weights()]
    with KerasExplainer(soft, SPECS) as a, KerasExplainer(logits, SPECS) as b:
        ra, rb = a(batch, top=2), b(batch, top=2)
    np.testing.assert_allclose(ra.logits, keras.ops.convert_to_numpy(logits(batch)), atol=1e-5)
    np.testing.assert_allclose(ra.probabilities, keras.ops.convert_to_numpy(soft(batch)), atol=1e-5)
    for method in METHODS:
        np.testing.assert_allclose(ra.maps[method]["conv2"], rb.maps[method]["conv2"], rtol=1e-5, atol=1e-7)
    assert soft.get_layer("fc").activation is keras.activations.softmax
    assert all(np.array_equal(x, y) for x, y in zip(before, soft.get_weights(), strict=True))
    assert [layer.name for layer in soft.layers] == ["input_layer", "conv1", "conv2", "gap", "fc"] or len(soft.layers) == 5


def test_cam_golden_mean_equals_logit_minus_bias(batch: np.ndarray) -> None:
    model = small_cnn("softmax")
    with KerasExplainer(model, "cam") as cam:
        res = cam(batch, targets=[1, 1, 3])
    bias = model.get_layer("fc").get_weights()[1]
    rows = np.arange(3)
    expected = res.logits[rows, res.targets[:, 0]] - bias[res.targets[:, 0]]
    np.testing.assert_allclose(res.maps["cam"]["conv2"][:, 0].mean(axis=(1, 2)), expected, rtol=1e-5, atol=1e-6)


def test_nested_transfer_learning_model_matches_the_flat_one(batch: np.ndarray) -> None:
    flat = small_cnn("logits")
    base = keras.Model(flat.input, flat.get_layer("conv2").output, name="base")
    inp = keras.Input((12, 12, 3))
    feats = base(inp)
    pooled = keras.layers.GlobalAveragePooling2D()(feats)
    head = keras.layers.Dense(4, name="head")
    out = head(keras.layers.Dropout(0.2)(pooled))
    nested = keras.Model(inp, out)
    head.set_weights(flat.get_layer("fc").get_weights())
    with KerasExplainer(nested, SPECS) as a, KerasExplainer(flat, SPECS) as b:
        assert a.layer_names == ["base/conv2"]
        ra, rb = a(batch, top=2), b(batch, top=2)
    for method in METHODS:
        np.testing.assert_allclose(ra.maps[method]["base/conv2"], rb.maps[method]["conv2"], rtol=1e-4, atol=1e-6)
    with KerasExplainer(nested, "gradcam", ["conv1", "base/conv2"]) as c:
        assert c.layer_names == ["base/conv1", "base/conv2"]
        assert c(batch).maps["gradcam"]["base/conv1"].shape == (3, 1, 12, 12)


def test_binary_sigmoid_head_gives_negative_and_positive_classes(batch: np.ndarray) -> None:
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(5, 3, activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="is_cat")(x)
    model = keras.Model(inp, out)
    with KerasExplainer(model, SPECS) as ex:
        res = ex(batch, targets=[[0, 1]] * 3)
    p = keras.ops.convert_to_numpy(model(batch))[:, 0]
    np.testing.assert_allclose(res.probabilities[:, 1], p, atol=1e-5)
    cam = res.maps["cam"]["conv"]
    np.testing.assert_allclose(cam[:, 0], -cam[:, 1], atol=1e-6)
    gc = res.maps["gradcam"]["conv"]
    np.testing.assert_allclose(gc[:, 1], np.maximum(cam[:, 1], 0) / 100, rtol=1e-4, atol=1e-7)


def test_multi_output_model_by_index_or_name(batch: np.ndarray) -> None:
    flat = small_cnn("logits")
    aux = keras.layers.Dense(2, name="aux")(flat.get_layer("gap").output)
    multi = keras.Model(flat.input, [aux, flat.output])
    with pytest.raises(ModelError, match="model has 2 outputs"):
        KerasExplainer(multi)
    with pytest.raises(ModelError, match="no output 'nope'"):
        KerasExplainer(multi, output="nope")
    with KerasExplainer(multi, SPECS, output="fc") as a, KerasExplainer(multi, SPECS, output=1) as b:
        with KerasExplainer(flat, SPECS) as c:
            ra, rb, rc = a(batch), b(batch), c(batch)
    for method in METHODS:
        np.testing.assert_allclose(ra.maps[method]["conv2"], rc.maps[method]["conv2"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rb.maps[method]["conv2"], rc.maps[method]["conv2"], rtol=1e-5, atol=1e-7)


def test_sequential_model(batch: np.ndarray) -> None:
    flat = small_cnn("softmax")
    seq = keras.Sequential([keras.Input((12, 12, 3)), *flat.layers[1:]])
    with KerasExplainer(seq, SPECS) as a, KerasExplainer(flat, SPECS) as b:
        assert a.layer_names == ["conv2"]
        ra, rb = a(batch), b(batch)
    for method in METHODS:
        np.testing.assert_allclose(ra.maps[method]["conv2"], rb.maps[method]["conv2"], rtol=1e-5, atol=1e-7)


def test_bad_layer_names_and_cam_refusals(batch: np.ndarray) -> None:
    model = small_cnn()
    with pytest.raises(LayerError, match="no layer 'conv_2'; did you mean conv2"):
        KerasExplainer(model, "gradcam", "conv_2")
    with pytest.raises(MethodError, match="only to the layer that feeds the classifier"):
        KerasExplainer(model, "cam", "conv1")
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = keras.layers.Flatten()(x)
    mlp = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(x)))
    cause = "the classifier takes 8 features, the layer has 4 channels; use gradcam"
    with KerasExplainer(mlp, "cam") as cam, pytest.raises(MethodError, match=cause):
        cam(batch)
    with KerasExplainer(mlp, "gradcam") as gc:
        assert np.isfinite(gc(batch).map()).all()


def test_parity_with_the_keras_io_gradcam_recipe(batch: np.ndarray) -> None:
    """The official keras.io recipe: GradientTape, mean of gradients, weighted sum, ReLU."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the recipe uses tf.GradientTape")
    import tensorflow as tf

    model = small_cnn("logits")  # the recipe removes the last activation; this model has none
    grad_model = keras.Model(model.inputs, [model.get_layer("conv2").output, model.output])
    with KerasExplainer(small_cnn("softmax"), "gradcam", "conv2") as ours:
        res = ours(batch)
    for i in range(len(batch)):
        with tf.GradientTape() as tape:
            conv_out, preds = grad_model(batch[i : i + 1])
            class_channel = preds[:, int(res.targets[i, 0])]
        grads = tape.gradient(class_channel, conv_out)
        pooled = tf.reduce_mean(grads, axis=(0, 1, 2))
        heatmap = tf.squeeze(conv_out[0] @ pooled[..., tf.newaxis])
        heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
        np.testing.assert_allclose(normalize(res.maps["gradcam"]["conv2"][i, 0]), heatmap.numpy(), atol=1e-5)


def test_torch_backend_leaves_no_grads(batch: np.ndarray) -> None:
    model = small_cnn("softmax")
    with KerasExplainer(model, SPECS) as ex:
        ex(batch, top=3)
    if keras.backend.backend() == "torch":
        assert all(v.value.grad is None for v in model.weights)


def test_lens_and_files_with_a_keras_model(tmp_path, batch: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    from camlens.lens import Lens
    from camlens.samples import sample_image

    model = small_cnn("softmax")
    path = tmp_path / "mine.keras"
    model.save(path)
    (tmp_path / "labels.txt").write_text("ant\nbee\ncat\ndog\n")
    lens = Lens(str(path), labels=tmp_path / "labels.txt")
    assert lens.loaded.framework == "keras" and lens.loaded.preprocessing.input_size == (12, 12)
    [items] = lens.explain([sample_image("chelsea")], SPECS, None, ["top-2", "dog"])
    assert {e.method for e in items} == set(METHODS) and all(e.layer == "conv2" for e in items)
    assert "dog" in {e.target.label for e in items} and items[0].heatmap.shape == (300, 451)
    preds = lens.predict([sample_image("chelsea")], top=4)[0]
    assert abs(sum(p.probability for p in preds) - 1) < 1e-5
    name, acts = lens.features(sample_image("coffee"), "conv1")
    assert name == "conv1" and acts.shape == (8, 12, 12)
    direct = Lens(model)
    assert direct.loaded.framework == "keras" and len(direct.labels) == 4


def test_keras_applications_by_name_with_local_weights(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from camlens.models import load_model

    with pytest.raises(ModelError, match="unknown keras.applications model 'MobileNetV9'; did you mean keras:MobileNet"):
        load_model("keras:MobileNetV9")
    import keras.src.utils.file_utils as file_utils

    def offline(*args: object, **kwargs: object) -> None:
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ModelError, match="cannot get ImageNet weights for keras:ResNet50.*--weights FILE"):
        load_model("keras:ResNet50")
    weights = tmp_path / "mnv2.weights.h5"
    keras.applications.MobileNetV2(weights=None).save_weights(weights)
    loaded = load_model("keras:MobileNetV2", weights=weights)
    assert loaded.framework == "keras" and len(loaded.labels) == 1000
    assert loaded.preprocessing.function == "keras.applications.mobilenet_v2.preprocess_input"
    x = loaded.preprocessing([Image.new("RGB", (50, 40), (255, 0, 0))])
    assert x.shape == (1, 224, 224, 3)
    np.testing.assert_allclose(x[0, 0, 0], [1.0, -1.0, -1.0])  # mobilenet_v2 scales to [-1, 1]


def test_cli_with_a_keras_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from camlens.samples import write_samples

    small_cnn("softmax").save(tmp_path / "mine.keras")
    (tmp_path / "labels.txt").write_text("ant\nbee\ncat\ndog\n")
    photos = write_samples(tmp_path / "photos")
    exe = Path(sys.executable).with_name("camlens")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [str(exe), "explain", str(photos[0]), "--model", str(tmp_path / "mine.keras"), "--labels", str(tmp_path / "labels.txt"),
         "--method", "cam,gradcam,gradcam++", "--target", "top-2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not result.stderr.strip(), result.stderr  # no TensorFlow start-up lines (camlens --verbose shows them)
    summary = json.loads(next((tmp_path / "out").glob("camlens-run-*.json")).read_text())
    explained = summary["images"][0]["explanations"]
    assert len(explained) == 6 and {e["layer"] for e in explained} == {"conv2"}
    layers = subprocess.run([str(exe), "layers", str(tmp_path / "mine.keras")], capture_output=True, text=True, timeout=600)
    assert layers.returncode == 0 and "conv2" in layers.stdout and "<- default" in layers.stdout, layers.stderr[-2000:]
    base = small_cnn("logits")
    keras.Model(base.input, [base.output, base.get_layer("gap").output]).save(tmp_path / "two_heads.keras")
    two = [subprocess.run([str(exe), "layers", str(tmp_path / "two_heads.keras"), *extra], capture_output=True, text=True,
                          timeout=600) for extra in ([], ["--output", "0"])]
    assert two[0].returncode == 2 and "choose one with --output" in two[0].stderr and "output=" not in two[0].stderr
    assert two[1].returncode == 0 and "<- default" in two[1].stdout, two[1].stderr[-2000:]


def test_evaluation_matches_the_pytorch_twin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """camlens evaluate's scores for a Keras model equal those of the same network in PyTorch."""
    from dataclasses import replace

    from camlens.evaluation.annotations import read_annotations
    from camlens.evaluation.run import FaithfulnessProtocol, dataset, evaluate
    from camlens.lens import Lens
    from camlens.models import Preprocessing
    from camlens.samples import sample_image

    names = ["ant", "bee", "cat", "dog"]
    rows = ["image,label,xmin,ymin,xmax,ymax"]
    for k, photo in enumerate(["chelsea", "coffee", "rocket", "astronaut"]):
        (tmp_path / "data" / names[k]).mkdir(parents=True)
        sample_image(photo).resize((24, 24)).save(tmp_path / "data" / names[k] / f"{photo}.png")
        rows.append(f"{names[k]}/{photo}.png,{names[k]},4,5,18,20")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    model = small_cnn("softmax")
    prep = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(12, 12), interpolation="bilinear")
    scores = {}
    for framework, lens in [
        ("keras", Lens(model, labels=tmp_path / "labels.txt", preprocessing=replace(prep, layout="NHWC"))),
        ("torch", Lens(_torch_twin(model), labels=tmp_path / "labels.txt", preprocessing=prep)),
    ]:
        items, problems = dataset(tmp_path / "data", lens, read_annotations(tmp_path / "boxes.csv"))
        assert problems == [] and len(items) == 4
        result = evaluate(lens, items, SPECS, faithful=FaithfulnessProtocol(steps=6), batch_size=3)
        assert result.images == 4 and result.localized == 4
        scores[framework] = result.scores
    for method in METHODS:
        k, t = scores["keras"][method], scores["torch"][method]
        assert k.keys() == t.keys()
        for key in k:
            assert k[key] == pytest.approx(t[key], abs=1e-3), (method, key)


def test_features_of_layers_named_dot_dot_stay_inside_out(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from camlens.cli.app import app

    inner = small_cnn("softmax", name="..")
    inp = keras.Input((12, 12, 3))
    model = keras.Model(inp, inner(inp), name="outer")
    model.save(tmp_path / "dots.keras")
    Image.new("RGB", (20, 20), (9, 99, 199)).save(tmp_path / "p.png")
    out = tmp_path / "a" / "b" / "out"
    result = CliRunner().invoke(app, ["features", str(tmp_path / "p.png"), "--model", str(tmp_path / "dots.keras"),
                                      "--layer", "../conv1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    made = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".png" and p.name != "p.png"]
    assert len(made) == 1 and made[0].parent == out, made


def test_the_low_level_api_takes_a_keras_model(batch: np.ndarray) -> None:
    model = small_cnn("logits")
    with GradCAM(model, layer="conv2") as cam, Explainer(model, "grad-cam", "conv2") as ex:
        with KerasExplainer(model, "gradcam") as ke:
            a, b, c = cam(batch, top=2), ex(batch, top=2), ke(batch, top=2)
    np.testing.assert_array_equal(a.maps["gradcam"]["conv2"], c.maps["gradcam"]["conv2"])
    np.testing.assert_array_equal(b.maps["gradcam"]["conv2"], c.maps["gradcam"]["conv2"])
    with pytest.raises(Exception, match="closed"):
        cam(batch)


def test_probe_scores_equal_the_pytorch_twins(batch: np.ndarray) -> None:
    from camlens.adapters.keras import routes
    from camlens.adapters.keras.graph import resolve
    from camlens.adapters.keras.head import find_head
    from camlens.adapters.pytorch.capture import TorchProbe

    model = small_cnn("softmax")
    twin = _torch_twin(model)
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    probe = routes.KerasProbe(model, batch, [resolve(model, "conv2")], find_head(model), max_batch=4)
    twin_probe = TorchProbe(twin, x, {"relu2": twin.relu2}, max_batch=5)
    masks = np.random.default_rng(0).uniform(size=(3, 12, 12)).astype("float32")
    np.testing.assert_allclose(probe.score_masked(masks, 0.25), twin_probe.score_masked(masks, 0.25), rtol=1e-4, atol=1e-4)
    acts = np.random.default_rng(1).uniform(size=(3, 2, 6, 12, 12)).astype("float32")
    ours, theirs = probe.score_replaced("conv2", acts), twin_probe.score_replaced("relu2", acts)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_dense_layer_is_refused_as_a_target(batch: np.ndarray) -> None:
    with KerasExplainer(small_cnn("softmax"), "gradcam", "gap") as ex, pytest.raises(LayerError, match="'gap' outputs shape"):
        ex(batch)
