# Once per model: every target's quantisation reuses these ranges.
rule calibrate:
    input:
        onnx="results/{model}/model.surgery.onnx",
        manifest="results/{model}/fetch/manifest.json",
    output:
        ranges="results/{model}/calibration.ranges.json",
        report="results/{model}/calibration.json",
    params:
        spec=spec_json("calibrate"),
    log:
        "results/logs/calibrate/{model}.log",
    benchmark:
        "results/benchmarks/calibrate/{model}.tsv"
    shell:
        "npuflow calibrate {input.onnx} --spec {params.spec:q} --manifest {input.manifest}"
        " --out {output.ranges} --report {output.report} > {log} 2>&1"
