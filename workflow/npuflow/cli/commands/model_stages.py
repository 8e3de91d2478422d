"""The commands of the stages run once per model: fetch, export, simplify, surgery, recipes, ptq,
calibrate, quantize, reference, evaluate, analyse."""

from __future__ import annotations

from npuflow.cli.base import (
    Command,
    add_data_arguments,
    add_model_arguments,
    add_outputs,
    add_threads,
    command,
    input_dir,
    input_file,
    json_object,
    model_spec_of,
    onnx_file,
)


@command
class Fetch(Command):
    name = "fetch"
    help = "weights (pretrained or seeded random) and their manifest"

    def add_arguments(self, p):
        add_model_arguments(p)
        add_outputs(p, out_dir="folder for weights.safetensors and manifest.json")
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
        add_outputs(p, out="the ONNX model to write", report="the stage report (JSON) to write")
        add_threads(p)

    def run(self, args):
        from npuflow.graph.export import export

        return export(model_spec_of(args), fetch_dir=args.fetch_dir, out_onnx=args.out, out_json=args.report, threads=args.threads)


@command
class Simplify(Command):
    name = "simplify"
    help = "onnxsim, outputs checked equal in onnxruntime"

    def add_arguments(self, p):
        p.add_argument("input", type=onnx_file, help="the exported ONNX model")
        add_outputs(p, out="the simplified ONNX model to write", report="the stage report (JSON) to write")
        add_threads(p)

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
        add_outputs(p, out="the ONNX model to write", report="the stage report (JSON) to write")
        add_threads(p)

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
        add_outputs(p, out="the recipe map (JSON) to write")

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
        add_outputs(p, out="the transformed float ONNX model to write", report="the stage report (JSON) to write")
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
        add_outputs(p, out="the ranges to write (onnxruntime calibration cache)", report="the stage report (JSON) to write")
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
        add_outputs(p, out="the quantised ONNX model to write", report="the stage report (JSON) to write")

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
        add_outputs(p, out="the reference outputs to write (.npz)", report="the stage report (JSON) to write")
        add_threads(p)
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
        add_outputs(p, out="the stage report (JSON) to write")
        add_threads(p)

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
        add_outputs(p, out="the per-layer precision analysis (JSON) to write")
        add_threads(p)

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
