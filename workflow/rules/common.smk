import json
import os
import sys

from snakemake.exceptions import WorkflowError

from npuflow.pipeline.cluster import job_limits, partition_name, slurm_node
from npuflow.pipeline.config import ConfigError, load_yaml, validate_config
from npuflow.util.errors import NpuflowError
from npuflow.core.layout import IMAGE_CACHE, STAGES
from npuflow.pipeline.memory import local_mem_mb
from npuflow.core.names import wildcard_constraint
from npuflow.pipeline.plan import Plan
from npuflow.pipeline.runlock import hold_run_lock, release_run_lock
from npuflow.tracking.server import preflight
from npuflow.tracking.uri import redacted, tracking_uri

# Schema (workflow/schemas/config.schema.yaml, JSON Schema 2020-12, defaults filled in) and the
# checks a schema can't express, before the DAG is built. Errors name the entry and field.
# Snakemake's YAML loader keeps the last of two equal keys (two models of one name would silently
# be one): each config file is read again by npuflow's loader, which refuses them.
try:
    for path in workflow.configfiles:
        load_yaml(path)
    validate_config(config)
    # MLFLOW_TRACKING_URI wins over the config. No http(s) URI holds credentials (npuflow.tracking.uri:
    # the jobs inherit MLflow's variables); a database URI may hold a password.
    MLFLOW_URI = tracking_uri(config["mlflow"]["tracking_uri"])
except ConfigError as e:
    raise WorkflowError(str(e)) from None
# The logging jobs read the URI from MLFLOW_TRACKING_URI, which they inherit: a rule param or
# argument is written to .snakemake/metadata, the logs and the terminal. Theirs is the URI with
# its credentials hidden, so that another server or database still re-runs the logging.
# (update(), not item assignment: snakemake --lint reads `os.environ[...]` as a variable the
# workflow needs from the user, to be declared with envvars:; this one it sets itself)
os.environ.update(MLFLOW_TRACKING_URI=MLFLOW_URI)
MLFLOW_URI_SHOWN = redacted(MLFLOW_URI)

# The decisions (pairs, recipes, mixed precision, datasets, run files) are npuflow.pipeline.plan's; the
# paths are the stage table's (npuflow.core.layout). These rules only wire them together.
PLAN = Plan(config)
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"]
MLFLOW_RULES = ("init_mlflow", "track")

# Jobs declare the memory they need (npuflow.pipeline.memory); a local run starts no more of them than the
# memory free now holds, unless `--resources mem_mb=…` says otherwise. The executor is not known yet
# while the Snakefile is read (workflow.non_local_exec is always False here); `--jobs` (`_nodes`) is
# what cluster and cloud executors require and what the local one turns into `--cores`. On a
# cluster each job asks its scheduler for its own mem_mb instead, and no job asks for more CPUs or
# memory than the largest Slurm node offers (npuflow.pipeline.cluster): Snakemake's --max-threads and the
# mem_mb limit (per job on a cluster, not summed) take the node's figures. Read once, by the
# process that submits; the jobs get --max-threads from it.
if workflow.global_resources["_nodes"].value is None:
    if "mem_mb" not in workflow.global_resources:
        workflow.register_resource("mem_mb", local_mem_mb())
elif workflow.is_main_process:
    _defaults = workflow.resource_settings.default_resources
    _partition = _defaults.get("slurm_partition") if _defaults is not None else None
    _given = workflow.global_resources.get("mem_mb")
    _limits = job_limits(
        slurm_node(partition_name(getattr(_partition, "raw", None))),
        workflow.resource_settings.max_threads,
        _given.value if _given is not None else None,
    )
    workflow.resource_settings.max_threads = _limits.max_threads
    if _limits.mem_mb is not None:
        workflow.register_resource("mem_mb", _limits.mem_mb)


# Each wildcard takes the planned names only, each of which npuflow.core.names has checked is a name.
wildcard_constraints:
    model=wildcard_constraint(PLAN.specs),
    target=wildcard_constraint(PLAN.targets.names()),
    recipe=wildcard_constraint(PLAN.recipe_ids()),
    dataset=wildcard_constraint(config["datasets"]),


def mem_mb(stage):
    return lambda wildcards: PLAN.job_mem_mb(stage, wildcards.model)


# A run stopped as a job ended leaves that job's outputs marked incomplete, and Snakemake 9.27
# does not run it again once the `recipes` checkpoint's dependencies are updated: the main
# process of a real run removes them first (npuflow.pipeline.runlock.remove_incomplete_outputs), under
# the folder's run lock, which it then holds for the run (another run's jobs may be writing them).
if workflow.is_main_process and not workflow.dryrun:
    from npuflow.pipeline.runlock import RunningElsewhere, hold_run_lock, remove_incomplete_outputs

    try:
        if hold_run_lock():
            # The report's own files (update(): an earlier complete report) stay; its mark goes.
            report_files = tuple(STAGES.report.outputs[k].replace("{target}", "*") for k in ("csv", "html", "pareto"))
            for path in remove_incomplete_outputs(keep=report_files):
                print(f"npuflow: {path} was left incomplete by a stopped run; its job runs again", file=sys.stderr)
    except RunningElsewhere:
        pass  # refused in onstart, before any job, in one line


def spec_json(stage):
    """The part of the model spec a stage reads (npuflow.core.layout: the stage's `fields`)."""
    return lambda wildcards: PLAN.spec_json(wildcards.model, stage)


def dataset_inputs(*roles):
    """The prepared index of each user dataset the model's calibration/evaluation reads."""
    return lambda wildcards: PLAN.dataset_indexes(wildcards.model, roles)


def resolved(*models):
    """Waits for the models' recipe maps (checkpoint `recipes`): what the plan reads next uses them.
    A dry run does not wait: where a map does not exist yet it plans each recipe for itself, so
    that it lists every stage's jobs (README, "Dry runs")."""
    if workflow.dryrun:
        return
    for model in models:
        checkpoints.recipes.get(model=model)


def quantized(wildcards):
    resolved(wildcards.model)
    return PLAN.quantized(wildcards.model, wildcards.target)


def base_quantized(wildcards):
    resolved(wildcards.model)
    return PLAN.base_quantized(wildcards.model, wildcards.target)


def build_layers(wildcards):
    resolved(wildcards.model)
    return PLAN.build_layers(wildcards.model, wildcards.target)


def base_layers(wildcards):
    resolved(wildcards.model)
    return PLAN.base_layers(wildcards.model, wildcards.target)


def run_files(model):
    resolved(model)
    return PLAN.run_files(model)


def track_inputs(wildcards):
    return {f"{target}.{name}": path for target, files in run_files(wildcards.model).items() for name, path in files.items()}


def profile_json(wildcards):
    return PLAN.profile_json(wildcards.target)


def folder_of(output_name):
    """The folder of one of the job's outputs (commands that write several files into one)."""
    return lambda wildcards, output: os.path.dirname(output[output_name])


def planned(*rules):
    """Whether this run has jobs of these rules it has not finished (from Snakemake's DAG)."""
    try:
        return any(job.rule.name in rules for job in workflow.dag.needrun_jobs())
    except AttributeError:  # a Snakemake whose DAG reads otherwise: assume so
        return True


# The report (report.smk: PUBLISHED_CSV, its outputs): its pairs as the recipe maps decide them.
def report_inputs():
    """The pairs before any recipe map (npuflow.pipeline.plan.Plan.unresolved_pairs); the report settles them."""
    return [
        *[f"--pair={pair.to_json()}" for pair in PLAN.unresolved_pairs()],
        f"--published={PUBLISHED_CSV}",
        f"--target-profiles={json.dumps(config['target_profiles'], sort_keys=True)}",
    ]


# The complete report replaces the partial one a run that stopped early left. A list: the rule's
# `{params.args:q}` quotes each argument.
def report_args(wildcards):
    return [
        *report_inputs(),
        f"--plots-dir={os.path.dirname(STAGES.report.outputs['pareto'])}",
        f"--csv={STAGES.report.outputs['csv']}",
        f"--html={STAGES.report.outputs['html']}",
        f"--complete={STAGES.report.outputs['complete']}",
        *[f"--replaces={path}" for path in PARTIAL_REPORT.values()],
    ]
