rule simplify:
    input:
        onnx=STAGES.export.outputs["onnx"],
    output:
        **STAGES.simplify.outputs,
    # One core: with two threads its jobs kept 1.0 core busy (benchmarks/pipeline_speed.py, default
    # config), and holding a second one kept every other job waiting.
    threads: 1
    resources:
        mem_mb=mem_mb("simplify"),
    log:
        STAGES.simplify.log,
    benchmark:
        STAGES.simplify.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow simplify {input.onnx:q} --out {output.onnx:q} --report {output.report:q} --threads {threads:q} > {log:q} 2>&1"
