rule surgery:
    input:
        onnx=STAGES.simplify.outputs["onnx"],
    output:
        **STAGES.surgery.outputs,
    params:
        spec=spec_json("surgery"),
    log:
        STAGES.surgery.log,
    benchmark:
        STAGES.surgery.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow surgery {input.onnx:q} --spec {params.spec:q} --out {output.onnx:q} --report {output.report:q} > {log:q} 2>&1"
