"""Score-CAM and Ablation-CAM, camlens vs pytorch-grad-cam and torchcam, side by side in one run.

Per photo, per model and per method, each library runs in its own fresh process, one after
another. Each run reports:
- its wall time;
- the inputs it forwarded, counted by a pre-hook on the model (rows of every call);
- its peak RSS beyond what the process held once the model was loaded.

Every library explains the same preprocessed tensor, at the same layer, for the top-1 class,
with 32 inputs per forward. The models are the bundled EfficientNet-Lite0 (pretrained; layer
`bn2`, 1280 channels) and torchvision's ResNet-50. ResNet-50's weights are random (offline),
so its count of live channels is not a pretrained model's. ResNet-50 is measured at layer4
and at layer3 for Ablation-CAM. The photos are scikit-image's samples.

Printed alongside:
- ratios of camlens to the fastest peer;
- the number of distinct live channel masks, the least an exact Score-CAM must forward;
- the largest difference of camlens' Score-CAM from the naive definition (every channel
  forwarded, constant ones weighted 0), both min-max scaled, computed in the same process;
- Faster Score-CAM's (top-64 channels) error against exact Score-CAM;
- camlens' Score-CAM again at its default of 8 inputs per forward: its peak memory follows
  the chunk, not the channel count (and on 2 CPU cores smaller batches run faster per input).

Run: python bench/many_forward_cost.py [--photos chelsea,coffee,astronaut] [--models effnet,resnet50] [--skip-peers]
(about 10 minutes per photo on 2 CPU cores with the peers, most of it theirs)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

BATCH = 32


def _model(name: str) -> tuple[torch.nn.Module, str]:
    if name == "effnet":
        from camlens.models import load_model

        return load_model("efficientnet_lite0", device="cpu").model, "bn2"
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50().eval(), "layer4"


def _input(photo: str) -> torch.Tensor:
    from camlens.lens import Lens
    from camlens.samples import sample_image

    return Lens(device="cpu").tensor([sample_image(photo)])  # the bundled model's preprocessing: 224x224


def _module(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    return dict(model.named_modules())[layer]


def _naive_score_cam(model: torch.nn.Module, layer: str, x: torch.Tensor, cls: int) -> np.ndarray:
    """Every channel forwarded: the definition, with no skipping (constant channels weigh 0)."""
    import torch.nn.functional as F

    seen: list[torch.Tensor] = []
    handle = _module(model, layer).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    a = seen[0][0]
    up = F.interpolate(a[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    masks = torch.where(hi > lo, (up - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)
    weights = torch.zeros(a.shape[0])
    with torch.no_grad():
        for start in range(0, a.shape[0], BATCH):
            probs = F.softmax(model(x * masks[start : start + BATCH, None]), dim=1)[:, cls]
            weights[start : start + BATCH] = probs
    weights[(hi <= lo).flatten()] = 0.0
    return torch.relu((weights[:, None, None] * a).sum(0)).numpy()


def one(library: str, method: str, model_name: str, layer: str | None, photo: str) -> dict[str, object]:
    """One measurement, in this process (see the module docstring)."""
    torch.set_num_threads(2)
    model, default = _model(model_name)
    layer = layer or default
    x = _input(photo)
    with torch.no_grad():
        cls = int(model(x).argmax())
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import ScoreCAM as TorchcamScoreCAM

    from camlens import Explainer  # every library imported before the clock starts
    from camlens.core import normalize, upsample

    rows: list[int] = []
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    handle = model.register_forward_pre_hook(lambda m, args: rows.append(int(args[0].shape[0])))
    start = time.perf_counter()
    result: dict[str, object] = {}
    method, _, chunk = method.partition("@")  # scorecam@8: camlens with max_batch=8
    if library == "camlens":
        with Explainer(model, method, layer, max_batch=int(chunk or BATCH)) as ex:
            raw = ex(x, cls).maps[method][layer][0, 0]
        result["map"] = normalize(upsample(raw, (224, 224))).tolist() if method != "scorecam" else normalize(raw).tolist()
    elif library == "pgc":
        cam_class = ScoreCAM if method == "scorecam" else AblationCAM
        cam = cam_class(model=model, target_layers=[_module(model, layer)])
        cam.batch_size = BATCH
        cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])
    else:
        with TorchcamScoreCAM(model, target_layer=layer, batch_size=BATCH) as extractor:
            with torch.no_grad():
                out = model(x)
            extractor(class_idx=cls, scores=out)
    result["seconds"] = time.perf_counter() - start
    handle.remove()
    result["rows"] = sum(rows)
    result["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    if library == "camlens" and method == "scorecam" and not chunk:
        seen: list[torch.Tensor] = []
        hook = _module(model, layer).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
        with torch.no_grad():
            model(x)
        hook.remove()
        a = seen[0][0].numpy()
        live = [k for k in range(a.shape[0]) if a[k].max() > a[k].min()]
        masks = normalize(upsample(a[live], (224, 224)))
        result["distinct_live"] = len({m.tobytes() for m in masks})
        result["channels"] = a.shape[0]
        naive = normalize(_naive_score_cam(model, layer, x, cls))  # both min-max scaled at the layer's resolution
        result["naive_max_abs_diff"] = float(np.abs(np.asarray(result["map"]) - naive).max())
    return result


def _run(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="chelsea")
    parser.add_argument("--models", default="effnet,resnet50")
    parser.add_argument("--skip-peers", action="store_true", help="camlens only (its counts, memory and exactness)")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        library, method, model_name, layer, photo = args.one
        print(json.dumps(one(library, method, model_name, None if layer == "-" else layer, photo)))
        return
    print(f"{'model':9} {'photo':10} {'method':15} {'layer':7} {'library':9} {'seconds':>8} {'inputs':>7} {'peak MB':>8}  notes")
    for model_name in args.models.split(","):
        for photo in args.photos.split(","):
            plan = [("scorecam", "-", ["pgc", "torchcam"]), ("ablationcam", "-", ["pgc"])]
            if model_name == "resnet50":
                plan.append(("ablationcam", "layer3", ["pgc"]))
            exact: dict[str, object] = {}
            fastest_score = None
            for method, layer, peers in plan:
                mine = _run("camlens", method, model_name, layer, photo)
                if method == "scorecam":
                    exact = mine
                results = {"camlens": mine} | ({} if args.skip_peers else {p: _run(p, method, model_name, layer, photo)
                                                                          for p in peers})
                fastest = min((r["seconds"] for k, r in results.items() if k != "camlens"), default=None)
                if method == "scorecam":
                    fastest_score = fastest
                for library, r in results.items():
                    notes = ""
                    if library == "camlens":
                        if fastest:
                            notes = f"{r['seconds'] / fastest:.3f}x the fastest peer"  # type: ignore[operator]
                        if "distinct_live" in r:
                            notes += (f"; {r['distinct_live']} distinct live masks of {r['channels']} channels; "
                                      f"max |naive - camlens| {r['naive_max_abs_diff']:.2e}")
                    print(f"{model_name:9} {photo:10} {method:15} {layer if layer != '-' else 'auto':7} {library:9} "
                          f"{r['seconds']:8.1f} {r['rows']:7d} {r['peak_mb']:8.0f}  {notes}", flush=True)
            fast = _run("camlens", "fasterscorecam", model_name, "-", photo)
            from camlens.core import normalize, upsample

            error = np.abs(normalize(upsample(np.asarray(exact["map"]), (224, 224))) - np.asarray(fast["map"])).max()
            speedup = float(exact["seconds"]) / float(fast["seconds"])  # type: ignore[arg-type]
            versus = f"; {fastest_score / float(fast['seconds']):.1f}x faster than the fastest peer" if fastest_score else ""  # type: ignore[arg-type]
            print(f"{model_name:9} {photo:10} {'fasterscorecam':15} {'auto':7} {'camlens':9} {fast['seconds']:8.1f} "
                  f"{fast['rows']:7d} {fast['peak_mb']:8.0f}  top-64 channels: max error vs exact Score-CAM {error:.3f} "
                  f"(maps in [0, 1]); {speedup:.1f}x faster than exact{versus}", flush=True)
            small = _run("camlens", "scorecam@8", model_name, "-", photo)
            print(f"{model_name:9} {photo:10} {'scorecam':15} {'auto':7} {'camlens':9} {small['seconds']:8.1f} "
                  f"{small['rows']:7d} {small['peak_mb']:8.0f}  camlens' default --max-batch 8 instead of 32: peak "
                  f"{small['peak_mb']:.0f} MB instead of {exact['peak_mb']:.0f}, "
                  f"{float(exact['seconds']) / float(small['seconds']):.2f}x as fast", flush=True)

if __name__ == "__main__":
    main()
