rule simplify:
    input:
        onnx="results/{model}/model.onnx",
    output:
        onnx="results/{model}/model.sim.onnx",
        report="results/{model}/simplify.json",
    threads: 2
    resources:
        mem_mb=mem_mb("simplify"),
    log:
        "results/logs/simplify/{model}.log",
    benchmark:
        "results/benchmarks/simplify/{model}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow simplify {input.onnx} --out {output.onnx} --report {output.report} --threads {threads} > {log} 2>&1"
