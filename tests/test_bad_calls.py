"""Bad library calls: each a typed camlens error of one line naming the argument, never a raw
NumPy, PIL or framework exception (the cases an outside probe found raw)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from camlens import runner
from camlens.core.methods import GradCAM
from camlens.errors import CamlensError, ImageError, LayerError, MethodError, ModelError, TargetError
from camlens.evaluation.boxes import boxes_from_map
from camlens.evaluation.localization import LocalizationProtocol, localize
from camlens.imageio import read_image
from camlens.lens import Lens
from camlens.models.preprocess import Preprocessing
from camlens.models.registry import resolve_device
from camlens.render import overlay
from camlens.training.fit import TrainConfig, train
from tests.conftest import TinyGapNet

PICTURE = np.full((40, 48, 3), 120, np.uint8)


@pytest.fixture(scope="module")
def tiny_lens() -> Lens:
    return Lens(TinyGapNet().eval(), preprocessing=Preprocessing(input_size=(32, 32)))


def explainer(tiny_lens: Lens) -> Any:
    from camlens.adapters import Explainer

    return Explainer(tiny_lens.loaded.model, "gradcam", "conv")


CASES: list[tuple[str, Callable[[Lens, Path], object], type[CamlensError], str]] = [
    ("model of no kind", lambda lens, tmp: Lens(123), ModelError, "model must be a model name"),
    ("preprocessing a string", lambda lens, tmp: Lens(TinyGapNet(), preprocessing="imagenet"), ModelError,  # type: ignore[arg-type]
     "preprocessing must be a camlens Preprocessing"),
    ("input size 0", lambda lens, tmp: Preprocessing(input_size=(0, 0)), CamlensError, "input_size"),
    ("2 channels", lambda lens, tmp: Preprocessing(channels=2), CamlensError, "channels must be 3"),
    ("2 means for 3 channels", lambda lens, tmp: Preprocessing(mean=(0.5, 0.5)), CamlensError, "mean must hold"),
    ("device a float", lambda lens, tmp: resolve_device(3.5), ModelError, "unknown device"),  # type: ignore[arg-type]
    ("no images", lambda lens, tmp: lens.explain([]), ImageError, "no images given"),
    ("no images to predict", lambda lens, tmp: lens.predict([]), ImageError, "no images given"),
    ("5-channel array", lambda lens, tmp: lens.explain([np.zeros((8, 8, 5), np.uint8)]), ImageError, "C = 1, 3 or 4"),
    ("empty array", lambda lens, tmp: lens.explain([np.zeros((0, 0, 3), np.uint8)]), ImageError, "empty"),
    ("image path an int", lambda lens, tmp: read_image(123), ImageError, "str or a Path"),  # type: ignore[arg-type]
    ("method None", lambda lens, tmp: lens.explain([PICTURE], None), MethodError, "method must be"),  # type: ignore[arg-type]
    ("method 123", lambda lens, tmp: lens.explain([PICTURE], 123), MethodError, "method must be"),  # type: ignore[arg-type]
    ("layer an int", lambda lens, tmp: lens.explain([PICTURE], layer=123), LayerError, "layer must be"),
    ("layer an empty list", lambda lens, tmp: lens.explain([PICTURE], layer=[]), LayerError, "empty list"),
    ("layer list with an int", lambda lens, tmp: lens.explain([PICTURE], layer=["conv", 5]), LayerError, "not int"),
    ("target a float", lambda lens, tmp: lens.explain([PICTURE], target=1.5), TargetError, "not float"),
    ("target a dict", lambda lens, tmp: lens.explain([PICTURE], target={"a": 1}), TargetError, "not dict"),
    ("top a string", lambda lens, tmp: lens.explain([PICTURE], top="5"), CamlensError, "top must be an integer"),  # type: ignore[arg-type]
    ("top 0", lambda lens, tmp: lens.predict([PICTURE], top=0), CamlensError, "top must be at least 1"),
    ("layout keys not names", lambda lens, tmp: lens.explain([PICTURE], layer="conv", layout={5: "nchw"}), LayerError,
     "layer names"),
    ("1-channel batch", lambda lens, tmp: explainer(lens)(torch.zeros(1, 1, 32, 32)), ModelError,
     "the model failed on an input of shape (1, 1, 32, 32)"),
    ("integer batch", lambda lens, tmp: explainer(lens)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), CamlensError,
     "float batch tensor"),
    ("target function fails", lambda lens, tmp: explainer(lens)(torch.zeros(1, 3, 32, 32), lambda s: 1 / 0), TargetError,
     "the target function failed: ZeroDivisionError"),
    ("save to an int", lambda lens, tmp: lens.explain([PICTURE])[0][0].save(123), CamlensError, "file path"),  # type: ignore[arg-type]
    ("save to a folder", lambda lens, tmp: lens.explain([PICTURE])[0][0].save(tmp), CamlensError, "is a folder"),
    ("colormap None", lambda lens, tmp: lens.explain([PICTURE])[0][0].overlay(None), CamlensError, "colormap must be"),  # type: ignore[arg-type]
    ("alpha a string", lambda lens, tmp: lens.explain([PICTURE])[0][0].overlay(alpha="0.5"), CamlensError,  # type: ignore[arg-type]
     "alpha must be a number"),
    ("overlay of a list", lambda lens, tmp: overlay(Image.new("RGB", (2, 2)), [[0.0]]), CamlensError, "does not match"),  # type: ignore[arg-type]
    ("run batch size a string", lambda lens, tmp: runner.run(lens, [tmp / "a.png"], tmp, methods=["gradcam"],
                                                             batch_size="8"), CamlensError, "batch_size must be"),  # type: ignore[arg-type]
    ("run out an int", lambda lens, tmp: runner.run(lens, [tmp / "a.png"], 5, methods=["gradcam"]), CamlensError,  # type: ignore[arg-type]
     "out must be a file path"),
    ("train epochs a string", lambda lens, tmp: train([], tmp / "m.pt", TrainConfig(epochs="2")), CamlensError,  # type: ignore[arg-type]
     "epochs must be an integer"),
    ("train on a list", lambda lens, tmp: train([], tmp / "m.pt"), CamlensError, "LabelledImages"),  # type: ignore[arg-type]
    ("boxes of a 1-D map", lambda lens, tmp: boxes_from_map(np.zeros(5)), CamlensError, "(H, W) map"),
    ("boxes of a 0x0 map", lambda lens, tmp: boxes_from_map(np.zeros((0, 0))), CamlensError, "non-empty"),
    ("boxes of a NaN map", lambda lens, tmp: boxes_from_map(np.full((4, 4), np.nan)), CamlensError, "NaN"),
    ("boxes threshold a string", lambda lens, tmp: boxes_from_map(np.eye(4), "0.2"), CamlensError, "threshold must be"),  # type: ignore[arg-type]
    ("localize a 1-D map", lambda lens, tmp: localize(np.zeros(5), [], LocalizationProtocol()), CamlensError, "(H, W) map"),
    ("localize truth None", lambda lens, tmp: localize(np.eye(4), None, LocalizationProtocol()), CamlensError,  # type: ignore[arg-type]
     "truth must be a list of Box"),
    ("maxbox step 0", lambda lens, tmp: LocalizationProtocol(maxbox_step=0), CamlensError, "maxbox_step"),
]


@pytest.mark.parametrize(("call", "error", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_calls_raise_one_line_camlens_errors(tiny_lens: Lens, tmp_path: Path, call: Callable[[Lens, Path], object],
                                                 error: type[CamlensError], words: str) -> None:
    with pytest.raises(error) as caught:
        call(tiny_lens, tmp_path)
    message = str(caught.value)
    assert words in message and "\n" not in message


def test_one_image_and_method_classes_are_taken_as_meant(tiny_lens: Lens) -> None:
    one = tiny_lens.explain(PICTURE, GradCAM)  # an image not in a list, a method class: as [image], its name
    assert len(one) == 1 and one[0][0].method == "gradcam" and one[0][0].heatmap.shape == (40, 48)
    batch = torch.rand(1, 3, 32, 32, dtype=torch.float64)  # a float64 batch for a float32 model is cast
    from camlens.adapters import Explainer

    result = Explainer(tiny_lens.loaded.model, "gradcam", "conv")(batch)
    expected = Explainer(tiny_lens.loaded.model, "gradcam", "conv")(batch.float())
    np.testing.assert_allclose(result.maps["gradcam"]["conv"], expected.maps["gradcam"]["conv"], atol=1e-6)
