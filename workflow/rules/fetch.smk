rule fetch:
    output:
        weights="results/{model}/fetch/weights.safetensors",
        manifest="results/{model}/fetch/manifest.json",
    params:
        spec=spec_json("fetch"),
    log:
        "results/logs/fetch/{model}.log",
    benchmark:
        "results/benchmarks/fetch/{model}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "npuflow fetch --spec {params.spec:q} --out-dir results/{wildcards.model}/fetch > {log} 2>&1"
