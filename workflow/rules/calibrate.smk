# A user dataset is fetched, extracted safely and indexed once, whatever number of models use it.
rule dataset:
    output:
        index="results/datasets/{dataset}/index.json",
    params:
        entry=lambda wc: json.dumps(config["datasets"][wc.dataset], sort_keys=True),
    log:
        "results/logs/dataset/{dataset}.log",
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow dataset {wildcards.dataset} --entry {params.entry:q} --out-dir results/datasets/{wildcards.dataset} > {log} 2>&1"


# Once per model: every target's quantisation reuses these ranges.
rule calibrate:
    input:
        onnx="results/{model}/model.surgery.onnx",
        manifest="results/{model}/fetch/manifest.json",
        datasets=dataset_inputs("calibration"),
    output:
        ranges="results/{model}/calibration.ranges.json",
        report="results/{model}/calibration.json",
    params:
        spec=spec_json("calibrate"),
        cache=IMAGE_CACHE,
    resources:
        mem_mb=mem_mb("calibrate"),
    log:
        "results/logs/calibrate/{model}.log",
    benchmark:
        "results/benchmarks/calibrate/{model}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow calibrate {input.onnx} --spec {params.spec:q} --manifest {input.manifest} --cache-dir {params.cache}"
        " --out {output.ranges} --report {output.report} > {log} 2>&1"
