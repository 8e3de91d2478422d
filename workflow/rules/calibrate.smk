# A user dataset is fetched, extracted safely and indexed once, whatever number of models use it.
rule dataset:
    output:
        **STAGES.dataset.outputs,
    params:
        entry=lambda wc: json.dumps(config["datasets"][wc.dataset], sort_keys=True),
        out_dir=folder_of("index"),
    log:
        STAGES.dataset.log,
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow dataset {wildcards.dataset} --entry {params.entry:q} --out-dir {params.out_dir} > {log} 2>&1"


# Once per model: every target's quantisation reuses these ranges.
rule calibrate:
    input:
        onnx=STAGES.ptq.outputs["onnx"],
        manifest=STAGES.fetch.outputs["manifest"],
        datasets=dataset_inputs("calibration"),
    output:
        **STAGES.calibrate.outputs,
    params:
        spec=spec_json("calibrate"),
        cache=IMAGE_CACHE,
    resources:
        mem_mb=mem_mb("calibrate"),
    log:
        STAGES.calibrate.log,
    benchmark:
        STAGES.calibrate.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow calibrate {input.onnx} --spec {params.spec:q} --manifest {input.manifest} --cache-dir {params.cache}"
        " --out {output.ranges} --report {output.report} > {log} 2>&1"
