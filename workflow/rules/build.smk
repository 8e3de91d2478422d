# Simulated NPU compile: no vendor toolchain runs; npuflow's analytical model of the target does.
# The per-layer precision table of the target joins the precision analysis with this build.
rule build:
    input:
        onnx=quantized,
        manifest=STAGES.fetch.outputs["manifest"],
        layers=build_layers,
    output:
        **STAGES.build.outputs,
    params:
        profile=profile_json,
        out_dir=folder_of("build"),
    log:
        STAGES.build.log,
    benchmark:
        STAGES.build.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow build {input.onnx:q} --target {wildcards.target:q} --profile {params.profile:q}"
        " --model-name {wildcards.model:q} --manifest {input.manifest:q} --layers {input.layers:q} --layers-csv {output.layers:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
