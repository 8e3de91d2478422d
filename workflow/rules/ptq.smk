# Once per model: its `quantization:` methods transform the float model that every target's
# calibration, quantisation and per-layer analysis read.
rule ptq:
    input:
        onnx=STAGES.surgery.outputs["onnx"],
        manifest=STAGES.fetch.outputs["manifest"],
        datasets=dataset_inputs("calibration"),
    output:
        **STAGES.ptq.outputs,
    params:
        spec=spec_json("ptq"),
        cache=IMAGE_CACHE,
    resources:
        mem_mb=mem_mb("ptq"),
    log:
        STAGES.ptq.log,
    benchmark:
        STAGES.ptq.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow ptq {input.onnx:q} --spec {params.spec:q} --manifest {input.manifest:q} --cache-dir {params.cache:q}"
        " --out {output.onnx:q} --report {output.report:q} > {log:q} 2>&1"
