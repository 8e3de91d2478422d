rule surgery:
    input:
        onnx="results/{model}/model.sim.onnx",
    output:
        onnx="results/{model}/model.surgery.onnx",
        report="results/{model}/surgery.json",
    params:
        spec=spec_json("surgery"),
    log:
        "results/logs/surgery/{model}.log",
    benchmark:
        "results/benchmarks/surgery/{model}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow surgery {input.onnx} --spec {params.spec:q} --out {output.onnx} --report {output.report} > {log} 2>&1"
