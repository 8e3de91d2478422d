# Which quantised model each of a model's recipes uses, resolved on the model quantisation reads
# (after surgery and the ptq methods): the jobs after it (quantize, evaluate, build, mixed
# precision, logging) are planned from its map, so a dry run in a fresh folder lists them once this job has run (README, "Dry runs").
checkpoint recipes:
    input:
        onnx=STAGES.ptq.outputs["onnx"],
    output:
        **STAGES.recipes.outputs,
    params:
        spec=spec_json("recipes"),
        recipes=lambda wc: PLAN.model_recipes_json(wc.model),
    log:
        STAGES.recipes.log,
    benchmark:
        STAGES.recipes.benchmark_pattern
    conda:
        "../../envs/onnx.yaml"
    shell:
        "npuflow recipes {input.onnx:q} --spec {params.spec:q} --recipes {params.recipes:q} --out {output.map:q} > {log:q} 2>&1"
