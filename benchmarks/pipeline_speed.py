"""Pipeline speed: a cold run of a config in a fresh folder, a no-op re-run, and the time of each
stage (Snakemake `benchmark:` files). Prints figures; asserts nothing.

    python benchmarks/pipeline_speed.py [--configfile config.yaml] [--cores 2] [--workdir DIR] [--snakefile S]

Per stage: its jobs, their seconds in all and the longest, their CPU seconds (`cpu_time`), and the
largest peak RSS of one job (`max_rss` of the benchmark files, MB); then the share of the cores the
jobs kept busy. The cold run's Snakemake output stays in the workdir as cold-run.log. `--snakefile` measures another checkout (before/after).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent


def snakemake(snakefile: Path, workdir: Path, configfile: Path, cores: int, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        str(cores),
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, proc


def _number(row: dict, key: str) -> float | None:
    try:
        return float(row.get(key, "NA"))
    except ValueError:
        return None


class JobTime(NamedTuple):
    """One job's benchmark file: wall seconds, peak RSS (MB) and CPU seconds (None: not recorded)."""

    seconds: float
    peak_mb: float | None
    cpu_s: float | None


def _sum_or_none(values: list[float | None]) -> float | None:
    """The sum, or None where any value is missing (a partial sum would understate it)."""
    return None if any(v is None for v in values) else sum(values)


def stage_times(workdir: Path) -> dict[str, list[JobTime]]:
    """{stage: [JobTime, …]} from the jobs' benchmark files."""
    times = defaultdict(list)
    for tsv in sorted((workdir / "results" / "benchmarks").glob("*/*.tsv")):
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        times[tsv.parent.name].append(JobTime(float(row["s"]), _number(row, "max_rss"), _number(row, "cpu_time")))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a fresh temporary one)")
    parser.add_argument("--snakefile", type=Path, default=REPO / "Snakefile", help="the checkout to measure")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="npuflow-bench-"))
    configfile = args.configfile.resolve()

    snakefile = args.snakefile.resolve()
    cold, proc = snakemake(snakefile, workdir, configfile, args.cores)
    (workdir / "cold-run.log").write_text(proc.stdout + proc.stderr)  # its jobs' start and end times
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"cold run FAILED after {cold:.1f} s (workdir {workdir})")
        return 1
    noop, proc = snakemake(snakefile, workdir, configfile, args.cores)
    nothing = "Nothing to be done" in proc.stdout + proc.stderr

    print(f"snakefile: {snakefile}\nconfig: {configfile}  cores: {args.cores}  workdir: {workdir}")
    print(f"cold run:   {cold:8.1f} s")
    print(f"no-op run:  {noop:8.1f} s  ({'nothing to be done' if nothing else 'JOBS RAN'})")
    times = stage_times(workdir)
    print(f"\n{'stage':<16} {'jobs':>5} {'total s':>9} {'max s':>8} {'CPU s':>8} {'peak MB':>9}")
    for stage, jobs in sorted(times.items(), key=lambda kv: -sum(j.seconds for j in kv[1])):
        secs = [j.seconds for j in jobs]
        peaks = [j.peak_mb for j in jobs if j.peak_mb is not None]
        peak = f"{max(peaks):>9.0f}" if peaks else f"{'n/a':>9}"
        cpu = _sum_or_none([j.cpu_s for j in jobs])
        cpu_text = f"{cpu:>8.1f}" if cpu is not None else f"{'n/a':>8}"
        print(f"{stage:<16} {len(secs):>5} {sum(secs):>9.1f} {max(secs):>8.1f} {cpu_text} {peak}")
    every = [j for jobs in times.values() for j in jobs]
    peaks = [j.peak_mb for j in every if j.peak_mb is not None]
    cpu = _sum_or_none([j.cpu_s for j in every])
    cpu_text = f"{cpu:>8.1f}" if cpu is not None else f"{'n/a':>8}"
    print(f"{'all':<16} {len(every):>5} {sum(j.seconds for j in every):>9.1f} {'':>8} {cpu_text} {max(peaks) if peaks else 0:>9.0f}")
    # How much of the cores the jobs kept busy: the rest is waiting (dependencies, memory) and
    # Snakemake's own work between jobs (checkpoint updates, job start-up).
    if cpu is not None:
        print(f"jobs' CPU time / (cold run × cores): {cpu / (cold * args.cores):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
