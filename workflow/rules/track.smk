# The tracking store is created once, before any logging job: concurrent creation of a fresh
# SQLite database corrupts it. Logging jobs hold the `mlflow` resource (1 in profiles/default).
rule init_mlflow:
    output:
        "results/mlflow.init.json",
    params:
        uri=MLFLOW_URI,
        experiment=MLFLOW_EXPERIMENT,
    log:
        "results/logs/init_mlflow.log",
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow init-mlflow --tracking-uri {params.uri:q} --experiment {params.experiment:q} --out {output} > {log} 2>&1"


# One job per model logs one run per (model, target).
rule track:
    input:
        unpack(track_inputs),
        store="results/mlflow.init.json",
    output:
        "results/{model}/track.json",
    params:
        spec=spec_json("track"),
        uri=MLFLOW_URI,
        experiment=MLFLOW_EXPERIMENT,
        files=lambda wc: json.dumps(run_files(wc.model)),
    resources:
        mlflow=1,
    log:
        "results/logs/track/{model}.log",
    benchmark:
        "results/benchmarks/track/{model}.tsv"
    conda:
        "../../envs/mlflow.yaml"
    shell:
        "npuflow track --spec {params.spec:q} --tracking-uri {params.uri:q} --experiment {params.experiment:q}"
        " --files {params.files:q} --out {output} > {log} 2>&1"
