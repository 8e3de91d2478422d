rule report:
    input:
        tracked=[f"results/{m}/track/{t}.json" for m, t in PAIRS],
        builds=[f"results/{m}/build/{t}/build.json" for m, t in PAIRS],
        evals=[f"results/{m}/eval/{t}.json" for m, t in PAIRS],
    output:
        csv="results/summary.csv",
        html="results/report.html",
    params:
        pairs=" ".join(f"--pair {m}:{t}" for m, t in PAIRS),
    log:
        "results/logs/report.log",
    shell:
        "npuflow report {params.pairs} --csv {output.csv} --html {output.html} > {log} 2>&1"
