"""The commands a run starts from: check a config file, prepare a dataset declared under `datasets:`."""

from __future__ import annotations

from npuflow.cli.base import (
    Command,
    add_outputs,
    command,
    json_object,
)
from npuflow.util.errors import ConfigError


@command
class CheckConfig(Command):
    name = "check-config"
    help = "validate a config file and list its models and targets"
    description = "Validate a config file as the workflow does (schema, then names and dependent fields); errors name the entry and field."

    def add_arguments(self, p):
        p.add_argument("config", help="the config file (e.g. config.yaml)")

    def run(self, args):
        from npuflow.pipeline.config import load_config

        config = load_config(args.config)
        return {"models": list(config["models"]), "targets": config["targets"]}


@command
class Dataset(Command):
    name = "dataset"
    help = "fetch, safely extract and index a dataset declared under `datasets:`"

    def add_arguments(self, p):
        p.add_argument("name", help="the dataset's name under `datasets:`")
        p.add_argument("--config", default="config.yaml", help="config file declaring the dataset (default: %(default)s)")
        p.add_argument(
            "--entry", type=json_object, help="the dataset's config entry as JSON (what the workflow passes; instead of --config)"
        )
        add_outputs(p, out_dir="folder to prepare the dataset in (index.json and the extracted files)")

    def run(self, args):
        from npuflow.data.prepare import prepare_dataset
        from npuflow.pipeline.config import load_config

        entry = args.entry if args.entry else load_config(args.config)["datasets"].get(args.name)
        if entry is None:
            raise ConfigError(f"datasets.{args.name}: no such dataset in {args.config}")
        index = prepare_dataset(name=args.name, entry=entry, out_dir=args.out_dir)
        return {"dataset": args.name, "images": len(index["images"]), "labels": index["labels"], "masks": index["masks"]}
