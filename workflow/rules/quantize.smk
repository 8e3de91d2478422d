# Once per distinct precision recipe: targets with the same recipe share the quantised model.
rule quantize:
    input:
        onnx="results/{model}/model.surgery.onnx",
        ranges="results/{model}/calibration.ranges.json",
        calibration="results/{model}/calibration.json",
    output:
        onnx="results/{model}/quant/{recipe}.onnx",
        report="results/{model}/quant/{recipe}.json",
    params:
        recipe=lambda wc: json.dumps(RECIPES[wc.recipe], sort_keys=True),
    log:
        "results/logs/quantize/{model}.{recipe}.log",
    benchmark:
        "results/benchmarks/quantize/{model}.{recipe}.tsv"
    shell:
        "npuflow quantize {input.onnx} --ranges {input.ranges} --calibration {input.calibration}"
        " --recipe {params.recipe:q} --out {output.onnx} --report {output.report} > {log} 2>&1"
