# The tracking store is created once, before any logging job: concurrent creation of a fresh
# SQLite database corrupts it. Logging jobs hold the `mlflow` resource (1 in profiles/default).
rule init_mlflow:
    output:
        **STAGES.init_mlflow.outputs,
    params:
        uri=MLFLOW_URI_SHOWN,
        experiment=MLFLOW_EXPERIMENT,
    log:
        STAGES.init_mlflow.log,
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow init-mlflow --tracking-uri {params.uri:q} --experiment {params.experiment:q} --out {output.store:q} > {log:q} 2>&1"


# One job per model logs one run per (model, target).
rule track:
    input:
        unpack(track_inputs),
        store=STAGES.init_mlflow.outputs["store"],
        # The map the run files were planned from (a dry run plans without waiting for it).
        recipes=STAGES.recipes.outputs["map"],
    output:
        **STAGES.track.outputs,
    params:
        spec=spec_json("track"),
        uri=MLFLOW_URI_SHOWN,
        experiment=MLFLOW_EXPERIMENT,
        files=lambda wc: json.dumps(run_files(wc.model)),
    resources:
        mlflow=1,
    log:
        STAGES.track.log,
    benchmark:
        STAGES.track.benchmark_pattern
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow track --spec {params.spec:q} --tracking-uri {params.uri:q} --experiment {params.experiment:q}"
        " --files {params.files:q} --out {output.runs:q} > {log:q} 2>&1"
