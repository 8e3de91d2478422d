"""Shared fixtures: small random-weight models taken through the stages once per test session."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npuflow.config import model_spec, validate_config

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "tests" / "config.tiny.yaml"


def snakemake_command(workdir: Path, *args, configfile: Path = TINY_CONFIG, cores: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--cores",
        str(cores),
        "-d",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]


def snakemake_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `npuflow`
    return env


def snakemake(workdir: Path, *args, configfile: Path = TINY_CONFIG, cores: int = 2) -> subprocess.CompletedProcess:
    """Snakemake on this repository's workflow, in `workdir`, as a user runs it (profile included)."""
    return subprocess.run(
        snakemake_command(workdir, *args, configfile=configfile, cores=cores),
        capture_output=True,
        text=True,
        env=snakemake_env(),
        cwd=workdir,
    )


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """The tiny config through the whole workflow, once per session (test_report reuses its front stages)."""
    workdir = tmp_path_factory.mktemp("e2e")
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


@contextlib.contextmanager
def mlflow_server_at(folder: Path):
    """A real `mlflow server` on 127.0.0.1 and a free port, its SQLite store and artifacts in
    `folder`; yields its URL and stops every process it started."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError as e:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from e
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def pytest_collection_finish(session):
    """The Slurm test's runs wait on the scheduler most of the time, so they start as soon as the
    tests are collected and go on beside the others (tests/slurm_runs.py)."""
    if session.config.option.collectonly:
        return
    if any(item.path.name == "test_slurm.py" and "slurm" in getattr(item, "fixturenames", ()) for item in session.items):
        import slurm_runs

        slurm_runs.start(session.config)


def reference_and_evaluate(quant_onnx, spec: dict, paths: dict, d: Path, recipe: str = "int8") -> tuple[dict, dict]:
    """The float reference and the evaluation of `quant_onnx` against it, as the pipeline runs them, in folder `d`."""
    from npuflow.evaluate import evaluate, reference

    ref = reference(paths["surgery_onnx"], paths["manifest"], spec, d / "r.npz", d / "r.json")
    report = evaluate(
        quant_onnx, paths["surgery_onnx"], d / "r.npz", d / "r.json", paths["manifest"], spec, recipe, d / "e.json", d / "l.json"
    )
    return ref, report


def mlflow_runs(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    exp = client.get_experiment_by_name("npuflow-tiny")
    return client, client.search_runs([exp.experiment_id])


# A tiny SegFormer (same architecture family as the default one, a fraction of the width) so the
# segmentation path runs in seconds.
TINY_SEGFORMER = {
    "model_type": "segformer",
    "architectures": ["SegformerForSemanticSegmentation"],
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [8, 16, 24, 32],
    "num_attention_heads": [1, 1, 1, 1],
    "decoder_hidden_size": 32,
    "num_labels": 5,
}


def make_config(**models) -> dict:
    config = {
        "weights": "random",
        "targets": ["ax650n-npu3", "rdk-x5"],
        "calibration": {"images": 4},
        "evaluation": {"images": 3, "latency_repeats": 3},
        "models": models,
    }
    return validate_config(copy.deepcopy(config))


def classifier_entry(**extra) -> dict:
    return {
        "source": "timm:efficientvit_m0",
        "task": "classification",
        "input": {"shape": [1, 3, 224, 224]},
        "surgery": ["fold_head_bn"],
        "reparameterize": False,
        **extra,
    }


def segformer_entry(**extra) -> dict:
    return {
        "source": "hf:tiny/segformer-test",
        "hf_config": TINY_SEGFORMER,
        "task": "segmentation",
        "input": {"shape": [1, 3, 64, 128]},
        "opset": 11,
        "surgery": ["append_argmax"],
        **extra,
    }


def run_front(spec: dict, root: Path) -> dict:
    """fetch → export → simplify → surgery → calibrate for one model; returns the file paths."""
    from npuflow.calibrate import calibrate
    from npuflow.export import export
    from npuflow.fetch import fetch
    from npuflow.simplify import simplify
    from npuflow.surgery import surgery

    d = root / spec["name"]
    p = {
        "fetch": d / "fetch",
        "manifest": d / "fetch" / "manifest.json",
        "onnx": d / "model.onnx",
        "export": d / "export.json",
        "sim": d / "model.sim.onnx",
        "simplify": d / "simplify.json",
        "surgery_onnx": d / "model.surgery.onnx",
        "surgery": d / "surgery.json",
        "ranges": d / "calibration.ranges.json",
        "calibration": d / "calibration.json",
    }
    fetch(spec, p["fetch"], root)
    export(spec, p["fetch"], p["onnx"], p["export"], threads=2)
    simplify(p["onnx"], p["sim"], p["simplify"], threads=2)
    surgery(p["sim"], spec["surgery"], p["surgery_onnx"], p["surgery"], threads=2)
    calibrate(p["surgery_onnx"], p["manifest"], spec, p["ranges"], p["calibration"])
    return p


@pytest.fixture(scope="session")
def classifier(tmp_path_factory):
    """efficientvit_m0 (random weights) through fetch … calibrate."""
    spec = model_spec(make_config(evit=classifier_entry()), "evit")
    return spec, run_front(spec, tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory):
    """A tiny SegFormer (random weights) through fetch … calibrate, with the ArgMax head."""
    spec = model_spec(make_config(seg=segformer_entry()), "seg")
    return spec, run_front(spec, tmp_path_factory.mktemp("segmenter"))
