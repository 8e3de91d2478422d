import shlex
from pathlib import Path
import subprocess


# One model's simulated latency breakdown over its targets: logged with each run, shown in the report.
rule plot:
    input:
        lambda wc: [files[k] for files in run_files(wc.model).values() for k in ("build", "trace")],
    output:
        report(
            "results/{model}/plots/latency.png",
            caption="../report/latency.rst",
            category="Latency breakdown (simulated)",
            labels={"model": "{model}"},
        ),
    params:
        files=lambda wc: json.dumps(run_files(wc.model)),
    log:
        "results/logs/plot/{model}.log",
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow plot --model {wildcards.model} --files {params.files:q} --out {output} > {log} 2>&1"


# Every stage in pipeline order with its outputs and log (patterns over model/target/recipe): the
# report names the first stage whose output is missing as the one a (model, target) failed at.
PIPELINE_STAGES = (
    "fetch",
    "export",
    "simplify",
    "surgery",
    "calibrate",
    "quantize",
    "reference",
    "evaluate",
    "build",
    "plot",
    "init_mlflow",
    "track",
)
STAGE_CHAIN = [[name, [str(o) for o in getattr(rules, name).output], str(getattr(rules, name).log[0])] for name in PIPELINE_STAGES]
REPORT_TARGETS = list(dict.fromkeys(t for _, t in PAIRS))
REPORT_ARGS = [
    *[f"--pair={m}:{t}:{recipe_of(m, t)}" for m, t in PAIRS],
    f"--stages={json.dumps(STAGE_CHAIN)}",
    "--plots-dir=results/plots",
    "--csv=results/summary.csv",
    "--html=results/report.html",
]


rule report:
    input:
        tracked=[f"results/{m}/track.json" for m in SPECS],
        runs=[path for m in SPECS for files in run_files(m).values() for path in files.values()],
    output:
        csv=report("results/summary.csv", caption="../report/summary.rst", category="Comparison"),
        html=report("results/report.html", caption="../report/report.rst", category="Comparison"),
        pareto=[
            report(f"results/plots/pareto.{t}.png", caption="../report/pareto.rst", category="Pareto plots", labels={"target": t})
            for t in REPORT_TARGETS
        ],
    params:
        args=lambda wc: shlex.join(REPORT_ARGS),  # a function: its {model} patterns are not wildcards
    log:
        "results/logs/report.log",
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow report {params.args} > {log} 2>&1"


onerror:
    # Under --keep-going Snakemake skips the report when one model failed: write it over what
    # exists, marking the failed (model, target) pairs with the stage that failed and its log.
    Path("results/logs").mkdir(parents=True, exist_ok=True)
    with open("results/logs/report.onerror.log", "w") as report_log:
        done = subprocess.run(["npuflow", "report", *REPORT_ARGS], stdout=report_log, stderr=subprocess.STDOUT)
    print(
        f"npuflow: report of what exists written to results/report.html (exit {done.returncode}, log results/logs/report.onerror.log)"
    )
