from pathlib import Path
import subprocess

from npuflow.core.layout import PARTIAL_REPORT, REPORT_ONERROR_LOG
from npuflow.pipeline.runlock import release_run_lock


# One model's simulated latency breakdown over its targets: logged with each run, shown in the report.
rule plot:
    input:
        lambda wc: [files[k] for files in run_files(wc.model).values() for k in ("build", "trace")],
    output:
        png=report(
            STAGES.plot.outputs["png"],
            caption="../report/latency.rst",
            category="Latency breakdown (simulated)",
            labels={"model": "{model}"},
        ),
    params:
        files=lambda wc: json.dumps(run_files(wc.model)),
    log:
        STAGES.plot.log,
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow plot --model {wildcards.model:q} --files {params.files:q} --out {output.png:q} > {log:q} 2>&1"


# Each (model, target) with the facts its chain of stages derives from (npuflow.pipeline.plan.Pair): the
# report names the first stage of the chain whose output is missing, and that stage's log.
REPORT_TARGETS = list(dict.fromkeys(p.target for p in PLAN.pairs()))
# The published measurements the simulator is fitted to, shown beside the simulated figures.
PUBLISHED_CSV = os.path.join(workflow.basedir, "data", "published", "npu_latency_calibration.csv")
REPORT_OUTPUTS = [
    STAGES.report.outputs["csv"],
    STAGES.report.outputs["html"],
    *[STAGES.report.output("pareto", target=t) for t in REPORT_TARGETS],
]


rule report:
    input:
        tracked=[STAGES.track.output("runs", model=m) for m in PLAN.specs],
    output:
        csv=report(STAGES.report.outputs["csv"], caption="../report/summary.rst", category="Comparison"),
        html=report(STAGES.report.outputs["html"], caption="../report/report.rst", category="Comparison"),
        pareto=[
            report(
                STAGES.report.output("pareto", target=t),
                caption="../report/pareto.rst",
                category="Pareto plots",
                labels={"target": t},
            )
            for t in REPORT_TARGETS
        ],
    params:
        args=report_args,  # a function: its braces are not wildcards
    log:
        STAGES.report.log,
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow report {params.args:q} > {log:q} 2>&1"


onerror:
    # A job failed (under --keep-going Snakemake then skips the report) or the run was interrupted.
    # The report of what exists, marking each unfinished (model, target) with the stage at fault and
    # its log, goes to report.partial.html, never to the report's own outputs; and an earlier
    # complete report that this run was to rewrite is removed: either would tell Snakemake that
    # the run is finished (it re-creates missing intermediate files only where a later output is
    # missing or out of date), so that running again would do nothing.
    stale = [path for path in REPORT_OUTPUTS if os.path.exists(path)] if planned("report") else []
    for path in stale:
        os.remove(path)
    Path(REPORT_ONERROR_LOG).parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT_ONERROR_LOG, "w") as report_log:
        partial = ["--partial", f"--csv={PARTIAL_REPORT['csv']}", f"--html={PARTIAL_REPORT['html']}"]
        done = subprocess.run(["npuflow", "report", *report_inputs(), *partial], stdout=report_log, stderr=subprocess.STDOUT)
    removed = f" ({', '.join(stale)} removed: this run was to rewrite them)" if stale else ""
    if done.returncode == 0:
        from npuflow.report import failure_lines

        print(f"npuflow: the run did not finish; what exists is in {PARTIAL_REPORT['html']}{removed}; running again finishes it:")
        for line in failure_lines(PARTIAL_REPORT["csv"]):
            print(f"  {line}")
    else:
        print(
            f"npuflow: the run did not finish{removed}; the report of what exists failed too (exit {done.returncode}, log {REPORT_ONERROR_LOG})"
        )
    release_run_lock()
