# Float outputs and fp32 host latency once per model; each quantised model (one per precision
# recipe) is compared to them once, whatever number of targets share it.
rule reference:
    input:
        onnx=STAGES.surgery.outputs["onnx"],
        manifest=STAGES.fetch.outputs["manifest"],
        datasets=dataset_inputs("evaluation"),
    output:
        **STAGES.reference.outputs,
    params:
        spec=spec_json("reference"),
        cache=IMAGE_CACHE,
    # Both cores, as `evaluate`: its host latency is timed with nothing beside it. On one thread
    # with another job on the other core, swin_tiny's fp32 latency read 226 ms; alone, 103 ms.
    threads: 2
    resources:
        mem_mb=mem_mb("reference"),
    log:
        STAGES.reference.log,
    benchmark:
        STAGES.reference.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow reference {input.onnx:q} --spec {params.spec:q} --manifest {input.manifest:q} --cache-dir {params.cache:q}"
        " --out {output.npz:q} --report {output.report:q} --threads {threads:q} > {log:q} 2>&1"


# Fidelity, task accuracy and host latency of a quantised model.
rule evaluate:
    input:
        onnx=STAGES.quantize.outputs["onnx"],
        npz=STAGES.reference.outputs["npz"],
        reference=STAGES.reference.outputs["report"],
        manifest=STAGES.fetch.outputs["manifest"],
    output:
        **STAGES.evaluate.outputs,
    params:
        spec=spec_json("evaluate"),
    threads: 2
    resources:
        mem_mb=mem_mb("evaluate"),
    log:
        STAGES.evaluate.log,
    benchmark:
        STAGES.evaluate.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow evaluate {input.onnx:q} --spec {params.spec:q} --recipe {wildcards.recipe:q}"
        " --reference {input.npz:q} --reference-report {input.reference:q} --manifest {input.manifest:q}"
        " --out {output.report:q} --threads {threads:q} > {log:q} 2>&1"


# The per-layer precision analysis of a quantised model, on the reference's first images: what
# mixed precision ranks layers by and the builds join with their per-layer tables.
rule analyse:
    input:
        onnx=STAGES.quantize.outputs["onnx"],
        float_onnx=STAGES.ptq.outputs["onnx"],
        npz=STAGES.reference.outputs["npz"],
    output:
        **STAGES.analyse.outputs,
    params:
        spec=spec_json("analyse"),
    # One core: with two threads its jobs kept 1.0 core busy (benchmarks/pipeline_speed.py, default
    # config), and holding a second one kept every other job waiting.
    threads: 1
    resources:
        mem_mb=mem_mb("analyse"),
    log:
        STAGES.analyse.log,
    benchmark:
        STAGES.analyse.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow analyse {input.onnx:q} --spec {params.spec:q} --float-model {input.float_onnx:q} --reference {input.npz:q}"
        " --out {output.layers:q} --threads {threads:q} > {log:q} 2>&1"
