"""End to end: Snakemake on tests/config.tiny.yaml (one small timm model, two targets), offline."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, snakemake

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def mlflow_runs(workdir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/results/mlflow.db")
    exp = client.get_experiment_by_name("npuflow-tiny")
    return client, client.search_runs([exp.experiment_id])


def test_mlflow_holds_one_finished_run_per_model_and_target(pipeline):
    client, runs = mlflow_runs(pipeline)
    assert sorted(r.data.tags["target"] for r in runs) == ["ax650n-npu3", "rdk-x5"]
    for r in runs:
        assert r.info.status == "FINISHED"
        tags, metrics = r.data.tags, r.data.metrics
        assert (tags["model"], tags["task"], tags["weights"], tags["family"]) == ("efficientvit_m0", "classification", "random", "efficientvit_msra")
        assert "RANDOM" in tags["mlflow.note.content"] and tags["npuflow.latency"] == "simulated"
        assert metrics["latency_ms"] > 0 and metrics["fps"] > 0 and 0.5 < metrics["cosine"] <= 1.0
        assert metrics["host_fp32_ms"] > 0 and metrics["host_int8_ms"] > 0 and metrics["params"] == 2_349_436
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "reports")}
        assert {"reports/build.json", "reports/evaluate.json", "reports/manifest.json"} <= artifacts


def test_summary_and_report_cover_every_pair(pipeline):
    with open(pipeline / "results" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["target"]) for r in rows] == [("efficientvit_m0", "ax650n-npu3"), ("efficientvit_m0", "rdk-x5")]
    for r in rows:
        assert r["weights"] == "random" and float(r["latency_ms"]) > 0 and float(r["host_int8_ms"]) > 0
        assert 0 < float(r["cosine"]) <= 1 and r["run_id"]
    x5 = next(r for r in rows if r["target"] == "rdk-x5")
    assert int(x5["subgraphs"]) > 1  # Softmax on the RDK X5's CPU splits the graph
    page = (pipeline / "results" / "report.html").read_text()
    assert "Random weights" in page and "ax650n-npu3" in page and "simulated" in page


def test_targets_with_one_recipe_share_the_quantised_model_and_its_evaluation(pipeline):
    model = pipeline / "results" / "efficientvit_m0"
    assert sorted(p.name for p in (model / "quant").iterdir()) == ["int8.json", "int8.onnx"]
    assert sorted(p.name for p in (model / "eval").iterdir()) == ["int8.json", "reference.json", "reference.npz"]


def test_second_run_does_nothing(pipeline):
    proc = snakemake(pipeline)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_forced_logging_reuses_runs(pipeline):
    proc = snakemake(pipeline, "--forcerun", "track")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, runs = mlflow_runs(pipeline)
    assert len(runs) == 2
    runs = yaml.safe_load((pipeline / "results" / "efficientvit_m0" / "track.json").read_text())["runs"]
    assert sorted(runs) == ["ax650n-npu3", "rdk-x5"] and all(r["reused"] for r in runs.values())


def planned_jobs(workdir, configfile) -> set[tuple[str, str]]:
    """(rule, model) of every job a dry run would run."""
    proc = snakemake(workdir, "-n", configfile=configfile)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs, rule = set(), None
    for line in proc.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("wildcards:") and rule:
            wildcards = dict(w.split("=") for w in line.split(":", 1)[1].strip().split(", "))
            jobs.add((rule, wildcards.get("model", "")))
    return jobs


def test_changed_entry_reruns_only_what_reads_the_change(pipeline, tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["models"]["second"] = dict(config["models"]["efficientvit_m0"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert {model for _, model in planned_jobs(pipeline, tmp_path / "c.yaml")} == {"second"}

    del config["models"]["second"]
    config["models"]["efficientvit_m0"]["calibration"] = {"images": 5}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    rules = {rule for rule, _ in planned_jobs(pipeline, tmp_path / "c.yaml")}
    assert rules == {"calibrate", "quantize", "build", "evaluate", "track"}


def test_bad_config_fails_before_any_job_naming_the_field(tmp_path):
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["models"]["efficientvit_m0"]["input"]["shape"] = [1, 3, 224]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, configfile=tmp_path / "c.yaml")
    assert proc.returncode != 0
    assert "models.efficientvit_m0.input.shape" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


TINY_MODEL_TEXT = """  efficientvit_m0:
    source: "timm:efficientvit_m0"
    task: classification
    input: {shape: [1, 3, 224, 224]}
    surgery: [fold_head_bn]
    reparameterize: false
"""


@pytest.mark.parametrize(
    "edit, where, expected",
    [
        # The same model name twice: Snakemake's YAML loader would keep the second silently.
        (lambda t: t + TINY_MODEL_TEXT.replace("fold_head_bn", "append_argmax"), "models.efficientvit_m0", "given twice"),
        (lambda t: t.replace("[fold_head_bn]", "[append_argmax]"), "models.efficientvit_m0.surgery", "task: segmentation"),
        (lambda t: t.replace("reparameterize: false", "reparameterize: false\n    opset: 21"), "models.efficientvit_m0.opset", "maximum of 20"),
        (lambda t: t.replace("targets: [ax650n-npu3, rdk-x5]", "targets: [ax650n-npu3, rdk-x50]"), "targets.1", "unknown target 'rdk-x50'"),
    ],
    ids=["duplicate-model", "append_argmax-on-classifier", "opset-21", "unknown-target"],
)
def test_bad_config_fails_dry_run_before_any_job(tmp_path, edit, where, expected):
    text = (REPO / "tests" / "config.tiny.yaml").read_text()
    assert TINY_MODEL_TEXT in text
    (tmp_path / "c.yaml").write_text(edit(text))
    proc = snakemake(tmp_path, "-n", configfile=tmp_path / "c.yaml")
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and f"{where}: " in out and expected in out, out[-2000:]
    assert "Job stats" not in out and "rule fetch" not in out and not (tmp_path / "results").exists()


def test_run_left_unfinished_by_a_killed_job_is_retired(pipeline):
    """A logging job killed after creating its run leaves it RUNNING; the next logging retires it."""
    from npuflow.track import CURRENT_TAG

    client, runs = mlflow_runs(pipeline)
    exp_id = runs[0].info.experiment_id
    orphan = client.create_run(exp_id, tags={"model": "efficientvit_m0", "target": "rdk-x5", CURRENT_TAG: "true"})
    proc = snakemake(pipeline, "--forcerun", "track")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, runs = mlflow_runs(pipeline)
    current = [r for r in runs if r.data.tags.get(CURRENT_TAG) == "true"]
    assert sorted(r.data.tags["target"] for r in current) == ["ax650n-npu3", "rdk-x5"]
    assert all(r.info.status == "FINISHED" for r in current)
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend in a temp dir); stopped with every
    process it started."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mlflow server did not start")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_logs_to_a_remote_tracking_server_when_asked(pipeline, mlflow_server, monkeypatch):
    import json
    import urllib.request

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    env_run = subprocess.run([*SNAKEMAKE, "-d", str(pipeline), "--configfile", str(REPO / "tests" / "config.tiny.yaml")],
                             capture_output=True, text=True, cwd=pipeline,
                             env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert env_run.returncode == 0, env_run.stderr[-2000:]
    assert "init_mlflow" in env_run.stdout + env_run.stderr and "rule track" in env_run.stdout + env_run.stderr
    req = urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=npuflow-tiny")
    exp_id = json.load(urllib.request.urlopen(req))["experiment"]["experiment_id"]
    body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
    runs = json.load(urllib.request.urlopen(urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow/runs/search", data=body,
                                                                   headers={"Content-Type": "application/json"})))["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    assert sorted(t["target"] for t in tags) == ["ax650n-npu3", "rdk-x5"]
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
