rule quantize:
    input:
        onnx="results/{model}/model.surgery.onnx",
        ranges="results/{model}/calibration.ranges.json",
        calibration="results/{model}/calibration.json",
    output:
        onnx="results/{model}/quant/{target}.onnx",
        report="results/{model}/quant/{target}.json",
    log:
        "results/logs/quantize/{model}.{target}.log",
    benchmark:
        "results/benchmarks/quantize/{model}.{target}.tsv"
    shell:
        "npuflow quantize {input.onnx} --ranges {input.ranges} --calibration {input.calibration} --target {wildcards.target}"
        " --out {output.onnx} --report {output.report} > {log} 2>&1"
