"""Names are data (issue 28): every name the config gives that becomes a wildcard, a file name, an
MLflow name or a command argument is checked against npuflow.core.names' one pattern when the config
is read, and every shell command of the workflow quotes what it interpolates."""

import ast
import copy
import re
import string

import pytest
import yaml

from conftest import REPO, classifier_entry, snakemake
from npuflow.core.names import MAX_NAME_LENGTH, NAME_FIELDS, is_name, wildcard_constraint
from npuflow.pipeline.config import ConfigError, validate_config

HOSTILE_NAMES = [
    "npu$(touch PWNED)",
    "npu`touch PWNED`",
    "../../escaped",
    "..",
    "a/b",
    "my npu",
    "it's",
    'a"b',
    "a;b",
    "-rf",
    ".hidden",
    "a..b",
    "x" * (MAX_NAME_LENGTH + 1),
    "",
]


def test_names_and_not_names():
    assert all(is_name(n) for n in ("efficientvit_m0", "ax650n-npu3", "rdk-x5", "v1.2", "A", "x" * MAX_NAME_LENGTH))
    assert not any(is_name(n) for n in HOSTILE_NAMES)
    assert not is_name(3) and not is_name(None)


def base_config() -> dict:
    return {
        "weights": "random",
        "targets": ["ax650n-npu3"],
        "models": {"m": classifier_entry()},
    }


# Each field that holds a name, and how to put `name` there (alone: the rest of the config is valid).
def _set_dataset_key(c, name):
    c["datasets"] = {name: {"folder": "/nonexistent"}}


def _set_profile_key(c, name):
    c["target_profiles"] = {name: {"base": "ax650n-npu3"}}


def _set_op_type(c, name):
    c["models"]["m"]["precision"] = {"ax650n-npu3": {"op_types": {name: "int16"}}}


def _set_profile_op_type(c, name):
    c["target_profiles"] = {"my-npu": {"base": "ax650n-npu3", "precision": {"op_types": {name: "int16"}}}}


NAME_SITES = {
    "models": (lambda c, n: c["models"].update({n: classifier_entry()}), "models"),
    "datasets": (_set_dataset_key, "datasets"),
    "target_profiles": (_set_profile_key, "target_profiles"),
    "targets": (lambda c, n: c.update(targets=[n]), "targets.0"),
    "calibration.dataset": (lambda c, n: c.update(calibration={"dataset": n}), "calibration.dataset"),
    "evaluation.dataset": (lambda c, n: c.update(evaluation={"dataset": n}), "evaluation.dataset"),
    "target_profiles.*.precision.op_types": (_set_profile_op_type, "target_profiles.my-npu.precision.op_types"),
    "models.*.targets": (lambda c, n: c["models"]["m"].update(targets=["ax650n-npu3", n]), "models.m.targets.1"),
    "models.*.calibration.dataset": (lambda c, n: c["models"]["m"].update(calibration={"dataset": n}), "models.m.calibration.dataset"),
    "models.*.precision": (lambda c, n: c["models"]["m"].update(precision={n: {"default": "int16"}}), "models.m.precision"),
    "models.*.precision.*.op_types": (_set_op_type, "models.m.precision.ax650n-npu3.op_types"),
    "models.*.mixed_precision.targets": (
        lambda c, n: c["models"]["m"].update(mixed_precision={"targets": [n], "goal": {"metric": "cosine", "value": 0.99}}),
        "models.m.mixed_precision.targets.0",
    ),
}


def test_every_name_field_has_a_case():
    assert set(NAME_SITES) == {path for path, _ in NAME_FIELDS}


@pytest.mark.parametrize("site", sorted(NAME_SITES))
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:24])
def test_a_hostile_name_is_refused_in_one_line_naming_the_field(site, name):
    put, where = NAME_SITES[site]
    config = base_config()
    put(config, name)
    with pytest.raises(ConfigError) as e:
        validate_config(copy.deepcopy(config))
    assert str(e.value).splitlines() == [
        "invalid config:",
        f"  {where}: "
        + (f"the entry {name!r}" if dict(NAME_FIELDS)[site] == "keys" else repr(name))
        + " is not a usable name; expected letters, digits, '_', '-' and '.', starting with a letter or digit, no '..', "
        f"at most {MAX_NAME_LENGTH} characters (names become folder and file names and command arguments)",
    ]


@pytest.mark.parametrize("site", sorted(NAME_SITES))
def test_a_good_name_passes_the_name_check(site):
    """The same sites with a good name: what is refused above is the name, not the field."""
    put, where = NAME_SITES[site]
    config = base_config()
    put(config, "good-name.v2")
    try:
        validate_config(config)
    except ConfigError as e:
        assert "usable name" not in str(e)  # unknown target or dataset, say: that is another check


def test_a_profile_key_may_start_with_an_underscore_as_a_base():
    config = base_config()
    config["target_profiles"] = {"_my-family": {"base": "ax650n-npu3"}, "my-npu": {"base": "_my-family"}}
    config["targets"] = ["my-npu"]
    validate_config(config)


def test_wildcard_constraints_take_names_only():
    assert re.fullmatch(wildcard_constraint(["a.b", "c-d"]), "a.b") and not re.fullmatch(wildcard_constraint(["a.b"]), "aXb")
    assert re.fullmatch(wildcard_constraint([]), "") is None
    with pytest.raises(ValueError, match=r"not names, so not wildcard values: '\.\./x'"):
        wildcard_constraint(["ok", "../x"])


def test_a_hostile_target_name_runs_nothing_and_writes_nothing(tmp_path):
    """The issue's case: a profile named `npu$(touch PWNED)` ran `touch PWNED` in the run folder,
    and one named `../../../../escaped` wrote outside it. Now the dry run stops at the config."""
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    config["target_profiles"] = {"npu$(touch PWNED)": {"base": "ax650n-npu3"}}
    config["targets"] = ["npu$(touch PWNED)"]
    work = tmp_path / "a" / "b" / "c" / "work"
    work.mkdir(parents=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(work, "-n", configfile=tmp_path / "c.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "target_profiles: the entry 'npu$(touch PWNED)' is not a usable name" in out
    assert "targets.0: 'npu$(touch PWNED)' is not a usable name" in out
    assert "rule " not in out and not (work / "results").exists()
    assert [p.name for p in tmp_path.rglob("*") if "PWNED" in p.name or "escaped" in p.name] == []


# ---------------------------------------------------------------- every shell command quotes its fields

WORKFLOW_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def shell_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) of each `shell:` directive: the string literals indented under it, joined."""
    lines = text.splitlines()
    commands = []
    for i, line in enumerate(lines):
        if line.strip() != "shell:":
            continue
        indent = len(line) - len(line.lstrip())
        body = []
        for follow in lines[i + 1 :]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                break
            body.append(follow.strip())
        commands.append((i + 1, "".join(ast.literal_eval(part) for part in body if part)))
    return commands


def unquoted_fields(command: str) -> list[str]:
    """The fields of a Snakemake shell command not quoted by `:q` ({{ and }} are literal braces)."""
    return [
        f"{{{field}}}" for _, field, spec, _ in string.Formatter().parse(command) if field is not None and not (spec or "").endswith("q")
    ]


def test_the_field_check_finds_unquoted_fields():
    assert unquoted_fields("x {input.a:q} --t {wildcards.target} > {log} 2>&1 {{literal}}") == ["{wildcards.target}", "{log}"]


def test_every_shell_command_quotes_what_it_interpolates():
    commands = {f"{path.relative_to(REPO)}:{line}": cmd for path in WORKFLOW_FILES for line, cmd in shell_commands(path.read_text())}
    # Every rule that runs a command: a parser that found none would pass nothing.
    rules = sum(len(re.findall(r"^\s*shell:\s*$", path.read_text(), re.M)) for path in WORKFLOW_FILES)
    assert len(commands) == rules >= 15
    assert sum(len(list(string.Formatter().parse(c))) for c in commands.values()) > 100
    assert {where: unquoted_fields(cmd) for where, cmd in commands.items() if unquoted_fields(cmd)} == {}
