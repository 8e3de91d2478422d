"""npuflow runs every stage of the pipeline as a command of its own, so that a stage runs alone
(like `onnxsim` or `pulsar2 build`) and the Snakemake rules only wire files to these commands.

A model is named either by `--config FILE --model NAME` (by hand) or by `--spec JSON` (the
resolved model spec, as the workflow passes it). Each command prints its result as JSON; bad input
is one line, `npuflow <command>: error: …`, and exit status 2.

The commands are a registry (`COMMANDS`, filled by the modules of npuflow.cli.commands): one class per command with
its name, its help, its arguments and what it runs, as Polygraphy's tools are. Adding a command is
adding a class."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import ClassVar

from npuflow.util.errors import ConfigError
from npuflow.util.registry import Registry


class Command:
    """One `npuflow <name>` command."""

    name: ClassVar[str]
    help: ClassVar[str]  # one line, in `npuflow --help`
    description: ClassVar[str] = ""  # more, in `npuflow <name> --help` (default: the help)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> dict | None:
        """What the command does; the returned dict is printed as JSON."""
        raise NotImplementedError


COMMANDS: Registry[Command] = Registry("command")


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): `npuflow <command>: error: …`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------ argument types: checked as parsed
def json_arg(text: str):
    """A JSON argument (--spec, --profile, --files, …)."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text[:80]!r}") from None


def json_object(text: str) -> dict:
    value = json_arg(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{…}}), got {type(value).__name__}: {text[:80]!r}")
    return value


def input_file(text: str) -> str:
    """A file the command reads: it must be there."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file {text}")
    return text


def input_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder {text}")
    return text


def onnx_file(text: str) -> str:
    """An ONNX model: there, and starting as a ModelProto does (its ir_version field, 0x08), so that
    a report or a checkpoint given by mistake is named here rather than by protobuf's parser."""
    input_file(text)
    with open(text, "rb") as f:
        head = f.read(1)
    if head != b"\x08":
        raise argparse.ArgumentTypeError(f"{text} is not an ONNX model")
    return text


def command(cls: type[Command]) -> type[Command]:
    """Class decorator: register one instance of the command under its name."""
    COMMANDS.add(cls.name, cls())
    return cls


# ------------------------------------------------------------------ arguments shared by commands
def add_outputs(parser: argparse.ArgumentParser, **helps) -> None:
    """Required output arguments: --<name> with its help."""
    for name, text in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, help=text)


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime/torch threads (default: %(default)s)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model (--spec, or --config with --model)")
    g.add_argument("--spec", type=json_object, help="the resolved model spec as JSON (what the workflow passes)")
    g.add_argument("--config", default="config.yaml", help="config file to read the model entry from (default: %(default)s)")
    g.add_argument("--model", help="name of the model entry in --config")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("images")
    g.add_argument(
        "--datasets-dir", default="results/datasets", help="where `npuflow dataset` prepared the user datasets (default: %(default)s)"
    )
    g.add_argument("--cache-dir", default=None, help="cache of preprocessed image tensors (default: no cache)")


def add_profile_arguments(parser: argparse.ArgumentParser, config: bool = True) -> None:
    g = parser.add_argument_group("target")
    g.add_argument("--target", required=True, help="target name: a built-in profile or one of --config's target_profiles")
    g.add_argument(
        "--profile", type=json_object, help="the resolved target profile as JSON (default: --target from the built-ins and --config)"
    )
    if config:
        g.add_argument("--config", default="config.yaml", help="config file with user target_profiles, if it exists (default: %(default)s)")


# The stage whose model-spec fields a command reads, where its name is not the stage's.
COMMAND_STAGES = {"mixed": "mixed_precision"}


def model_spec_of(args) -> dict:
    """The model spec from --spec (checked: the fields of the command's stage that a resolved spec
    has), or from --config and --model."""
    from npuflow.pipeline.config import load_config
    from npuflow.pipeline.spec import STAGE_FIELDS, model_spec, spec_problems

    if args.spec is not None:
        stage = COMMAND_STAGES.get(args.command, args.command)
        problems = spec_problems(args.spec, stage) if stage in STAGE_FIELDS else []
        if problems:
            raise ConfigError(f"--spec ({stage} stage): " + "; ".join(problems))
        return args.spec
    if not args.model:
        raise ConfigError("name a model: --model NAME (with --config FILE) or --spec JSON")
    config = load_config(args.config)
    if args.model not in config["models"]:
        raise ConfigError(f"models.{args.model}: no such entry in {args.config}")
    return model_spec(config, args.model)


def user_profiles(config_path: str) -> dict:
    """The config's target_profiles, when the file exists (commands run from any folder)."""
    from npuflow.pipeline.config import load_config

    return load_config(config_path).get("target_profiles", {}) if Path(config_path).exists() else {}


def target_profile(args) -> dict:
    """The target profile from --profile, or --target among the built-ins and --config's."""
    from npuflow.targets import load_targets

    if args.profile:  # resolved as the workflow passes it; a hand-written one is checked the same way
        from npuflow.targets.schema import profile_problems

        problems = profile_problems(args.profile, "--profile")
        if problems:
            raise ConfigError("; ".join(problems))
        return args.profile
    return load_targets(user_profiles(args.config)).get(args.target)


# ------------------------------------------------------------------------------------ the parser
