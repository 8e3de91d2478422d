"""`npuflow <stage> …`: every pipeline stage as a command, so a stage runs alone (like `onnxsim` or
`pulsar2 build`), and the Snakemake rules only wire files to these commands.

A model is named either by `--config FILE --model NAME` (by hand) or by `--spec JSON` (the resolved
model spec, as the workflow passes it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import NpuflowError


def _add_model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of)")
    g.add_argument("--spec", help="resolved model spec as JSON (what the workflow passes)")
    g.add_argument("--config", default="config.yaml", help="config file (with --model)")
    g.add_argument("--model", help="model entry name in the config")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets-dir", default="results/datasets", help="where `npuflow dataset` prepared the user datasets")
    p.add_argument("--cache-dir", default=None, help="cache of preprocessed images (none: no cache)")


def _spec(args) -> dict:
    from .config import ConfigError, load_config, model_spec

    if args.spec:
        return json.loads(args.spec)
    if not args.model:
        raise ConfigError("name a model: --model NAME (with --config FILE) or --spec JSON")
    config = load_config(args.config)
    if args.model not in config["models"]:
        raise ConfigError(f"models.{args.model}: no such entry in {args.config}")
    return model_spec(config, args.model)


def _profile(args) -> dict:
    from .config import load_config
    from .targets import load_targets

    if args.profile:
        return json.loads(args.profile)
    user = load_config(args.config).get("target_profiles", {}) if Path(args.config).exists() else {}
    return load_targets(user).get(args.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="npuflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("config")

    p = sub.add_parser("fetch", help="weights (pretrained or seeded random) + manifest")
    _add_model(p)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--cache-dir", default="results")

    p = sub.add_parser("export", help="ONNX export, checked against torch")
    _add_model(p)
    p.add_argument("--fetch-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("simplify", help="onnxsim, outputs checked equal")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("surgery", help="apply named graph surgery passes")
    p.add_argument("input")
    p.add_argument("--passes", nargs="*", default=None, help="pass names (default: the model's surgery list)")
    _add_model(p)
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("calibrate", help="activation ranges on calibration images")
    p.add_argument("input")
    _add_model(p)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="ranges (onnxruntime calibration cache)")
    p.add_argument("--report", required=True)
    _add_data(p)

    p = sub.add_parser("quantize", help="static QDQ int8 from stored ranges")
    p.add_argument("input")
    p.add_argument("--ranges", required=True)
    p.add_argument("--calibration", required=True, help="calibrate's report")
    p.add_argument("--recipe", default='{"default": "int8"}', help="precision recipe as JSON (a target profile's `precision`)")
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)

    p = sub.add_parser("build", help="simulated NPU build of a quantised model")
    p.add_argument("input")
    p.add_argument("--target", required=True)
    p.add_argument("--profile", help="resolved target profile as JSON (default: --target from the built-ins/config)")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--model-name", default="")
    p.add_argument("--manifest", help="fetch manifest, to record the weights kind")
    p.add_argument("--layers", help="precision analysis rows (eval/<recipe>.layers.json) to join with this target's build")
    p.add_argument("--layers-csv", help="where to write the per-layer table for this target")

    p = sub.add_parser("reference", help="float outputs on held-out images + host fp32 latency")
    p.add_argument("input")
    _add_model(p)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--threads", type=int, default=1)
    _add_data(p)

    p = sub.add_parser("dataset", help="fetch, safely extract and index a dataset declared under `datasets:`")
    p.add_argument("name")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--entry", help="the dataset's config entry as JSON (what the workflow passes)")
    p.add_argument("--out-dir", required=True)

    p = sub.add_parser("mixed", help="automatic mixed precision for one (model, target): promote layers until the goal is met")
    _add_model(p)
    p.add_argument("--target", required=True)
    p.add_argument("--profile", help="resolved target profile as JSON (default: --target from the built-ins/config)")
    p.add_argument("--input", required=True, help="float (post-surgery) model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--ranges", required=True)
    p.add_argument("--calibration", required=True)
    p.add_argument("--layers", required=True, help="precision analysis of the target's base recipe (eval/<recipe>.layers.json)")
    p.add_argument("--recipe", required=True, help="the target's base recipe as JSON")
    p.add_argument("--out", required=True, help="the chosen quantised model")
    p.add_argument("--quant-report", required=True, help="its quantize report")
    p.add_argument("--report", required=True, help="trade-off curve and chosen recipe (JSON)")
    _add_data(p)

    p = sub.add_parser("evaluate", help="quantised vs float on held-out images + host int8 latency")
    p.add_argument("input")
    _add_model(p)
    p.add_argument("--recipe", default="int8", help="precision recipe id of the quantised model (for the record)")
    p.add_argument("--float-model", required=True, help="the float (post-surgery) model, for the per-layer analysis")
    p.add_argument("--layers-out", required=True, help="per-layer precision analysis (JSON)")
    p.add_argument("--reference", required=True, help="reference .npz")
    p.add_argument("--reference-report", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("init-mlflow", help="create the tracking store and experiment once")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("track", help="log (or reuse) the MLflow run of each (model, target)")
    _add_model(p)
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--files", required=True, help="JSON {target: {name: path}}: the stage reports and artifacts of each run")
    p.add_argument("--out", required=True)

    p = sub.add_parser("sim-validate", help="predict published device measurements with the simulator")
    p.add_argument(
        "csv", help="published measurements (columns: " + "target,model,timm_name,input_hw,batch,metric,value,[precision,]source)"
    )
    p.add_argument("--out", required=True, help="report JSON")
    p.add_argument(
        "--cross-validate",
        choices=["family", "row"],
        help="refit every target without each model family (or each row) and predict it from that fit",
    )
    p.add_argument("--cache-dir", default="results/sim-cache", help="exported models, reused between runs")
    p.add_argument("--config", default="config.yaml", help="for user target_profiles (if the file exists)")

    p = sub.add_parser("sim-fit", help="fit the targets' free physical parameters to published measurements")
    p.add_argument("csv")
    p.add_argument("--cache-dir", default="results/sim-cache")
    p.add_argument("--profile-dir", help="where the fitted profiles are written (default: the built-in profiles)")

    p = sub.add_parser("plot", help="a model's simulated latency breakdown (by unit and op type) over its targets, as PNG")
    p.add_argument("--model", required=True)
    p.add_argument("--files", required=True, help="JSON {target: {name: path}} with each target's build and trace")
    p.add_argument("--out", required=True)

    p = sub.add_parser("report", help="summary.csv and report.html over all (model, target) pairs")
    p.add_argument("--pair", action="append", default=[], metavar="MODEL:TARGET[:RECIPE]")
    p.add_argument("--results", default="results", help="where MODEL/track.json is (without --stages)")
    p.add_argument(
        "--stages",
        help="JSON [[stage, [output patterns], log pattern], ...] in pipeline order: a pair with a "
        "missing output is reported failed at the first such stage",
    )
    p.add_argument("--plots-dir", help="also write pareto.<target>.png here")
    p.add_argument("--csv", required=True)
    p.add_argument("--html", required=True)

    args = parser.parse_args(argv)
    try:
        result = _dispatch(args)
    except NpuflowError as e:  # bad input: one clear line, no traceback
        print(f"npuflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str)[:4000])
    return 0


def _dispatch(args):
    cmd = args.command
    if cmd == "check-config":
        from .config import load_config

        config = load_config(args.config)
        return {"models": list(config["models"]), "targets": config["targets"]}
    if cmd == "fetch":
        from .fetch import fetch

        return fetch(_spec(args), args.out_dir, args.cache_dir)
    if cmd == "export":
        from .export import export

        return export(_spec(args), args.fetch_dir, args.out, args.report, args.threads)
    if cmd == "simplify":
        from .simplify import simplify

        return simplify(args.input, args.out, args.report, args.threads)
    if cmd == "surgery":
        from .surgery import surgery

        passes = args.passes if args.passes is not None else _spec(args).get("surgery", [])
        return surgery(args.input, passes, args.out, args.report, args.threads)
    if cmd == "calibrate":
        from .calibrate import calibrate

        return calibrate(args.input, args.manifest, _spec(args), args.out, args.report, args.datasets_dir, args.cache_dir)
    if cmd == "quantize":
        from .quantize import quantize

        return quantize(args.input, args.ranges, args.calibration, json.loads(args.recipe), args.out, args.report)
    if cmd == "build":
        from .io import read_json
        from .sim.build import build

        weights = read_json(args.manifest)["weights"] if args.manifest else ""
        rows = read_json(args.layers)["rows"] if args.layers else None
        report = build(args.input, _profile(args), args.out_dir, args.model_name, weights, rows, args.layers_csv)
        return {k: report[k] for k in ("model", "target", "latency_ms", "fps", "subgraphs", "unit_time_ms")}
    if cmd == "reference":
        from .evaluate import reference

        return reference(args.input, args.manifest, _spec(args), args.out, args.report, args.threads, args.datasets_dir, args.cache_dir)
    if cmd == "evaluate":
        from .evaluate import evaluate

        return evaluate(
            args.input,
            args.float_model,
            args.reference,
            args.reference_report,
            args.manifest,
            _spec(args),
            args.recipe,
            args.out,
            args.layers_out,
            args.threads,
        )
    if cmd == "dataset":
        from .config import load_config
        from .data import prepare_dataset

        entry = json.loads(args.entry) if args.entry else load_config(args.config)["datasets"].get(args.name)
        if entry is None:
            from .config import ConfigError

            raise ConfigError(f"datasets.{args.name}: no such dataset in {args.config}")
        index = prepare_dataset(args.name, entry, args.out_dir)
        return {"dataset": args.name, "images": len(index["images"]), "labels": index["labels"], "masks": index["masks"]}
    if cmd == "mixed":
        from .mixed import mixed_precision

        report = mixed_precision(
            args.input,
            args.manifest,
            args.ranges,
            args.calibration,
            args.layers,
            _spec(args),
            _profile(args),
            json.loads(args.recipe),
            args.out,
            args.quant_report,
            args.report,
            args.datasets_dir,
            args.cache_dir,
        )
        return {k: report[k] for k in ("target", "goal", "goal_met", "chosen")}
    if cmd == "init-mlflow":
        from .track import init_store, tracking_uri

        return init_store(tracking_uri(args.tracking_uri), args.experiment, args.out)
    if cmd == "track":
        from .track import log_model_runs, tracking_uri

        return log_model_runs(tracking_uri(args.tracking_uri), args.experiment, _spec(args), json.loads(args.files), args.out)
    if cmd == "sim-validate":
        from .config import load_config
        from .sim.validate import validate

        user = load_config(args.config).get("target_profiles", {}) if Path(args.config).exists() else {}
        return validate(args.csv, args.out, args.cache_dir, user, args.cross_validate)["summary"]
    if cmd == "sim-fit":
        from .sim.validate import fit

        return {
            t: {"parameters": r["parameters"], "rms_log_error": r["rms_log_error"]}
            for t, r in fit(args.csv, args.cache_dir, args.profile_dir).items()
        }
    if cmd == "plot":
        from .report import plot_model

        plot_model(args.model, json.loads(args.files), args.out)
        return {"plot": args.out}
    if cmd == "report":
        from .report import report

        pairs = [tuple(p.split(":")) for p in args.pair]
        stages = json.loads(args.stages) if args.stages else None
        rows = report(pairs, args.csv, args.html, args.results, stages, args.plots_dir)
        return {
            "rows": len(rows),
            "failed": [f"{r['model']}:{r['target']} at {r['failed_stage']}" for r in rows if r["status"] != "ok"],
            "csv": args.csv,
            "html": args.html,
        }
    raise AssertionError(cmd)


if __name__ == "__main__":
    sys.exit(main())
