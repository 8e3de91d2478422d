"""The `npuflow` commands, one class each, in pipeline order (npuflow.cli.base has the registry).
Stage modules are imported inside `run`, so `npuflow <command> --help` stays quick and a command
imports only what its stage needs (the per-stage conda environments hold just that)."""

from __future__ import annotations

from npuflow.cli.base import (
    Command,
    add_data_arguments,
    add_model_arguments,
    add_profile_arguments,
    command,
    input_dir,
    input_file,
    json_object,
    model_spec_of,
    onnx_file,
    target_profile,
    user_profiles,
)
from npuflow.util.errors import ConfigError


def _outputs(p, **helps) -> None:
    """Required output arguments: --<name> with its help."""
    for name, text in helps.items():
        p.add_argument(f"--{name.replace('_', '-')}", required=True, help=text)


def _threads(p) -> None:
    p.add_argument("--threads", type=int, default=1, help="onnxruntime/torch threads (default: %(default)s)")


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
        _outputs(p, out_dir="folder to prepare the dataset in (index.json and the extracted files)")

    def run(self, args):
        from npuflow.data.datasets import prepare_dataset
        from npuflow.pipeline.config import load_config

        entry = args.entry if args.entry else load_config(args.config)["datasets"].get(args.name)
        if entry is None:
            raise ConfigError(f"datasets.{args.name}: no such dataset in {args.config}")
        index = prepare_dataset(name=args.name, entry=entry, out_dir=args.out_dir)
        return {"dataset": args.name, "images": len(index["images"]), "labels": index["labels"], "masks": index["masks"]}


@command
class Fetch(Command):
    name = "fetch"
    help = "weights (pretrained or seeded random) and their manifest"

    def add_arguments(self, p):
        add_model_arguments(p)
        _outputs(p, out_dir="folder for weights.safetensors and manifest.json")
        p.add_argument(
            "--cache-dir", default="results", help="where url: checkpoints are downloaded to, under downloads/ (default: %(default)s)"
        )

    def run(self, args):
        from npuflow.sources.fetch import fetch

        return fetch(spec=model_spec_of(args), out_dir=args.out_dir, cache_dir=args.cache_dir)


@command
class Export(Command):
    name = "export"
    help = "ONNX export at batch 1, checked against torch"

    def add_arguments(self, p):
        add_model_arguments(p)
        p.add_argument("--fetch-dir", required=True, type=input_dir, help="the fetch stage's folder (weights.safetensors, manifest.json)")
        _outputs(p, out="the ONNX model to write", report="the stage report (JSON) to write")
        _threads(p)

    def run(self, args):
        from npuflow.graph.export import export

        return export(model_spec_of(args), fetch_dir=args.fetch_dir, out_onnx=args.out, out_json=args.report, threads=args.threads)


@command
class Simplify(Command):
    name = "simplify"
    help = "onnxsim, outputs checked equal in onnxruntime"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the exported ONNX model")
        _outputs(p, out="the simplified ONNX model to write", report="the stage report (JSON) to write")
        _threads(p)

    def run(self, args):
        from npuflow.graph.simplify import simplify

        return simplify(args.input, out_onnx=args.out, out_json=args.report, threads=args.threads)


@command
class Surgery(Command):
    name = "surgery"
    help = "apply named graph surgery passes, each verified"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the simplified ONNX model")
        p.add_argument("--passes", nargs="*", default=None, help="pass names, in order (default: the model's `surgery` list)")
        add_model_arguments(p)
        _outputs(p, out="the ONNX model to write", report="the stage report (JSON) to write")
        _threads(p)

    def run(self, args):
        from npuflow.graph.surgery import surgery

        passes = args.passes if args.passes is not None else model_spec_of(args).get("surgery", [])
        return surgery(args.input, passes=passes, out_onnx=args.out, out_json=args.report, threads=args.threads)


@command
class Recipes(Command):
    name = "recipes"
    help = "resolve a model's precision recipes on it: which recipes make the same quantised model"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the float (post-surgery) ONNX model")
        p.add_argument("--recipes", required=True, type=json_object, help='the recipes as JSON, by id: {"int8": {"default": "int8"}, …}')
        add_model_arguments(p)
        _outputs(p, out="the recipe map (JSON) to write")

    def run(self, args):
        from npuflow.pipeline.recipes import recipe_map

        return recipe_map(args.input, recipes=args.recipes, spec=model_spec_of(args), out_json=args.out)


@command
class Ptq(Command):
    name = "ptq"
    help = "the model's `quantization:` methods applied to the float model, once per model"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the float (post-surgery) ONNX model")
        add_model_arguments(p)
        p.add_argument("--manifest", required=True, type=input_file, help="the fetch manifest (preprocessing)")
        _outputs(p, out="the transformed float ONNX model to write", report="the stage report (JSON) to write")
        add_data_arguments(p)

    def run(self, args):
        from npuflow.quant.ptq.stage import ptq

        return ptq(
            args.input,
            manifest_json=args.manifest,
            spec=model_spec_of(args),
            out_onnx=args.out,
            out_json=args.report,
            datasets_dir=args.datasets_dir,
            cache_dir=args.cache_dir,
        )


@command
class Calibrate(Command):
    name = "calibrate"
    help = "activation ranges on calibration images, once per model"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the float (post-surgery) ONNX model")
        add_model_arguments(p)
        p.add_argument("--manifest", required=True, type=input_file, help="the fetch manifest (preprocessing, weights kind)")
        _outputs(p, out="the ranges to write (onnxruntime calibration cache)", report="the stage report (JSON) to write")
        add_data_arguments(p)

    def run(self, args):
        from npuflow.quant.calibrate import calibrate

        return calibrate(
            args.input,
            manifest_json=args.manifest,
            spec=model_spec_of(args),
            out_ranges=args.out,
            out_json=args.report,
            datasets_dir=args.datasets_dir,
            cache_dir=args.cache_dir,
        )


@command
class Quantize(Command):
    name = "quantize"
    help = "static QDQ quantisation from stored ranges, under a precision recipe"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the float (post-surgery) ONNX model")
        p.add_argument("--ranges", required=True, type=input_file, help="the calibrate stage's ranges")
        p.add_argument(
            "--calibration", required=True, type=input_file, help="the calibrate stage's report (the quantisation options it chose)"
        )
        p.add_argument(
            "--recipe",
            type=json_object,
            default='{"default": "int8"}',
            help="precision recipe as JSON, a target profile's `precision` (default: %(default)s)",
        )
        _outputs(p, out="the quantised ONNX model to write", report="the stage report (JSON) to write")

    def run(self, args):
        from npuflow.quant.quantize import quantize

        return quantize(
            args.input,
            ranges_json=args.ranges,
            calibration_json=args.calibration,
            recipe=args.recipe,
            out_onnx=args.out,
            out_json=args.report,
        )


@command
class Reference(Command):
    name = "reference"
    help = "float outputs on held-out images and host fp32 latency, once per model"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the float (post-surgery) ONNX model")
        add_model_arguments(p)
        p.add_argument("--manifest", required=True, type=input_file, help="the fetch manifest (preprocessing)")
        _outputs(p, out="the reference outputs to write (.npz)", report="the stage report (JSON) to write")
        _threads(p)
        add_data_arguments(p)

    def run(self, args):
        from npuflow.evaluation.evaluate import reference

        return reference(
            args.input,
            manifest_json=args.manifest,
            spec=model_spec_of(args),
            out_npz=args.out,
            out_json=args.report,
            threads=args.threads,
            datasets_dir=args.datasets_dir,
            cache_dir=args.cache_dir,
        )


@command
class Evaluate(Command):
    name = "evaluate"
    help = "quantised vs float on held-out images, host int8 latency"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the quantised ONNX model")
        add_model_arguments(p)
        p.add_argument("--recipe", default="int8", help="precision recipe id of the quantised model, for the record (default: %(default)s)")
        p.add_argument("--reference", required=True, type=input_file, help="the reference stage's outputs (.npz)")
        p.add_argument(
            "--reference-report", required=True, type=input_file, help="the reference stage's report (fp32 latency, float accuracy)"
        )
        p.add_argument("--manifest", required=True, type=input_file, help="the fetch manifest (weights kind)")
        _outputs(p, out="the stage report (JSON) to write")
        _threads(p)

    def run(self, args):
        from npuflow.evaluation.evaluate import evaluate

        return evaluate(
            args.input,
            reference_npz=args.reference,
            reference_json=args.reference_report,
            manifest_json=args.manifest,
            spec=model_spec_of(args),
            recipe=args.recipe,
            out_json=args.out,
            threads=args.threads,
        )


@command
class Analyse(Command):
    name = "analyse"
    help = "per-layer precision analysis: every float tensor against the quantised model's"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the quantised ONNX model")
        add_model_arguments(p)
        p.add_argument("--float-model", required=True, type=onnx_file, help="the float (post-surgery) model")
        p.add_argument("--reference", required=True, type=input_file, help="the reference stage's outputs (.npz: the held-out images)")
        _outputs(p, out="the per-layer precision analysis (JSON) to write")
        _threads(p)

    def run(self, args):
        from npuflow.evaluation.evaluate import analyse

        return analyse(
            args.input,
            float_onnx=args.float_model,
            reference_npz=args.reference,
            spec=model_spec_of(args),
            out_layers=args.out,
            threads=args.threads,
        )


@command
class Mixed(Command):
    name = "mixed"
    help = "automatic mixed precision for one (model, target): promote layers until the goal is met"

    def add_arguments(self, p):
        add_model_arguments(p)
        add_profile_arguments(p, config=False)
        p.add_argument("--input", required=True, type=onnx_file, help="the float (post-surgery) ONNX model")
        p.add_argument("--manifest", required=True, type=input_file, help="the fetch manifest (preprocessing)")
        p.add_argument("--ranges", required=True, type=input_file, help="the calibrate stage's ranges")
        p.add_argument("--calibration", required=True, type=input_file, help="the calibrate stage's report")
        p.add_argument(
            "--layers", required=True, type=input_file, help="precision analysis of the target's own recipe (eval/<recipe>.layers.json)"
        )
        p.add_argument("--recipe", required=True, type=json_object, help="the target's own recipe as JSON (where the search starts)")
        p.add_argument(
            "--base",
            type=onnx_file,
            help="the quantised model of that recipe (quant/<recipe>.onnx), the search's first step (default: quantise it)",
        )
        _outputs(
            p,
            out="the chosen quantised model to write",
            quant_report="its quantize report to write",
            report="the trade-off curve and the chosen recipe (JSON) to write",
        )
        add_data_arguments(p)

    def run(self, args):
        from npuflow.quant.mixed import mixed_precision

        report = mixed_precision(
            args.input,
            manifest_json=args.manifest,
            ranges_json=args.ranges,
            calibration_json=args.calibration,
            layers_json=args.layers,
            spec=model_spec_of(args),
            profile=target_profile(args),
            base_recipe=args.recipe,
            base_onnx=args.base,
            out_onnx=args.out,
            out_quant_json=args.quant_report,
            out_json=args.report,
            datasets_dir=args.datasets_dir,
            cache_dir=args.cache_dir,
        )
        return {"target": report.target, "goal": report.goal.to_json(), "goal_met": report.goal_met, "chosen": report.chosen.to_json()}


@command
class Build(Command):
    name = "build"
    help = "simulated NPU build of a quantised model (no vendor compiler: npuflow's model of the chip)"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the quantised ONNX model")
        add_profile_arguments(p)
        _outputs(p, out_dir="folder for build.json, trace.json and summary.txt")
        p.add_argument("--model-name", default="", help="the model's name, for the record")
        p.add_argument("--manifest", type=input_file, help="the fetch manifest, to record the weights kind")
        p.add_argument(
            "--layers", type=input_file, help="precision analysis rows (eval/<recipe>.layers.json) to join with this target's build"
        )
        p.add_argument("--layers-csv", help="where to write the per-layer table for this target (with --layers)")

    def run(self, args):
        from npuflow.core.records import LayerAnalysis, Manifest
        from npuflow.sim.build import build

        report = build(
            args.input,
            target_profile(args),
            args.out_dir,
            model_name=args.model_name,
            weights=Manifest.read(args.manifest).weights if args.manifest else "",
            layer_rows=LayerAnalysis.read(args.layers).rows if args.layers else None,
            layers_csv=args.layers_csv,
        )
        return {k: report[k] for k in ("model", "target", "latency_ms", "fps", "subgraphs", "unit_time_ms")}


@command
class InitMlflow(Command):
    name = "init-mlflow"
    help = "create the tracking store and the experiment, once, before any logging job"

    def add_arguments(self, p):
        p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
        p.add_argument("--experiment", required=True, help="experiment name")
        _outputs(p, out="the store record (JSON) to write")

    def run(self, args):
        from npuflow.tracking.server import tracking_uri
        from npuflow.tracking.track import init_store

        return init_store(uri=tracking_uri(args.tracking_uri, "--tracking-uri"), experiment=args.experiment, out_json=args.out).to_json()


@command
class Track(Command):
    name = "track"
    help = "log (or reuse) the MLflow run of each (model, target) of one model"

    def add_arguments(self, p):
        add_model_arguments(p)
        p.add_argument("--tracking-uri", required=True, help="MLflow tracking URI (MLFLOW_TRACKING_URI wins)")
        p.add_argument("--experiment", required=True, help="experiment name (created by init-mlflow)")
        p.add_argument(
            "--files", required=True, type=json_object, help="JSON {target: {name: path}}: the stage reports and artifacts of each run"
        )
        _outputs(p, out="the runs record (JSON) to write")

    def run(self, args):
        from npuflow.tracking.server import tracking_uri
        from npuflow.tracking.track import log_model_runs

        report = log_model_runs(
            uri=tracking_uri(args.tracking_uri, "--tracking-uri"),
            experiment=args.experiment,
            spec=model_spec_of(args),
            runs=args.files,
            out_json=args.out,
        )
        return report.to_json()


@command
class Plot(Command):
    name = "plot"
    help = "a model's simulated latency breakdown (by unit and op type) over its targets, as PNG"

    def add_arguments(self, p):
        p.add_argument("--model", required=True, help="the model's name (the plot's title)")
        p.add_argument("--files", required=True, type=json_object, help="JSON {target: {name: path}} with each target's build and trace")
        _outputs(p, out="the PNG to write")

    def run(self, args):
        from npuflow.report.plots import plot_model

        plot_model(model=args.model, runs=args.files, out_png=args.out)
        return {"plot": args.out}


@command
class Report(Command):
    name = "report"
    help = "summary.csv and report.html over all (model, target) pairs"
    description = (
        "summary.csv and report.html over all (model, target) pairs; a pair whose chain of stage outputs is "
        "incomplete is marked failed at the first missing one, with that stage's log."
    )

    def add_arguments(self, p):
        p.add_argument(
            "--pair",
            action="append",
            default=[],
            required=True,
            type=json_object,
            metavar="JSON",
            help='one (model, target), as npuflow.pipeline.plan.Pair writes it: {"model": …, "target": …, "recipe": …, "base_recipe": …, "datasets": […]}',
        )
        p.add_argument("--plots-dir", help="also write pareto.<target>.png here")
        p.add_argument(
            "--mlflow-ui",
            default="http://127.0.0.1:5000",
            help="the MLflow UI the run links open, for a local store (default: %(default)s)",
        )
        p.add_argument(
            "--published",
            type=input_file,
            help="published device measurements to show beside the simulated figures (the CSV sim-fit fits to)",
        )
        p.add_argument(
            "--target-profiles",
            type=json_object,
            default="{}",
            help="the config's own target_profiles as JSON (which ops a recipe can move to the NPU)",
        )
        p.add_argument(
            "--partial",
            action="store_true",
            help="the report of a run that stopped early (the workflow's error handler's): the page says so",
        )
        p.add_argument(
            "--replaces",
            action="append",
            default=[],
            metavar="PATH",
            help="a partial report this one replaces: removed once this one is written",
        )
        p.add_argument(
            "--complete",
            metavar="PATH",
            help="written last, once every file of the report is: the workflow's mark that the report is complete",
        )
        _outputs(p, csv="summary CSV to write", html="report HTML to write")

    def run(self, args):
        from pathlib import Path

        from npuflow.pipeline.plan import Pair, resolve_pair
        from npuflow.report import report

        rows = report(
            pairs=[resolve_pair(Pair.from_dict(p)) for p in args.pair],
            out_csv=args.csv,
            out_html=args.html,
            plots_dir=args.plots_dir,
            mlflow_ui=args.mlflow_ui,
            published_csv=args.published,
            target_profiles=args.target_profiles,
            partial=args.partial,
        )
        for stale in args.replaces:
            Path(stale).unlink(missing_ok=True)
        summary = {
            "rows": len(rows),
            "failed": [f"{r.model}:{r.target} at {r.failed_stage}" for r in rows if not r.ok],
            "csv": args.csv,
            "html": args.html,
        }
        if args.complete:
            from npuflow.util.io import write_json

            write_json(args.complete, summary)
        return summary


@command
class SimValidate(Command):
    name = "sim-validate"
    help = "predict published device measurements with the simulator"

    def add_arguments(self, p):
        p.add_argument(
            "csv",
            type=input_file,
            help="published measurements (columns: target,model,timm_name,input_hw,batch,metric,value,[precision,]source)",
        )
        p.add_argument("--out", required=True, help="report JSON")
        p.add_argument(
            "--cross-validate",
            choices=["family", "group", "task", "row"],
            help="refit every target without each held-out fold and predict it from that fit: a model family, a family's "
            "task at one resolution (group), a task at one resolution across families (task), or a row",
        )
        p.add_argument("--cache-dir", default="results/sim-cache", help="exported models, reused between runs")
        p.add_argument("--config", default="config.yaml", help="for user target_profiles (if the file exists)")

    def run(self, args):
        from npuflow.calibration.validate import validate

        return validate(args.csv, args.out, args.cache_dir, user_profiles(args.config), args.cross_validate)["summary"]


@command
class SimFit(Command):
    name = "sim-fit"
    help = "fit the targets' free physical parameters to published measurements"

    def add_arguments(self, p):
        p.add_argument("csv", type=input_file, help="published measurements (the columns of data/published/npu_latency_calibration.csv)")
        p.add_argument("--cache-dir", default="results/sim-cache", help="exported models, reused between runs")
        p.add_argument("--profile-dir", help="where the fits are written, one <target>.yaml each (default: the built-in targets/fits/)")
        p.add_argument("--config", default="config.yaml", help="for user target_profiles (if the file exists): a few-shot chip of your own")

    def run(self, args):
        from npuflow.calibration.validate import fit

        return {
            t: {"parameters": r["parameters"], "rms_log_error": r["rms_log_error"]}
            for t, r in fit(args.csv, args.cache_dir, args.profile_dir, user_profiles(args.config)).items()
        }
