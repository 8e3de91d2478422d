# Float outputs and fp32 host latency once per model; each quantised model (one per precision
# recipe) is compared to them once, whatever number of targets share it.
rule reference:
    input:
        onnx="results/{model}/model.surgery.onnx",
        manifest="results/{model}/fetch/manifest.json",
    output:
        npz="results/{model}/eval/reference.npz",
        report="results/{model}/eval/reference.json",
    params:
        spec=spec_json("reference"),
    threads: 2
    log:
        "results/logs/reference/{model}.log",
    benchmark:
        "results/benchmarks/reference/{model}.tsv"
    shell:
        "npuflow reference {input.onnx} --spec {params.spec:q} --manifest {input.manifest}"
        " --out {output.npz} --report {output.report} --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        onnx="results/{model}/quant/{recipe}.onnx",
        npz="results/{model}/eval/reference.npz",
        reference="results/{model}/eval/reference.json",
        manifest="results/{model}/fetch/manifest.json",
    output:
        report="results/{model}/eval/{recipe}.json",
    params:
        spec=spec_json("evaluate"),
    threads: 2
    log:
        "results/logs/evaluate/{model}.{recipe}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}.{recipe}.tsv"
    shell:
        "npuflow evaluate {input.onnx} --spec {params.spec:q} --recipe {wildcards.recipe}"
        " --reference {input.npz} --reference-report {input.reference} --manifest {input.manifest}"
        " --out {output.report} --threads {threads} > {log} 2>&1"
