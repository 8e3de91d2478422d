rule export:
    input:
        weights="results/{model}/fetch/weights.safetensors",
        manifest="results/{model}/fetch/manifest.json",
    output:
        onnx="results/{model}/model.onnx",
        report="results/{model}/export.json",
    params:
        spec=spec_json("export"),
    threads: 2
    resources:
        mem_mb=mem_mb("export"),
    log:
        "results/logs/export/{model}.log",
    benchmark:
        "results/benchmarks/export/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "npuflow export --spec {params.spec:q} --fetch-dir results/{wildcards.model}/fetch"
        " --out {output.onnx} --report {output.report} --threads {threads} > {log} 2>&1"
