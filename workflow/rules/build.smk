# Simulated NPU compile: no vendor toolchain runs; npuflow's analytical model of the target does.
rule build:
    input:
        onnx=quantized,
        manifest="results/{model}/fetch/manifest.json",
    output:
        build="results/{model}/build/{target}/build.json",
        trace="results/{model}/build/{target}/trace.json",
        summary="results/{model}/build/{target}/summary.txt",
    params:
        profile=profile_json,
    log:
        "results/logs/build/{model}.{target}.log",
    benchmark:
        "results/benchmarks/build/{model}.{target}.tsv"
    shell:
        "npuflow build {input.onnx} --target {wildcards.target} --profile {params.profile:q}"
        " --model-name {wildcards.model} --manifest {input.manifest}"
        " --out-dir results/{wildcards.model}/build/{wildcards.target} > {log} 2>&1"
