rule fetch:
    output:
        **STAGES.fetch.outputs,
    params:
        spec=spec_json("fetch"),
        out_dir=folder_of("manifest"),
    log:
        STAGES.fetch.log,
    benchmark:
        STAGES.fetch.benchmark_pattern
    conda:
        "../../envs/torch.yaml"
    shell:
        "npuflow fetch --spec {params.spec:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
