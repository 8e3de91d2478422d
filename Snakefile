# npuflow: checkpoint → ONNX → onnxsim → surgery → INT8 → simulated NPU build → evaluation → MLflow.
# Thin by design: the logic lives in the npuflow package (workflow/npuflow); rules wire files to it.
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from npuflow.pipeline.config import ConfigError, load_yaml

min_version("9.0")


# `snakemake --report report.html`: this description, and the outputs marked with report().
report: "workflow/report/workflow.rst"


# `--configfile` replaces the default config instead of merging into it (Snakemake would merge
# the default models into a user's config otherwise). npuflow's loader reads it first: Snakemake's
# says only "not valid JSON or YAML", npuflow's names the line.
if not config:
    try:
        load_yaml("config.yaml")
    except ConfigError as e:
        raise WorkflowError(str(e)) from None

    configfile: "config.yaml"


# With `--sdm conda`, each environment's post-deploy script (envs/*.post-deploy.sh) installs
# npuflow from this checkout.
os.environ.update(NPUFLOW_ROOT=workflow.basedir)


include: "workflow/rules/common.smk"
include: "workflow/rules/fetch.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/simplify.smk"
include: "workflow/rules/surgery.smk"
include: "workflow/rules/ptq.smk"
include: "workflow/rules/recipes.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/quantize.smk"
include: "workflow/rules/build.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
    default_target: True


# Before the first job (not in dry runs): one run per folder (npuflow.pipeline.runlock: a kernel lock that
# `--unlock` cannot remove), and the tracking server there and letting the pipeline in. Jobs on
# other machines (`--profile profiles/slurm`, any non-local executor) cannot share a SQLite file.
onstart:
    if workflow.non_local_exec and MLFLOW_URI.startswith("sqlite:"):
        raise WorkflowError(
            f"MLflow tracking URI {MLFLOW_URI_SHOWN}: jobs on other machines cannot share a SQLite file; start an `mlflow server` "
            "and set MLFLOW_TRACKING_URI=http://<host>:<port> (README, Scaling out)"
        )
    try:
        hold_run_lock()
        if planned(*MLFLOW_RULES):
            preflight(MLFLOW_URI, MLFLOW_EXPERIMENT)
    except NpuflowError as e:
        raise WorkflowError(str(e)) from None


onsuccess:
    release_run_lock()
