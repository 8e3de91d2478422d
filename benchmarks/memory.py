"""Job memory: each finished job's measured peak (max_rss of results/benchmarks/) beside the
estimate its rule declared (npuflow.pipeline.memory), for the stages that declare one. Prints figures;
asserts nothing. An estimate below its peak is marked UNDER: that job could share the machine with
more jobs than fit.

    python benchmarks/memory.py [--results results] [--configfile config.yaml]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--configfile", type=Path, default=Path("config.yaml"))
    args = parser.parse_args()

    from npuflow.core.layout import STAGES
    from npuflow.pipeline.config import load_config, model_spec
    from npuflow.pipeline.memory import job_mem_mb

    config = load_config(args.configfile)
    # Longest first: a model name may be the prefix of another's (efficientvit_m1, efficientvit_m10).
    models = sorted(config["models"], key=len, reverse=True)
    rows = []
    for stage in (s.name for s in STAGES if s.memory):  # the stages whose rules declare mem_mb
        for tsv in sorted((args.results / "benchmarks" / stage).glob("*.tsv")):
            model = next((m for m in models if tsv.stem == m or tsv.stem.startswith(m + ".")), None)
            if model is None:
                continue
            with open(tsv) as f:
                peak = float(list(csv.DictReader(f, delimiter="\t"))[-1]["max_rss"])
            estimate = job_mem_mb(stage, model_spec(config, model))
            rows.append((stage, tsv.stem, peak, estimate))
    if not rows:
        print(f"no benchmark files of the declaring stages under {args.results}/benchmarks", file=sys.stderr)
        return 1
    print(f"{'stage':<16} {'job':<70} {'peak MB':>9} {'estimate MB':>12}")
    for stage, job, peak, estimate in rows:
        flag = "  UNDER" if peak > estimate else ""
        print(f"{stage:<16} {job:<70} {peak:>9.0f} {estimate:>12}{flag}")
    under = sum(peak > estimate for _, _, peak, estimate in rows)
    print(f"{len(rows)} jobs, {under} above their estimate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
