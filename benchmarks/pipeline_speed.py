"""Pipeline speed: a cold run of a config in a fresh folder, a no-op re-run, and the time of each
stage (Snakemake `benchmark:` files). Prints figures; asserts nothing.

    python benchmarks/pipeline_speed.py [--configfile config.yaml] [--cores 2] [--workdir DIR]
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

REPO = Path(__file__).resolve().parent.parent


def snakemake(workdir: Path, configfile: Path, cores: int, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
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


def stage_times(workdir: Path) -> dict[str, list[float]]:
    times = defaultdict(list)
    for tsv in sorted((workdir / "results" / "benchmarks").glob("*/*.tsv")):
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        times[tsv.parent.name].append(float(row["s"]))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a fresh temporary one)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="npuflow-bench-"))
    configfile = args.configfile.resolve()

    cold, proc = snakemake(workdir, configfile, args.cores)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"cold run FAILED after {cold:.1f} s (workdir {workdir})")
        return 1
    noop, proc = snakemake(workdir, configfile, args.cores)
    nothing = "Nothing to be done" in proc.stdout + proc.stderr

    print(f"config: {configfile}  cores: {args.cores}  workdir: {workdir}")
    print(f"cold run:   {cold:8.1f} s")
    print(f"no-op run:  {noop:8.1f} s  ({'nothing to be done' if nothing else 'JOBS RAN'})")
    print(f"\n{'stage':<12} {'jobs':>5} {'total s':>9} {'max s':>8}")
    for stage, secs in sorted(stage_times(workdir).items(), key=lambda kv: -sum(kv[1])):
        print(f"{stage:<12} {len(secs):>5} {sum(secs):>9.1f} {max(secs):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
