"""Config validation: names, then the JSON Schema (shape, types, defaults), then the checks a schema cannot express."""

from __future__ import annotations

from pathlib import Path

import jsonschema

from npuflow.core.names import name_problems
from npuflow.pipeline.checks import check_semantics
from npuflow.pipeline.schema import defaults_filling_validator, error_field, error_order, load_schema
from npuflow.pipeline.spec import model_spec
from npuflow.pipeline.yamlfile import load_yaml
from npuflow.util.errors import ConfigError

# The names the Snakefile, the rules and the tests import from here; the rest of the config's
# handling lives in schema, checks, spec and yamlfile.
__all__ = ["ConfigError", "load_config", "load_yaml", "model_spec", "validate_config"]


def validate_config(config: dict) -> dict:
    """Validate `config` in place (filling schema defaults) and return it; raise ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError("config: expected a mapping at the top level")
    # Names first: a name that is a command or a path is refused before anything reads it.
    lines = name_problems(config)
    validator = defaults_filling_validator()(load_schema())
    errors = sorted(validator.iter_errors(config), key=error_order)
    lines += [f"{error_field(e)}: {e.message}" + _expected(e) for e in errors]
    if lines:
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    check_semantics(config)
    return config


def _expected(error: jsonschema.ValidationError) -> str:
    desc = error.schema.get("description") if isinstance(error.schema, dict) else None
    return f" (expected: {desc})" if desc else ""


def load_config(path: str | Path) -> dict:
    return validate_config(load_yaml(path))
