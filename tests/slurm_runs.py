"""The Slurm test's runs (tests/test_slurm.py), on the one-node cluster of .ci/slurm-cluster.

They spend most of their time waiting on the scheduler and on the executor's status checks, so
conftest starts them in a background thread as soon as the tests are collected, and the tests
only read the outcome. In order:

1. The tiny config with `snakemake --profile profiles/slurm`, logging to an `mlflow server` of
   its own; its export job is `scancel`led once it runs (the profile's retry must finish the run).
2. The node set DOWN while a job of a second run is queued behind another job; the profile's
   deadline (shortened here to a 1-minute job and 70 s) must end that run, naming the job's state.

Where this cannot run: not root, or the Debian packages cannot be installed (a skip, with why).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import REPO, TINY_CONFIG, mlflow_server, snakemake_env

CLUSTER = REPO / ".ci" / "slurm-cluster"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
CLUSTER_MARK = "# Written by npuflow's .ci/slurm-cluster"
RUN_TIMEOUT = 900  # s; the tiny config took 3 min 45 s here (README, "Scaling out")
DOWN_TIMEOUT = 300
# The node-down run: a 1-minute job with a deadline 70 s after its submission is removed by Slurm
# once it has been queued for 10 s, at the next scheduling pass (every 10 s on the test cluster);
# the profile's own deadline is 4 h, less the job's run time.
DOWN_RESOURCES = ["mem_mb=4000", "runtime=1", "slurm_extra='--deadline=now+70'"]
CANCELLED_RULE = "export"  # the longest job of the tiny config (15–30 s)
KEY = pytest.StashKey["SlurmRuns"]()


@dataclass
class Run:
    """One snakemake run against the cluster: its exit, output, duration and Slurm jobs (sacct)."""

    returncode: int | None
    output: str
    seconds: float
    run_id: str | None = None
    jobs: list[dict] = field(default_factory=list)


@dataclass
class Outcome:
    skip: str | None = None
    error: str | None = None
    node: dict | None = None  # name, cpus, mem_mb as sinfo reports them
    mlflow_url: str | None = None
    workdir: Path | None = None
    main: Run | None = None
    cancelled_job: str | None = None  # the Slurm job id `scancel`led mid-run
    down: Run | None = None
    down_reason: str | None = None  # squeue's reason for the queued job after the node went DOWN


def command(*args) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def snakemake_slurm(workdir: Path, *args) -> list[str]:
    """The profile as a user runs it (no --cores: on a cluster it would cap threads by itself)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(TINY_CONFIG),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        # The executor looks at the queue this long after a submission (the profile: 10 s), then
        # 10 s later each time no job has ended; on the test cluster a short job's end is seen sooner.
        "--slurm-init-seconds-before-status-checks=2",
        *args,
    ]


def squeue() -> list[dict]:
    out = command("squeue", "--noheader", "--states=all", "--format=%i|%T|%k|%r")
    return [dict(zip(("id", "state", "comment", "reason"), line.split("|", 3))) for line in out.splitlines() if line]


def sacct(run_id: str, since: datetime) -> list[dict]:
    fields = ("id", "state", "comment", "cpus", "mem")
    out = command(
        "sacct",
        "-X",
        "--parsable2",
        "--noheader",
        f"--name={run_id}",
        f"--starttime={since:%Y-%m-%dT%H:%M:%S}",
        "--format=JobIDRaw,State,Comment,AllocCPUS,ReqMem",
    )
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def rule_of(job: dict) -> str:
    """The rule of a job from its comment (the executor writes rule_<name>[_wildcards_<…>])."""
    return re.match(r"rule_(.+?)(_wildcards_|$)", job["comment"]).group(1)


class SlurmRuns:
    def __init__(self):
        self.outcome = Outcome()
        self.stack = contextlib.ExitStack()
        self.started_cluster = False
        self.procs: list[subprocess.Popen] = []
        self.closing = threading.Event()  # the session is ending: start nothing more
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name="slurm-runs", daemon=True)

    # --- the background thread -------------------------------------------------------------
    def _main(self):
        try:
            if self._prepare():
                self._main_run()
                if not self.closing.is_set():
                    self._down_run()
        except Exception:
            self.outcome.error = traceback.format_exc()

    def _prepare(self) -> bool:
        o = self.outcome
        if os.geteuid() != 0:
            o.skip = "needs root: it starts munged, MariaDB and the Slurm daemons and writes /etc/slurm (CI runs as root)"
            return False
        if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
            o.error = "the Slurm executor plugin is not installed: pip install -e '.[slurm]' (README)"
            return False
        install = subprocess.run([str(CLUSTER), "install"], capture_output=True, text=True)
        if install.returncode != 0:
            o.skip = f"cannot install the Debian packages for a Slurm cluster: {install.stderr.strip()[-500:]}"
            return False
        if SLURM_CONF.exists() and CLUSTER_MARK not in SLURM_CONF.read_text():
            o.error = f"{SLURM_CONF} is a real cluster's, not npuflow's test cluster: not setting its node DOWN"
            return False
        if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
            up = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True)
            if up.returncode != 0:
                o.error = f".ci/slurm-cluster up failed: {up.stdout[-1000:]}{up.stderr[-1000:]}"
                return False
            self.started_cluster = True
        name, cpus, mem = command("sinfo", "--noheader", "--Node", "--format=%N|%c|%m").splitlines()[0].split("|")
        o.node = {"name": name, "cpus": int(cpus), "mem_mb": int(mem)}
        o.workdir = Path(tempfile.mkdtemp(prefix="npuflow-slurm-"))
        (o.workdir / "mlflow").mkdir()
        o.mlflow_url = self.stack.enter_context(mlflow_server(o.workdir / "mlflow"))
        return True

    def _snakemake(self, workdir: Path, args: list[str], timeout: float, during=None) -> Run:
        """Run snakemake in `workdir`; `during(proc, log)` is called every 0.5 s while it runs."""
        workdir.mkdir()
        env = {**snakemake_env(), "MLFLOW_TRACKING_URI": self.outcome.mlflow_url}
        log = workdir / "snakemake.out"
        since = datetime.now() - timedelta(minutes=1)
        start = time.monotonic()
        with open(log, "w") as out:
            with self.lock:
                if self.closing.is_set():
                    raise RuntimeError("the test session ended before this run")
                proc = subprocess.Popen(
                    snakemake_slurm(workdir, *args), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
                )
                self.procs.append(proc)
            try:
                while proc.poll() is None and time.monotonic() - start < timeout and not self.closing.is_set():
                    if during is not None:
                        during(proc, log)
                    time.sleep(0.5)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its Slurm jobs on Ctrl-C
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    # Whatever it left queued or running (e.g. where SIGINT was ignored).
                    found = re.search(r"SLURM run ID: (\S+)", log.read_text())
                    if found:
                        subprocess.run(["scancel", f"--name={found.group(1)}"], capture_output=True)
        seconds = time.monotonic() - start
        output = log.read_text()
        run = Run(proc.returncode if seconds < timeout else None, output, seconds)
        found = re.search(r"SLURM run ID: (\S+)", output)
        if found:
            run.run_id = found.group(1)
            run.jobs = self._settled_jobs(run.run_id, since)
        return run

    def _settled_jobs(self, run_id: str, since: datetime) -> list[dict]:
        """sacct's rows for a run, once slurmdbd has every job's final state."""
        for _ in range(60):
            jobs = sacct(run_id, since)
            if all(j["state"] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING") for j in jobs):
                return jobs
            time.sleep(0.5)
        return jobs

    def _main_run(self):
        seen = {}

        def cancel_export(proc, log):
            if self.outcome.cancelled_job is not None:
                return
            for job in squeue():
                if job["comment"].startswith(f"rule_{CANCELLED_RULE}_") and job["state"] == "RUNNING":
                    # Mid-run: a few seconds into the job (its interpreter and imports are past).
                    first = seen.setdefault(job["id"], time.monotonic())
                    if time.monotonic() - first >= 3:
                        command("scancel", job["id"])
                        self.outcome.cancelled_job = job["id"]

        self.outcome.main = self._snakemake(self.outcome.workdir / "run", [], RUN_TIMEOUT, cancel_export)

    def _down_run(self):
        o = self.outcome
        node = o.node["name"]
        # A job that holds every CPU of the node, so that the run's first job queues behind it.
        blocker = command(
            "sbatch", "--parsable", "--no-requeue", f"--cpus-per-task={o.node['cpus']}", "--mem=100", "--time=10",
            "--job-name=npuflow-blocker", "--output=/dev/null", "--wrap=sleep 600",
        ).strip()  # fmt: skip
        try:
            for _ in range(60):
                if any(j["id"] == blocker and j["state"] == "RUNNING" for j in squeue()):
                    break
                time.sleep(0.5)
            downed = []

            def down_when_queued(proc, log):
                if downed:
                    # Slurm gives the queued job its new reason at its next scheduling pass.
                    if not o.down_reason or "DOWN" not in o.down_reason:
                        reasons = [j["reason"] for j in squeue() if j["comment"].startswith("rule_fetch_") and j["state"] == "PENDING"]
                        o.down_reason = reasons[0] if reasons else o.down_reason
                    return
                if any(j["comment"].startswith("rule_fetch_") and j["state"] == "PENDING" for j in squeue()):
                    command("scontrol", "update", f"nodename={node}", "state=down", "reason=npuflow-test")
                    downed.append(time.monotonic())

            o.down = self._snakemake(
                o.workdir / "down",
                ["results/efficientvit_m0/fetch/manifest.json", "--default-resources", *DOWN_RESOURCES],
                DOWN_TIMEOUT,
                down_when_queued,
            )
        finally:
            subprocess.run(["scancel", blocker], capture_output=True)
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
            for _ in range(60):
                if command("sinfo", "--noheader", "--Node", f"--nodes={node}", "--format=%T").strip() in ("idle", "mixed"):
                    break
                time.sleep(0.5)

    # --- the test session ------------------------------------------------------------------
    def result(self, timeout: float = RUN_TIMEOUT + DOWN_TIMEOUT + 300) -> Outcome:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.outcome.error = f"the Slurm runs did not finish within {timeout} s"
        return self.outcome

    def close(self):
        with self.lock:
            self.closing.set()
        # A run still going (the session was cut short) ends as on Ctrl-C, cancelling its jobs.
        if self.thread.ident is not None:
            self.thread.join(90)
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.stack.close()
        if self.started_cluster:
            subprocess.run([str(CLUSTER), "down"], capture_output=True)
        if self.outcome.workdir is not None and not os.environ.get("NPUFLOW_KEEP_SLURM_RUNS"):
            shutil.rmtree(self.outcome.workdir, ignore_errors=True)


def start(config):
    runs = SlurmRuns()
    config.stash[KEY] = runs
    config.add_cleanup(runs.close)
    runs.thread.start()


def outcome(config) -> Outcome:
    if KEY not in config.stash:  # the hook did not see the test (e.g. run by node id): start now
        start(config)
    return config.stash[KEY].result()
