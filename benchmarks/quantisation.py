"""Quantisation speed goals (issue #4), on this machine; prints figures, asserts nothing.

1. efficientvit_m5, 32 calibration images: `npuflow calibrate` + `npuflow quantize` wall time
   (processes as the pipeline runs them, imports included). Goal ≤ 20 s.
2. segformer_b0_cityscapes (640×1280), the same two commands. Goal ≤ 3 min.
3. A fifth target adds no calibration: after a run, `snakemake -n` with one more target profile
   plans no calibrate job.

    python benchmarks/quantisation.py [--workdir DIR]

The float models are made by the pipeline itself (`snakemake results/<model>/model.surgery.onnx`)
in the work folder first (random weights offline); the preprocessed images are not cached between
the timed runs, so each includes image preparation.
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

from pipeline_speed import snakemake as timed_snakemake  # the script's folder is on sys.path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("efficientvit_m5", "segformer_b0_cityscapes")


def run(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])}…\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def snakemake(workdir: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    return timed_snakemake(workdir, configfile, 2, *args)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a fresh temporary one)")
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="npuflow-qbench-"))).resolve()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["models"] = {m: config["models"][m] for m in MODELS}
    configfile = workdir / "bench.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    configfile.write_text(yaml.safe_dump(config))
    proc = snakemake(workdir, configfile, *[f"results/{m}/model.surgery.onnx" for m in MODELS])
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    from npuflow.pipeline.config import model_spec, validate_config

    validate_config(config)
    print(f"work folder: {workdir}")
    for m in MODELS:
        spec = model_spec(config, m)
        d = workdir / "bench" / m
        d.mkdir(parents=True, exist_ok=True)
        r = f"results/{m}"
        calib_s = run(
            [
                "npuflow",
                "calibrate",
                f"{r}/model.surgery.onnx",
                "--spec",
                json.dumps(spec),
                "--manifest",
                f"{r}/fetch/manifest.json",
                "--out",
                str(d / "ranges.json"),
                "--report",
                str(d / "calibration.json"),
            ],
            workdir,
        )
        quant_s = run(
            [
                "npuflow",
                "quantize",
                f"{r}/model.surgery.onnx",
                "--ranges",
                str(d / "ranges.json"),
                "--calibration",
                str(d / "calibration.json"),
                "--out",
                str(d / "int8.onnx"),
                "--report",
                str(d / "int8.json"),
            ],
            workdir,
        )
        inner = json.loads((d / "calibration.json").read_text())
        print(
            f"{m}: {spec['calibration']['images']} images, method {spec['calibration']['method']}: calibrate {calib_s:.1f} s "
            f"(images {inner['seconds_preprocess']:.1f} s, collect {inner['seconds_collect']:.1f} s) + quantize {quant_s:.1f} s "
            f"= {calib_s + quant_s:.1f} s"
        )
    # A fifth target on models already calibrated: which jobs would run?
    proc = snakemake(workdir, configfile)  # finish the run so the plan below is against complete results
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    config["target_profiles"] = {"my-npu": {"base": "ax650n-npu3", "mode": "a fifth target for the benchmark"}}
    config["targets"] = config["targets"] + ["my-npu"]
    fifth = workdir / "fifth.yaml"
    fifth.write_text(yaml.safe_dump(config))
    plan = snakemake(workdir, fifth, "-n", "--quiet", "rules")
    jobs = {
        line.split()[0]: int(line.split()[1]) for line in plan.stdout.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    print(f"fifth target planned jobs by rule: {jobs}; calibrate jobs: {jobs.get('calibrate', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
