# Once per distinct precision recipe: targets with the same recipe share the quantised model.
rule quantize:
    input:
        onnx=STAGES.ptq.outputs["onnx"],
        ranges=STAGES.calibrate.outputs["ranges"],
        calibration=STAGES.calibrate.outputs["report"],
    output:
        **STAGES.quantize.outputs,
    wildcard_constraints:
        recipe=wildcard_constraint(PLAN.recipes()),
    params:
        recipe=lambda wc: PLAN.recipe_json(wc.recipe),
    log:
        STAGES.quantize.log,
    benchmark:
        STAGES.quantize.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow quantize {input.onnx:q} --ranges {input.ranges:q} --calibration {input.calibration:q}"
        " --recipe {params.recipe:q} --out {output.onnx:q} --report {output.report:q} > {log:q} 2>&1"


# Automatic mixed precision (models with `mixed_precision`): the target builds the chosen recipe.
rule mixed_precision:
    input:
        onnx=STAGES.ptq.outputs["onnx"],
        manifest=STAGES.fetch.outputs["manifest"],
        ranges=STAGES.calibrate.outputs["ranges"],
        calibration=STAGES.calibrate.outputs["report"],
        layers=base_layers,
        base=base_quantized,
        datasets=dataset_inputs("calibration"),
    output:
        **STAGES.mixed_precision.outputs,
    params:
        spec=spec_json("mixed_precision"),
        profile=profile_json,
        recipe=lambda wc: PLAN.base_recipe_json(wc.model, wc.target),
        cache=IMAGE_CACHE,
    # One core: the search's sessions run on onnxruntime's default of one thread (no --threads).
    threads: 1
    resources:
        mem_mb=mem_mb("mixed_precision"),
    log:
        STAGES.mixed_precision.log,
    benchmark:
        STAGES.mixed_precision.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow mixed --spec {params.spec:q} --target {wildcards.target:q} --profile {params.profile:q} --input {input.onnx:q}"
        " --manifest {input.manifest:q} --ranges {input.ranges:q} --calibration {input.calibration:q} --layers {input.layers:q} --base {input.base:q}"
        " --recipe {params.recipe:q} --cache-dir {params.cache:q} --out {output.onnx:q} --quant-report {output.quant:q}"
        " --report {output.report:q} > {log:q} 2>&1"
