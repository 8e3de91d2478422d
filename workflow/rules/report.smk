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


# The report's files are update(): Snakemake neither removes an earlier complete report when the
# job starts nor loses it when the job fails (it keeps a copy in .snakemake/backups and puts it
# back); the report command replaces each file whole when it succeeds, and writes `complete` last.
# That one is an ordinary output: removed when the job starts, missing if it fails, and removed
# by a run that stops early (onerror, below), it is what tells Snakemake the report is to be made.
rule report:
    input:
        tracked=[STAGES.track.output("runs", model=m) for m in PLAN.specs],
    output:
        csv=report(update(STAGES.report.outputs["csv"]), caption="../report/summary.rst", category="Comparison"),
        html=report(update(STAGES.report.outputs["html"]), caption="../report/report.rst", category="Comparison"),
        complete=STAGES.report.outputs["complete"],
        pareto=[
            report(
                update(STAGES.report.output("pareto", target=t)),
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
    # its log, goes to report.partial.html, never to the report's own files. An earlier complete
    # report that this run was to make again stays where it is (so do the MLflow runs, which no job
    # removes); its mark `report.complete.json` goes, so that Snakemake plans the report again, and
    # with it, through the outputs this run left missing, whatever did not finish (before issue 28
    # the report itself was removed for this; Snakemake re-creates missing intermediate files only
    # where a later output is missing or out of date).
    html, complete = STAGES.report.outputs["html"], STAGES.report.outputs["complete"]
    kept = planned("report") and os.path.exists(html)
    if planned("report") and os.path.exists(complete):
        os.remove(complete)
    Path(REPORT_ONERROR_LOG).parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT_ONERROR_LOG, "w") as report_log:
        partial = ["--partial", f"--csv={PARTIAL_REPORT['csv']}", f"--html={PARTIAL_REPORT['html']}"]
        done = subprocess.run(["npuflow", "report", *report_inputs(), *partial], stdout=report_log, stderr=subprocess.STDOUT)
    earlier = f" ({html}, of an earlier complete run, is kept until a run finishes)" if kept else ""
    if done.returncode == 0:
        from npuflow.report import failure_lines, interrupted

        if interrupted(PARTIAL_REPORT["csv"]):
            # Ctrl-C: one line, not the interrupted jobs as failures
            print(
                f"npuflow: interrupted (Ctrl-C); what exists is in {PARTIAL_REPORT['html']}{earlier}; the same command finishes the run"
            )
        else:
            print(f"npuflow: the run did not finish; what exists is in {PARTIAL_REPORT['html']}{earlier}; running again finishes it:")
            for line in failure_lines(PARTIAL_REPORT["csv"]):
                print(f"  {line}")
    else:
        print(
            f"npuflow: the run did not finish{earlier}; the report of what exists failed too (exit {done.returncode}, log {REPORT_ONERROR_LOG})"
        )
    release_run_lock()
