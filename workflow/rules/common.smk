import json
import re

from snakemake.exceptions import WorkflowError

from npuflow.config import ConfigError, model_spec, validate_config
from npuflow.targets import load_targets

# Schema (workflow/schemas/config.schema.yaml, JSON Schema 2020-12, defaults filled in) and the
# checks a schema can't express, before the DAG is built. Errors name the entry and field.
try:
    validate_config(config)
except ConfigError as e:
    raise WorkflowError(str(e)) from None

SPECS = {name: model_spec(config, name) for name in config["models"]}
TARGET_PROFILES = load_targets(config["target_profiles"])
PAIRS = [(m, t) for m, spec in SPECS.items() for t in spec["targets"]]
MLFLOW_URI = config["mlflow"]["tracking_uri"]
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"]


wildcard_constraints:
    model="|".join(re.escape(m) for m in SPECS),
    target="|".join(re.escape(t) for t in TARGET_PROFILES.names()),


def spec_json(wildcards):
    """The resolved model spec. As a rule param it makes a changed entry re-run that model's jobs."""
    return json.dumps(SPECS[wildcards.model], sort_keys=True)


def profile_json(wildcards):
    return json.dumps(TARGET_PROFILES.get(wildcards.target), sort_keys=True)
