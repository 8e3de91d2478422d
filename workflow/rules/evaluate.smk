# Float outputs and fp32 host latency once per model; each quantised model (one per precision
# recipe) is compared to them once, whatever number of targets share it.
rule reference:
    input:
        onnx="results/{model}/model.surgery.onnx",
        manifest="results/{model}/fetch/manifest.json",
        datasets=dataset_inputs("evaluation"),
    output:
        npz="results/{model}/eval/reference.npz",
        report="results/{model}/eval/reference.json",
    params:
        spec=spec_json("reference"),
        cache=IMAGE_CACHE,
    threads: 2
    resources:
        mem_mb=mem_mb("reference"),
    log:
        "results/logs/reference/{model}.log",
    benchmark:
        "results/benchmarks/reference/{model}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow reference {input.onnx} --spec {params.spec:q} --manifest {input.manifest} --cache-dir {params.cache}"
        " --out {output.npz} --report {output.report} --threads {threads} > {log} 2>&1"


# Fidelity, task accuracy and host latency of a quantised model, and its per-layer precision analysis.
rule evaluate:
    input:
        onnx="results/{model}/quant/{recipe}.onnx",
        float_onnx="results/{model}/model.surgery.onnx",
        npz="results/{model}/eval/reference.npz",
        reference="results/{model}/eval/reference.json",
        manifest="results/{model}/fetch/manifest.json",
    output:
        report="results/{model}/eval/{recipe}.json",
        layers="results/{model}/eval/{recipe}.layers.json",
    params:
        spec=spec_json("evaluate"),
    threads: 2
    resources:
        mem_mb=mem_mb("evaluate"),
    log:
        "results/logs/evaluate/{model}.{recipe}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}.{recipe}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow evaluate {input.onnx} --spec {params.spec:q} --recipe {wildcards.recipe} --float-model {input.float_onnx}"
        " --reference {input.npz} --reference-report {input.reference} --manifest {input.manifest}"
        " --out {output.report} --layers-out {output.layers} --threads {threads} > {log} 2>&1"
