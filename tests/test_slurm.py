"""The tiny config on a real one-node Slurm cluster with `--profile profiles/slurm`, and two faults
on it: a job cancelled mid-run, a node set DOWN under a queued job (tests/slurm_runs.py runs them
beside the other tests; these read the outcome)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

import slurm_runs
from conftest import REPO

MODEL = "efficientvit_m0"
# Measured, not computed: each stage's wall time and the host (onnxruntime) latencies differ
# from run to run; everything else a stage writes is a function of its inputs.
HOST_COLUMNS = {"host_fp32_ms", "host_int8_ms", "host_fp32_spread", "host_int8_spread"}


def measured(key: str) -> bool:
    return key.startswith("seconds") or key in HOST_COLUMNS


def without_measurements(value):
    if isinstance(value, dict):
        return {k: without_measurements(v) for k, v in value.items() if not measured(k)}
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    return value


@pytest.fixture(scope="session")
def slurm(request) -> slurm_runs.Outcome:
    outcome = slurm_runs.outcome(request.config)
    if outcome.skip:
        pytest.skip(outcome.skip)
    assert outcome.error is None, outcome.error
    return outcome


@pytest.fixture(scope="session")
def main_run(slurm) -> slurm_runs.Run:
    run = slurm.main
    assert run.returncode == 0, run.output[-4000:]
    return run


def planned_jobs(output: str) -> Counter:
    """Snakemake's own count of the jobs it finished, per rule: its first "Job stats" table lists
    only the jobs it can plan before the `recipes` checkpoint, so the jobs it says it finished."""
    return Counter(re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)$", output, re.M))


def test_every_job_ran_as_a_slurm_job_within_the_node(slurm, main_run):
    planned = planned_jobs(main_run.output)
    # `all` has no command: Snakemake runs it itself, as it says; every other job is a Slurm job.
    assert planned.pop("all") == 1 and "localrule all:" in main_run.output
    completed = Counter(slurm_runs.rule_of(j) for j in main_run.jobs if j["state"] == "COMPLETED")
    # 16 jobs, the ptq stage, the recipes checkpoint and the two per-layer analyses.
    assert completed == planned and sum(completed.values()) == 20
    # Capped by the node, as nothing was given on the command line: the profile's 4 threads become
    # the node's CPUs, and no job asks for more memory than the node has.
    node = slurm.node
    for job in main_run.jobs:
        assert 1 <= int(job["cpus"]) <= node["cpus"] and int(job["mem"].rstrip("M")) <= node["mem_mb"], job
    threads = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-threads"]
    exports = [j for j in main_run.jobs if slurm_runs.rule_of(j) == "export"]
    assert {int(j["cpus"]) for j in exports} == {min(threads["export"], node["cpus"])}


def test_a_job_cancelled_mid_run_is_retried_and_the_run_completes(slurm, main_run):
    cancelled = [j for j in main_run.jobs if j["id"] == slurm.cancelled_job]
    assert len(cancelled) == 1 and cancelled[0]["state"].startswith("CANCELLED"), main_run.jobs
    assert slurm_runs.rule_of(cancelled[0]) == slurm_runs.CANCELLED_RULE
    assert f"SLURM-job '{slurm.cancelled_job}' failed, SLURM status is: 'CANCELLED'" in main_run.output
    assert "Trying to restart job" in main_run.output
    # The cancelled job is the only one that did not complete, and the run finished everything.
    assert [j for j in main_run.jobs if j["state"] != "COMPLETED"] == cancelled
    assert (slurm.workdir / "run" / "results" / "report.html").exists()


def test_the_runs_are_on_the_server(slurm, main_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=slurm.mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name("npuflow-tiny").experiment_id])
    assert sorted(r.data.tags["target"] for r in runs) == ["ax650n-npu3", "rdk-x5"]
    assert all(r.info.status == "FINISHED" and r.data.tags["model"] == MODEL for r in runs)
    track = json.loads((slurm.workdir / "run" / "results" / MODEL / "track.json").read_text())
    assert {r.info.run_id for r in runs} == {t["run_id"] for t in track["runs"].values()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_are_those_of_a_local_run(main_run, slurm, pipeline):
    """The same files as the local run of the same config (conftest's `pipeline`): byte for byte
    for the models and the simulator's trace, value for value for every stage report and summary
    row, less what is measured (stage seconds, host latencies) and the MLflow run ids."""
    local, remote = pipeline / "results" / MODEL, slurm.workdir / "run" / "results" / MODEL
    same_bytes = ["fetch/weights.safetensors", "model.onnx", "model.sim.onnx", "model.surgery.onnx", "eval/reference.npz"]
    same_bytes += [str(p.relative_to(local)) for p in local.glob("quant/*.onnx")]
    same_bytes += [str(p.relative_to(local)) for p in local.glob("quant/*.layers.csv")]
    same_bytes += [str(p.relative_to(local)) for p in local.glob("build/*/trace.json")]
    same_bytes += [str(p.relative_to(local)) for p in local.glob("build/*/summary.txt")]
    assert len(same_bytes) == 5 + 2 + 2 + 2 + 2
    assert {f: sha256(remote / f) for f in same_bytes} == {f: sha256(local / f) for f in same_bytes}

    reports = sorted(str(p.relative_to(local)) for p in local.rglob("*.json") if p.name != "track.json")
    assert "build/rdk-x5/build.json" in reports and "quant/int8.json" in reports and len(reports) >= 12
    for f in reports:
        a, b = (without_measurements(json.loads((d / f).read_text())) for d in (local, remote))
        assert a == b, f

    def summary(root: Path) -> list[dict]:
        with open(root / "results" / "summary.csv") as f:
            return [{k: v for k, v in row.items() if k not in HOST_COLUMNS | {"run_id"}} for row in csv.DictReader(f)]

    rows = summary(slurm.workdir / "run")
    assert rows == summary(pipeline) and {r["target"] for r in rows} == {"ax650n-npu3", "rdk-x5"}
    assert all(r["status"] == "ok" and float(r["latency_ms"]) > 0 for r in rows)


def test_a_node_set_down_under_a_queued_job_ends_the_run_by_the_profile_deadline(slurm):
    run = slurm.down
    assert "Nodes required for job are DOWN" in (slurm.down_reason or ""), slurm.down_reason
    # Not a hang: the run ends, non-zero, each attempt (the profile's retry) named with its state.
    assert run.returncode not in (0, None), run.output[-3000:]
    assert len(re.findall(r"SLURM status is: 'DEADLINE'", run.output)) == 2, run.output[-3000:]
    assert [j["state"] for j in run.jobs] == ["DEADLINE", "DEADLINE"]
    # Bounded by the deadline: two attempts queued 10 s each, plus the scheduler's interval and the
    # executor's (its first status check 10 s after submitting, the next 20 s later, …).
    assert run.seconds < 180, run.seconds
    assert not (slurm.workdir / "down" / "results" / MODEL / "fetch" / "manifest.json").exists()
    assert not [j for j in slurm_runs.squeue() if j["state"] in ("PENDING", "RUNNING")]  # nothing left queued


def test_the_profile_bounds_a_queued_job_and_reads_states_from_squeue():
    """The profile's own settings, of which the node-down run above used shorter ones."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert re.fullmatch(r"'--deadline=now\+\d+hours'", profile["default-resources"]["slurm_extra"])
    assert profile["retries"] == 1 and profile["slurm-status-command"] == "squeue"
