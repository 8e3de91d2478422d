import shlex
from pathlib import Path
import subprocess

from npuflow.layout import REPORT_ONERROR_LOG


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
        "npuflow plot --model {wildcards.model} --files {params.files:q} --out {output.png} > {log} 2>&1"


# Each (model, target) with the facts its chain of stages derives from (npuflow.plan.Pair): the
# report names the first stage of the chain whose output is missing, and that stage's log.
REPORT_TARGETS = list(dict.fromkeys(p.target for p in PLAN.pairs()))
# The published measurements the simulator is fitted to, shown beside the simulated figures.
PUBLISHED_CSV = os.path.join(workflow.basedir, "data", "published", "npu_latency_calibration.csv")
REPORT_ARGS = [
    *[f"--pair={pair.to_json()}" for pair in PLAN.pairs()],
    f"--published={PUBLISHED_CSV}",
    f"--target-profiles={json.dumps(config['target_profiles'], sort_keys=True)}",
    f"--plots-dir={os.path.dirname(STAGES.report.outputs['pareto'])}",
    f"--csv={STAGES.report.outputs['csv']}",
    f"--html={STAGES.report.outputs['html']}",
]


rule report:
    input:
        tracked=[STAGES.track.output("runs", model=m) for m in PLAN.specs],
        runs=[path for m in PLAN.specs for files in run_files(m).values() for path in files.values()],
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
        args=lambda wc: shlex.join(REPORT_ARGS),  # a function: its braces are not wildcards
    log:
        STAGES.report.log,
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow report {params.args} > {log} 2>&1"


onerror:
    # Under --keep-going Snakemake skips the report when one model failed: write it over what
    # exists, marking the failed (model, target) pairs with the stage that failed and its log.
    Path(REPORT_ONERROR_LOG).parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT_ONERROR_LOG, "w") as report_log:
        done = subprocess.run(["npuflow", "report", *REPORT_ARGS], stdout=report_log, stderr=subprocess.STDOUT)
    print(
        f"npuflow: report of what exists written to {STAGES.report.outputs['html']} (exit {done.returncode}, log {REPORT_ONERROR_LOG})"
    )
