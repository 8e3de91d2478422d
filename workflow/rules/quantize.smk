# Once per distinct precision recipe: targets with the same recipe share the quantised model.
rule quantize:
    input:
        onnx="results/{model}/model.surgery.onnx",
        ranges="results/{model}/calibration.ranges.json",
        calibration="results/{model}/calibration.json",
    output:
        onnx="results/{model}/quant/{recipe}.onnx",
        report="results/{model}/quant/{recipe}.json",
    wildcard_constraints:
        recipe="|".join(re.escape(r) for r in RECIPES),
    params:
        recipe=lambda wc: json.dumps(RECIPES[wc.recipe], sort_keys=True),
    log:
        "results/logs/quantize/{model}.{recipe}.log",
    benchmark:
        "results/benchmarks/quantize/{model}.{recipe}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow quantize {input.onnx} --ranges {input.ranges} --calibration {input.calibration}"
        " --recipe {params.recipe:q} --out {output.onnx} --report {output.report} > {log} 2>&1"


# Automatic mixed precision (models with `mixed_precision`): the target builds the chosen recipe.
rule mixed_precision:
    input:
        onnx="results/{model}/model.surgery.onnx",
        manifest="results/{model}/fetch/manifest.json",
        ranges="results/{model}/calibration.ranges.json",
        calibration="results/{model}/calibration.json",
        layers=lambda wc: f"results/{wc.model}/eval/{recipe_id(base_recipe(wc.model, wc.target))}.layers.json",
        datasets=dataset_inputs("calibration"),
    output:
        onnx="results/{model}/quant/mixed-{target}.onnx",
        quant="results/{model}/quant/mixed-{target}.json",
        report="results/{model}/mixed/{target}.json",
    params:
        spec=spec_json("mixed"),
        profile=profile_json,
        recipe=lambda wc: json.dumps(base_recipe(wc.model, wc.target), sort_keys=True),
        cache=IMAGE_CACHE,
    threads: 2
    resources:
        mem_mb=mem_mb("mixed_precision"),
    log:
        "results/logs/mixed_precision/{model}.{target}.log",
    benchmark:
        "results/benchmarks/mixed_precision/{model}.{target}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow mixed --spec {params.spec:q} --target {wildcards.target} --profile {params.profile:q} --input {input.onnx}"
        " --manifest {input.manifest} --ranges {input.ranges} --calibration {input.calibration} --layers {input.layers}"
        " --recipe {params.recipe:q} --cache-dir {params.cache} --out {output.onnx} --quant-report {output.quant}"
        " --report {output.report} > {log} 2>&1"
