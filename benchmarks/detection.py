"""Detection speed goals (issue #13), on this machine; prints figures, asserts nothing.

yolo11n at 640×640 (random weights, offline), each stage as the pipeline runs it (an `npuflow`
process, imports included, 2 threads where the rule gives 2):

1. export + simplify. Goal ≤ 30 s.
2. calibrate + quantize with 32 calibration images. Goal ≤ 45 s.
3. evaluate: the float reference + the int8 evaluation (8 images) + its per-layer analysis (its own job).
   Goal ≤ 60 s.

    python benchmarks/detection.py [--workdir DIR]

Also printed: the host decode + NMS time per image and the fidelity figures the evaluation wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIG = {
    "weights": "random",
    "targets": ["ax650n-npu3"],
    "calibration": {"method": "minmax", "images": 32, "dataset": "samples"},
    "evaluation": {"images": 8},
    "models": {"yolo11n": {"source": "ultralytics:yolo11n", "task": "detection", "input": {"shape": [1, 3, 640, 640]}}},
}


def npuflow(workdir: Path, *args: str) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(["npuflow", *args], cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: npuflow {' '.join(args[:3])}…\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - start


# Random weights score almost no box above the deployment threshold; the host post-processing is
# also timed at this one, where boxes are kept, as a trained model's would be.
RANDOM_CONF = 0.01


def decode_at(model_dir: Path, conf: float) -> tuple[float, float]:
    """(median ms, boxes per image) of decode + NMS on the int8 model's outputs at `conf`."""
    import numpy as np

    from npuflow.evaluation.detect import postprocess
    from npuflow.evaluation.detect_eval import decode_nms_ms
    from npuflow.util.onnxutil import input_name, session

    manifest = json.loads((model_dir / "fetch" / "manifest.json").read_text())
    images = np.load(model_dir / "eval" / "reference.npz")["images"]
    sess = session(model_dir / "quant" / "int8.onnx", 2)
    names = [o.name for o in sess.get_outputs()]
    runs = [dict(zip(names, sess.run(None, {input_name(model_dir / "quant" / "int8.onnx"): img[None]}))) for img in images]
    settings = {"conf": conf, "iou": 0.7, "max_det": 300}
    hw = CONFIG["models"]["yolo11n"]["input"]["shape"][2:]
    boxes = np.mean([len(postprocess(r, manifest["head"], hw, conf)) for r in runs])
    return decode_nms_ms(runs, manifest["head"], hw, settings), float(boxes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a fresh temporary one)")
    args = parser.parse_args()
    w = (args.workdir or Path(tempfile.mkdtemp(prefix="npuflow-detbench-"))).resolve()
    w.mkdir(parents=True, exist_ok=True)
    (w / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    m = ["--config", "config.yaml", "--model", "yolo11n"]
    d = "results/yolo11n"
    npuflow(w, "fetch", *m, "--out-dir", f"{d}/fetch")
    t = {
        "export": npuflow(
            w, "export", *m, "--fetch-dir", f"{d}/fetch", "--out", f"{d}/model.onnx", "--report", f"{d}/export.json", "--threads", "2"
        ),
        "simplify": npuflow(
            w, "simplify", f"{d}/model.onnx", "--out", f"{d}/model.sim.onnx", "--report", f"{d}/simplify.json", "--threads", "2"
        ),
    }
    npuflow(w, "surgery", f"{d}/model.sim.onnx", *m, "--out", f"{d}/model.surgery.onnx", "--report", f"{d}/surgery.json")
    manifest = ["--manifest", f"{d}/fetch/manifest.json"]
    t["calibrate"] = npuflow(
        w,
        "calibrate",
        f"{d}/model.surgery.onnx",
        *m,
        *manifest,
        "--out",
        f"{d}/calibration.ranges.json",
        "--report",
        f"{d}/calibration.json",
    )
    t["quantize"] = npuflow(
        w,
        "quantize",
        f"{d}/model.surgery.onnx",
        "--ranges",
        f"{d}/calibration.ranges.json",
        "--calibration",
        f"{d}/calibration.json",
        "--out",
        f"{d}/quant/int8.onnx",
        "--report",
        f"{d}/quant/int8.json",
    )
    ref = ["--reference", f"{d}/eval/reference.npz", "--reference-report", f"{d}/eval/reference.json"]
    t["reference"] = npuflow(
        w, "reference", f"{d}/model.surgery.onnx", *m, *manifest, "--out", ref[1], "--report", ref[3], "--threads", "2"
    )
    t["evaluate"] = npuflow(
        w,
        "evaluate",
        f"{d}/quant/int8.onnx",
        *m,
        *ref,
        *manifest,
        "--out",
        f"{d}/eval/int8.json",
        "--threads",
        "2",
    )
    t["evaluate"] += npuflow(
        w,
        "analyse",
        f"{d}/quant/int8.onnx",
        *m,
        "--float-model",
        f"{d}/model.surgery.onnx",
        "--reference",
        ref[1],
        "--out",
        f"{d}/eval/int8.layers.json",
        "--threads",
        "2",
    )
    ev = json.loads((w / d / "eval" / "int8.json").read_text())
    print(f"yolo11n 640×640, random weights, {os.cpu_count()} cores, in {w}")
    print(
        f"  export + simplify:          {t['export']:5.1f} s + {t['simplify']:5.1f} s = {t['export'] + t['simplify']:5.1f} s (goal ≤ 30 s)"
    )
    print(
        f"  calibrate + quantize (32):  {t['calibrate']:5.1f} s + {t['quantize']:5.1f} s = {t['calibrate'] + t['quantize']:5.1f} s (goal ≤ 45 s)"
    )
    print(
        f"  reference + evaluate+analyse: {t['reference']:5.1f} s + {t['evaluate']:5.1f} s = {t['reference'] + t['evaluate']:5.1f} s (goal ≤ 60 s)"
    )
    print(
        f"  host: fp32 {ev['host_fp32_ms']:.1f} ms, int8 {ev['host_int8_ms']:.1f} ms, decode + NMS {ev['host_decode_nms_ms']:.2f} ms "
        f"({ev['boxes_per_image']:.1f} boxes per image at conf {ev['detection']['conf']})"
    )
    print(f"  head outputs int8 vs float: cosine {ev['cosine']:.4f}, SQNR {ev['sqnr_db']:.1f} dB")
    low = decode_at(w / d, RANDOM_CONF)
    print(f"  decode + NMS at conf {RANDOM_CONF} (random weights score low): {low[0]:.2f} ms per image, {low[1]:.1f} boxes per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
