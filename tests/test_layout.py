"""The stage table (npuflow.core.layout) is the contract: every rule's outputs, log, benchmark, memory
and command are the table's, and what derives from it (reserved names, STAGE_FIELDS, memory keys,
run files, CLI commands) agrees with it."""

import re

import pytest
import yaml

from conftest import REPO, snakemake
from npuflow.cli.app import COMMANDS, build_parser
from npuflow.core.layout import ARTIFACTS, RUN_FILES, STAGES, reserved_names, run_files
from npuflow.pipeline.checks import RESERVED_MODEL_NAMES
from npuflow.pipeline.memory import MEASURED_PEAKS_MB
from npuflow.pipeline.spec import STAGE_FIELDS


def dry_run_jobs(workdir, configfile) -> list[dict]:
    """Every job of a dry run (`-n -p`): rule, outputs, log, benchmark, wildcards, resources, shell command."""
    proc = snakemake(workdir, "-n", "-p", configfile=configfile)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs, job = [], None
    for line in proc.stdout.splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ")):
            job = {"rule": line.split()[1].rstrip(":"), "output": [], "log": None, "benchmark": None, "wildcards": {}, "resources": {}}
            jobs.append(job)
        elif job is None:
            continue
        elif line.startswith("    output: "):
            # the report's outputs are update(): Snakemake keeps an earlier report until the job succeeds
            job["output"] = [path.removesuffix(" (update)") for path in line.split(": ", 1)[1].split(", ")]
        elif line.startswith("    log: "):
            job["log"] = line.split(": ", 1)[1]
        elif line.startswith("    benchmark: "):
            job["benchmark"] = line.split(": ", 1)[1]
        elif line.startswith("    wildcards: "):
            job["wildcards"] = dict(w.split("=", 1) for w in line.split(": ", 1)[1].split(", "))
        elif line.startswith("    resources: "):
            job["resources"] = dict(r.split("=", 1) for r in line.split(": ", 1)[1].split(", "))
        elif line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: ") :]
    return jobs


@pytest.fixture(scope="module")
def every_rule(tmp_path_factory):
    """A dry run of the tiny config with a user dataset and automatic mixed precision, so that
    every rule of the workflow plans at least one job."""
    d = tmp_path_factory.mktemp("layout")
    config = yaml.safe_load((REPO / "tests" / "config.tiny.yaml").read_text())
    (d / "images").mkdir()
    (d / "images" / "0.png").write_bytes(b"")  # a folder of images (the config refuses one without any)
    config["datasets"] = {"mine": {"folder": str(d / "images")}}
    entry = config["models"]["efficientvit_m0"]
    entry["calibration"] = {"dataset": "mine"}
    entry["mixed_precision"] = {"targets": ["rdk-x5"], "goal": {"metric": "cosine", "value": 0.99}}
    (d / "c.yaml").write_text(yaml.safe_dump(config))
    return dry_run_jobs(d, d / "c.yaml"), config


def test_every_rule_is_a_stage_and_its_jobs_write_what_the_table_says(every_rule):
    jobs, config = every_rule
    rules = {j["rule"] for j in jobs} - {"all"}
    assert rules == set(STAGES.names())  # every rule planned, and no rule outside the table
    for job in (j for j in jobs if j["rule"] != "all"):
        stage, wc = STAGES[job["rule"]], job["wildcards"]
        expected = [p.format(**wc) for name, p in stage.outputs.items() if name != "pareto"]
        if "pareto" in stage.outputs:  # the report's plots: one per target
            expected += [stage.output("pareto", target=t) for t in config["targets"]]
        assert job["output"] == expected, job["rule"]
        assert job["log"] == stage.log_path(**wc), job["rule"]
        assert job["benchmark"] == (stage.benchmark_pattern.format(**wc) if stage.benchmark else None), job["rule"]
        assert ("mem_mb" in job["resources"]) == (stage.memory is not None), job["rule"]
        command = re.match(r"npuflow (\S+)", job["shell"]).group(1)
        assert command == stage.command and command in COMMANDS, job["rule"]
        assert ("--spec" in job["shell"]) == (stage.fields is not None), job["rule"]


def test_the_mixed_precision_target_builds_the_chosen_model(every_rule):
    jobs, _ = every_rule
    build = next(j for j in jobs if j["rule"] == "build" and j["wildcards"]["target"] == "rdk-x5")
    assert f"{STAGES.mixed_precision.output('onnx', model='efficientvit_m0', target='rdk-x5')} " in build["shell"]


def test_derived_names_agree_with_the_table():
    assert reserved_names() == RESERVED_MODEL_NAMES
    assert {"logs", "benchmarks", "datasets", "plots", "mlflow.db", "mlartifacts", "summary.csv", "report.html"} <= set(
        RESERVED_MODEL_NAMES
    )
    assert "{model}" not in RESERVED_MODEL_NAMES
    assert {s.name: s.fields for s in STAGES if s.fields is not None} == STAGE_FIELDS
    assert set(MEASURED_PEAKS_MB) == {s.memory for s in STAGES if s.memory}
    for f in RUN_FILES:
        assert f.output in STAGES[f.stage].outputs, f.name
    assert len(set(ARTIFACTS.values())) == len(ARTIFACTS)
    # A run's files are the stage outputs, with the recipe its target builds.
    files = run_files("m", "t", "mixed-t", mixed=True)
    assert files["quantize"] == STAGES.mixed_precision.output("quant", model="m", target="t")
    assert files["onnx_quant"] == STAGES.mixed_precision.output("onnx", model="m", target="t")
    assert "mixed" not in run_files("m", "t", "int8", mixed=False)


def test_every_stage_command_is_registered_with_help_for_every_argument():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {name for name, _ in COMMANDS.items()}
    assert {s.command for s in STAGES} <= set(sub.choices)
    for name, p in sub.choices.items():
        undocumented = [a.dest for a in p._actions if a.dest != "help" and not a.help]
        assert not undocumented, f"npuflow {name}: arguments without help: {undocumented}"
    # The top-level description is whole sentences, not a cut first line.
    assert parser.description.endswith(".") and "only wire files to these commands." in parser.description
