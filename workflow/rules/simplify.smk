rule simplify:
    input:
        onnx=STAGES.export.outputs["onnx"],
    output:
        **STAGES.simplify.outputs,
    threads: 2
    resources:
        mem_mb=mem_mb("simplify"),
    log:
        STAGES.simplify.log,
    benchmark:
        STAGES.simplify.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow simplify {input.onnx} --out {output.onnx} --report {output.report} --threads {threads} > {log} 2>&1"
