"""The commands of the stages run once per (model, target): mixed precision and the simulated build."""

from __future__ import annotations

from npuflow.cli.base import (
    Command,
    add_data_arguments,
    add_model_arguments,
    add_outputs,
    add_profile_arguments,
    command,
    input_file,
    json_object,
    model_spec_of,
    onnx_file,
    target_profile,
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
        add_outputs(
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
        add_outputs(p, out_dir="folder for build.json, trace.json and summary.txt")
        p.add_argument(
            "--model-name", default="", help="the model's name, for the record (default: from the path, results/<model>/quant/…)"
        )
        p.add_argument(
            "--manifest", type=input_file, help="the fetch manifest, to record the weights kind (default: the model's, beside the path)"
        )
        p.add_argument(
            "--layers", type=input_file, help="precision analysis rows (eval/<recipe>.layers.json) to join with this target's build"
        )
        p.add_argument("--layers-csv", help="where to write the per-layer table for this target (with --layers)")

    def run(self, args):
        from npuflow.core.records import LayerAnalysis, Manifest
        from npuflow.sim.build import build

        model, manifest = pipeline_model_of(args.input)
        manifest = args.manifest or manifest
        report = build(
            args.input,
            target_profile(args),
            args.out_dir,
            model_name=args.model_name or model,
            weights=Manifest.read(manifest).weights if manifest else "unknown (no --manifest given)",
            layer_rows=LayerAnalysis.read(args.layers).rows if args.layers else None,
            layers_csv=args.layers_csv,
        )
        return {k: report[k] for k in ("model", "target", "latency_ms", "fps", "subgraphs", "unit_time_ms")}


def pipeline_model_of(onnx_path: str) -> tuple[str, str | None]:
    """(model name, its fetch manifest or None) of a quantised model the pipeline wrote
    (`results/<model>/quant/<recipe>.onnx`, the stage table's layout), for a build run by hand;
    else (the file's stem, None)."""
    from pathlib import Path, PurePosixPath

    from npuflow.core.layout import STAGES

    path = Path(onnx_path).resolve()
    quant_dir = PurePosixPath(STAGES.quantize.outputs["onnx"]).parent.name  # "quant"
    if path.parent.name != quant_dir:
        return path.stem, None
    model = path.parent.parent.name
    manifest = path.parent.parent.parent.parent / STAGES.fetch.output("manifest", model=model)
    return model, str(manifest) if manifest.is_file() else None
