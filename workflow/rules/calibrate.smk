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
        "npuflow dataset {wildcards.dataset:q} --entry {params.entry:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


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
        "npuflow calibrate {input.onnx:q} --spec {params.spec:q} --manifest {input.manifest:q} --cache-dir {params.cache:q}"
        " --out {output.ranges:q} --report {output.report:q} > {log:q} 2>&1"
