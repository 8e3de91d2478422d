rule export:
    input:
        **STAGES.fetch.outputs,
    output:
        **STAGES.export.outputs,
    params:
        spec=spec_json("export"),
        fetch_dir=lambda wildcards, input: os.path.dirname(input.manifest),
    # One core: with two threads its jobs kept 1.0 core busy (benchmarks/pipeline_speed.py, default
    # config), and holding a second one kept every other job waiting.
    threads: 1
    resources:
        mem_mb=mem_mb("export"),
    log:
        STAGES.export.log,
    benchmark:
        STAGES.export.benchmark_pattern
    conda:
        "../../envs/torch.yaml"
    shell:
        "npuflow export --spec {params.spec:q} --fetch-dir {params.fetch_dir:q}"
        " --out {output.onnx:q} --report {output.report:q} --threads {threads:q} > {log:q} 2>&1"
