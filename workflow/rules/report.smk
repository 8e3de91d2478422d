rule report:
    input:
        tracked=[f"results/{m}/track.json" for m in SPECS],
        runs=[path for m in SPECS for files in run_files(m).values() for path in files.values()],
    output:
        csv="results/summary.csv",
        html="results/report.html",
    params:
        pairs=" ".join(f"--pair {m}:{t}" for m, t in PAIRS),
    log:
        "results/logs/report.log",
    shell:
        "npuflow report {params.pairs} --csv {output.csv} --html {output.html} > {log} 2>&1"
