# Simulated NPU compile: no vendor toolchain runs; npuflow's analytical model of the target does.
# The per-layer precision table of the target joins the precision analysis with this build.
rule build:
    input:
        onnx=quantized,
        manifest="results/{model}/fetch/manifest.json",
        layers=target_layers,
    output:
        build="results/{model}/build/{target}/build.json",
        trace="results/{model}/build/{target}/trace.json",
        summary="results/{model}/build/{target}/summary.txt",
        layers="results/{model}/quant/{target}.layers.csv",
    params:
        profile=profile_json,
    log:
        "results/logs/build/{model}.{target}.log",
    benchmark:
        "results/benchmarks/build/{model}.{target}.tsv"
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow build {input.onnx} --target {wildcards.target} --profile {params.profile:q}"
        " --model-name {wildcards.model} --manifest {input.manifest} --layers {input.layers} --layers-csv {output.layers}"
        " --out-dir results/{wildcards.model}/build/{wildcards.target} > {log} 2>&1"
