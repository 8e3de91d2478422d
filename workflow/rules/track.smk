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
    shell:
        "npuflow init-mlflow --tracking-uri {params.uri:q} --experiment {params.experiment:q} --out {output} > {log} 2>&1"


rule track:
    input:
        store="results/mlflow.init.json",
        manifest="results/{model}/fetch/manifest.json",
        export="results/{model}/export.json",
        simplify="results/{model}/simplify.json",
        surgery="results/{model}/surgery.json",
        calibration="results/{model}/calibration.json",
        quantize=quantized_report,
        build="results/{model}/build/{target}/build.json",
        trace="results/{model}/build/{target}/trace.json",
        evaluate="results/{model}/eval/{target}.json",
    output:
        "results/{model}/track/{target}.json",
    params:
        spec=spec_json("track"),
        uri=MLFLOW_URI,
        experiment=MLFLOW_EXPERIMENT,
        files=lambda wc, input: " ".join(f"--file {k}={v}" for k, v in input.items() if k != "store"),
    resources:
        mlflow=1,
    log:
        "results/logs/track/{model}.{target}.log",
    benchmark:
        "results/benchmarks/track/{model}.{target}.tsv"
    shell:
        "npuflow track --spec {params.spec:q} --target {wildcards.target} --tracking-uri {params.uri:q}"
        " --experiment {params.experiment:q} {params.files} --out {output} > {log} 2>&1"
