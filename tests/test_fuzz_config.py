"""A fuzz test of the config check (issue 28, part 5): the valid configs of the tests
(tests/config.tiny.yaml and the ones conftest's `make_config` builds from `classifier_entry` and
`segformer_entry`) mutated by Hypothesis — wrong types, out-of-range numbers, hostile names
(`npu$(touch PWNED)`, `../../x`, names with spaces, quotes or newlines), missing and unknown keys,
keys that are not text (YAML reads `1:` or `null:` as such), nested `target_profiles` — and each
mutant must either validate or be refused with `ConfigError`: "invalid config:" then one line per
problem, each naming the field at fault. Never another exception (a traceback), never a file
written, never a command run.

The normal suite runs 500 examples, derandomised and without Hypothesis's example database, so CI
runs the same examples every time (a few seconds). For a longer hunt, set NPUFLOW_FUZZ_EXAMPLES:

    NPUFLOW_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz_config.py -q

(still derandomised; add NPUFLOW_FUZZ_SEED=<n> to draw other examples than CI's).

A short companion test runs `snakemake -n` on a few mutants the check accepts, as a user would.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from conftest import REPO, TINY_CONFIG, TINY_SEGFORMER, classifier_entry, segformer_entry, snakemake
from npuflow.pipeline.config import ConfigError, load_yaml, validate_config
from npuflow.pipeline.plan import Plan

EXAMPLES = int(os.environ.get("NPUFLOW_FUZZ_EXAMPLES", "500"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="NPUFLOW_FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEED = int(os.environ.get("NPUFLOW_FUZZ_SEED", "0"))


def _raw(**models) -> dict:
    """make_config's dict before validation (validation fills defaults in place)."""
    return {
        "weights": "random",
        "targets": ["ax650n-npu3", "rdk-x5"],
        "calibration": {"images": 4},
        "evaluation": {"images": 3, "latency_repeats": 3},
        "models": models,
    }


BASES = {
    "tiny": load_yaml(TINY_CONFIG),
    "classifier": _raw(evit=classifier_entry()),
    "segmenter": _raw(seg=segformer_entry()),
    "both": _raw(
        evit=classifier_entry(
            precision={"rdk-x5": {"op_types": {"Softmax": "int16"}}},
            mixed_precision={"goal": {"metric": "cosine", "value": 0.99}},
            quantization={"smoothquant": 0.5},
        ),
        seg=segformer_entry(targets=["rdk-x5"], calibration={"method": "percentile", "images": 2}),
    ),
    "profile": {
        **_raw(evit=classifier_entry()),
        "targets": ["my-npu"],
        "target_profiles": {"my-npu": {"base": "ax650n-npu3", "units": {"tensor": {"peak_ops_per_s": {"int8": 8.0e12}}}}},
    },
}
assert BASES["segmenter"]["models"]["seg"]["hf_config"] == TINY_SEGFORMER

HOSTILE_NAMES = [
    "npu$(touch PWNED)",
    "`touch PWNED`",
    "x; touch PWNED",
    "../../x",
    "..",
    "a/b",
    "a\\b",
    "with space",
    "it's",
    'say "hi"',
    "line\nbreak",
    "-rf",
    "",
    "_",
    "NUL",
    "com1.x",
    "results",
    "mlflow.db",
    "EVIT",
    "x" * 101,
    "ünïcode",
    "{model}",
    "*",
    "rdk-x50",
    "ax650n-npu3",
    "samples",
]
# What YAML gives a key besides text: `1:`, `1.5:`, `true:`, `null:`.
ODD_KEYS = [1, 0, -1, 1.5, True, False, None]
# Keys the schemas know (at one level or another), for unknown-but-plausible and profile keys.
KNOWN_KEYS = [
    "weights", "seed", "targets", "target_profiles", "mlflow", "calibration", "quantization", "evaluation", "datasets",
    "models", "source", "task", "input", "shape", "mean", "std", "surgery", "opset", "precision", "op_types", "default",
    "layers", "subgraphs", "mixed_precision", "goal", "metric", "value", "images", "method", "dataset", "folder", "archive",
    "url", "sha256", "hf_config", "head", "arch", "base", "units", "tensor", "vector", "dma", "cpu", "peak_ops_per_s",
    "int8", "int16", "memory", "ddr_bytes_per_s", "onchip_bytes", "overheads", "batch", "cores", "fit", "parameters",
    "fit_parameters", "transfer_from", "fit_only", "free_ops", "ops", "efficiency", "bytes_per_s", "range", "unit",
]  # fmt: skip

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 3, 11, 20, 21, 224, 8192, 8193, 100000, 100001, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1e-300, 1e300, -0.0, 99.999, 50.0, float("nan"), float("inf")]),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_NAMES + ["8.0e+12", "25.6e9", "fast", "int8", "int16", "float", "timm:", "hf:x", "http://x", "https://u:p@h"]),
)
# Profile paths, as a profile's fit.parameters and fit_parameters are keyed: rates, and paths into
# a number or past the end of the profile.
PROFILE_PATHS = [
    "units.tensor.efficiency",
    "memory.onchip_share",
    "units.tensor.peak_ops_per_s.int8",
    "units.tensor.peak_ops_per_s.int8.x",
    "memory.x.y",
    "x",
]
keys = st.one_of(st.sampled_from(HOSTILE_NAMES + KNOWN_KEYS + PROFILE_PATHS), st.sampled_from(ODD_KEYS), st.text(max_size=8))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)
# A user profile: a few nested levels of profile keys (`{base: ax650n-npu3, units: {tensor:
# {peak_ops_per_s: {int8: "fast"}}}}`) over hostile leaves.
profile_keys = st.sampled_from(KNOWN_KEYS[37:] + ["base", "base"])
profiles = st.recursive(
    st.one_of(leaves, st.sampled_from(["ax650n-npu3", "rdk-x5", "_axera", "j5", "my-npu", "other"])),
    lambda inner: st.dictionaries(st.one_of(profile_keys, keys), inner, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every (path, node) below `node`, the root included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _at(config, path):
    for p in path:
        config = config[p]
    return config


@st.composite
def mutants(draw):
    """A base config with one to three mutations; returns (description, config)."""
    name = draw(st.sampled_from(sorted(BASES)))
    config = copy.deepcopy(BASES[name])
    done = [name]
    for _ in range(draw(st.integers(1, 3))):
        sites = list(_paths(config))
        path, node = draw(st.sampled_from(sites))
        op = draw(st.sampled_from(["set", "set", "delete", "add", "rename", "profile"]))
        if op == "profile":
            profile_name = draw(st.one_of(st.sampled_from(["my-npu", "other", "_base"]), st.sampled_from(HOSTILE_NAMES)))
            profile = draw(st.one_of(profiles, st.fixed_dictionaries({"base": st.sampled_from(["ax650n-npu3", "rdk-x5"])}, optional={
                "units": st.fixed_dictionaries({"tensor": st.fixed_dictionaries({"peak_ops_per_s": st.dictionaries(st.sampled_from(["int8", "int16", "fp8"]), leaves, max_size=2)})}),
                "memory": st.dictionaries(st.sampled_from(["ddr_bytes_per_s", "onchip_bytes", "x"]), leaves, max_size=2),
                "fit": values,
                "transfer_from": values,
                "fit_parameters": values,
            })))  # fmt: skip
            if not isinstance(config.get("target_profiles"), dict):
                config["target_profiles"] = {}
            config["target_profiles"][profile_name] = profile
            if draw(st.booleans()) and isinstance(config.get("targets"), list):
                config["targets"].append(profile_name)
            done.append(f"profile {profile_name!r}: {profile!r}")
        elif op == "set" and path:
            _at(config, path[:-1])[path[-1]] = value = draw(values)
            done.append(f"set {path}: {value!r}")
        elif op == "delete" and path:
            del _at(config, path[:-1])[path[-1]]
            done.append(f"delete {path}")
        elif op == "add" and isinstance(node, dict):
            key, value = draw(keys), draw(values)
            node[key] = value
            done.append(f"add {path} {key!r}: {value!r}")
        elif op == "add" and isinstance(node, list):
            value = draw(values)
            node.append(value)
            done.append(f"append {path}: {value!r}")
        elif op == "rename" and path and isinstance(_at(config, path[:-1]), dict):
            parent, key = _at(config, path[:-1]), draw(keys)
            parent[key] = parent.pop(path[-1])
            done.append(f"rename {path} to {key!r}")
    return "; ".join(done), config


class CommandRun(AssertionError):
    pass


@contextmanager
def no_commands():
    """Any attempt to start a process from this thread fails the example (and says which). Other
    threads go through: the background pipeline runs (tests/background.py) start Snakemake while
    this test runs, and the patch is process-wide."""
    from unittest import mock

    checking = threading.get_ident()

    def refusing(original):
        def call(*args, **kwargs):
            if threading.get_ident() == checking:
                raise CommandRun(f"the config check ran a command: {args!r}")
            return original(*args, **kwargs)

        return call

    with (
        mock.patch.object(subprocess.Popen, "__init__", refusing(subprocess.Popen.__init__)),
        mock.patch.object(os, "system", refusing(os.system)),
        mock.patch.object(os, "posix_spawn", refusing(os.posix_spawn)),
        mock.patch.object(os, "fork", refusing(os.fork)),
    ):
        yield


# The fields a problem line may name: the config's top-level keys (and "(top level)" itself).
TOP_FIELDS = ("weights", "seed", "targets", "target_profiles", "mlflow", "calibration", "quantization", "evaluation", "datasets", "models")
LINE = re.compile(r"^  (\(top level\)|(" + "|".join(TOP_FIELDS) + r")(\.[^\n]*?)?): \S")


def check_outcome(config: dict) -> str | None:
    """validate_config on `config`: None if accepted (and planned, as the Snakefile does), else the
    ConfigError's message, which must be one line per problem each naming its field."""
    try:
        validated = validate_config(config)
    except ConfigError as e:
        message = str(e)
        head, *lines = message.split("\n")
        assert head == "invalid config:", message
        assert lines, message
        for line in lines:
            assert LINE.match(line), f"a problem line that names no field: {line!r}\nin:\n{message}"
        return message
    plan = Plan(validated, recipe_maps=None)
    assert plan.pairs(), "an accepted config plans no model/target pair"
    return None


@pytest.fixture(scope="module")
def scratch():
    """An empty working folder for the examples (relative paths in a config land here)."""
    before = Path.cwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(before)


def test_the_fuzz_generator_reaches_accepted_and_refused_configs_of_every_kind(scratch):
    """The examples are not all refused at the first key: the valid bases pass, and a draw of
    mutants holds accepted ones as well as refused ones (else the fuzz test would check little)."""
    for name, config in BASES.items():
        assert check_outcome(copy.deepcopy(config)) is None, name
    outcomes = {"accepted": 0, "refused": 0}

    @seed(1)
    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutants())
    def count(case):
        outcomes["refused" if check_outcome(copy.deepcopy(case[1])) else "accepted"] += 1

    count()
    assert outcomes["accepted"] >= 10 and outcomes["refused"] >= 50, outcomes


@seed(SEED)
@SETTINGS
@given(mutants())
def test_a_mutated_config_validates_or_is_refused_field_by_field(scratch, case):
    description, config = case
    repo_before = sorted(p.name for p in REPO.iterdir())
    try:
        with no_commands():
            check_outcome(config)
    except (ConfigError, AssertionError):
        raise
    except Exception as e:  # a traceback where the user should get a line naming the field
        raise AssertionError(f"{type(e).__name__}: {e}\nfrom the mutant: {description}") from e
    assert list(scratch.iterdir()) == [], f"the check wrote {list(scratch.iterdir())} ({description})"
    assert sorted(p.name for p in REPO.iterdir()) == repo_before, description
    assert not any(Path(p, "PWNED").exists() for p in (scratch, REPO, Path.home(), "/tmp"))


# ---------------------------------------------------------------------------------------------
# The fuzzed shapes the check accepts, through `snakemake -n` as a user runs it.
# ---------------------------------------------------------------------------------------------

ACCEPTED_SHAPES = {
    # a profile derived from a built-in, one rate changed, as the fuzzer's nested profiles do
    "derived-profile": lambda c: c.update(
        targets=["my-npu", "rdk-x5"],
        target_profiles={"my-npu": {"base": "ax650n-npu3", "units": {"tensor": {"peak_ops_per_s": {"int8": 1.0e13}}}}},
    ),
    # unusual but valid numbers and names at the edges of their ranges
    "edge-numbers": lambda c: (
        c["evaluation"].update(images=1, latency_repeats=1),
        c["calibration"].update(method="percentile", percentile=100, images=1),
        c["models"]["efficientvit_m0"].update(opset=20),
    ),
    # a renamed model with every character a name may hold, a per-model target list
    "odd-valid-name": lambda c: c["models"].update({"M0_x-1.v2": {**c["models"].pop("efficientvit_m0"), "targets": ["rdk-x5"]}}),
    # a global quantization block of the non-default choices
    "quantization": lambda c: c.update(quantization={"weights": "per_tensor", "smoothquant": False}),
}


@pytest.mark.parametrize("shape", sorted(ACCEPTED_SHAPES))
def test_snakemake_dry_run_on_accepted_fuzz_shapes(tmp_path, shape):
    """What validate_config accepts, Snakemake's dry run plans too: exit 0 (or a one-line error),
    no traceback, nothing written outside its folder."""
    config = load_yaml(TINY_CONFIG)
    ACCEPTED_SHAPES[shape](config)
    assert check_outcome(copy.deepcopy(config)) is None  # the shape is one the check accepts
    # a box of its own inside tmp_path: pytest's shared temporary folder gets other tests' folders
    # at any time (the background fixtures), so "nothing written outside" is checked one level in
    box = tmp_path / "box"
    work = box / "work"
    work.mkdir(parents=True)
    (box / "c.yaml").write_text(yaml.safe_dump(config))
    repo_before = sorted(p.name for p in REPO.iterdir())
    proc = snakemake(work, "-n", configfile=box / "c.yaml")
    out = proc.stderr + proc.stdout
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == 0, out[-3000:]  # these shapes are all meant to plan
    assert "Job stats" in out and "rule fetch" in out, out[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box"]
    assert sorted(p.name for p in box.iterdir()) == ["c.yaml", "work"]
    assert sorted(p.name for p in REPO.iterdir()) == repo_before
    assert not (work / "results").exists()  # a dry run writes no result


@pytest.mark.parametrize("key", ODD_KEYS)
@pytest.mark.parametrize(
    "block",
    [("quantization",), ("calibration",), ("models", "efficientvit_m0", "quantization"), ("models", "efficientvit_m0", "calibration")],
)
def test_a_key_that_is_no_text_in_a_block_is_refused_in_one_line(scratch, block, key):
    """A key YAML reads as a number, a boolean or null (`1: true`) where a method's name goes: one
    line naming the field (a draw of the fuzz test found `1:` under a model's quantization ending in
    a TypeError from the close-match search)."""
    config = copy.deepcopy(BASES["tiny"])
    node = config
    for part in block:
        node = node.setdefault(part, {})
    node[key] = True
    with no_commands():
        message = check_outcome(config)
    assert message is not None and ".".join(block) in message
