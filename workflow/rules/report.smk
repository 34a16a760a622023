localrules:
    table,


rule table:
    input:
        metrics=expand(
            "results/runs/{dataset}/{method}/seed{seed}/cam_metrics.json",
            dataset=DATASETS,
            method=METHODS,
            seed=SEEDS,
        ),
        decoder=expand(
            "results/runs/{dataset}/{method}/seed{seed}/decoder_metrics.json",
            dataset=DATASETS,
            method=decoder_methods(),
            seed=SEEDS,
        ),
        code=code("report"),
    output:
        table="results/table.md",
        csv="results/table.csv",
        runs="results/runs.csv",
        metrics="results/metrics.json",
        plots=["results/plots/cam_miou.csv", "results/plots/threshold_curves.csv"],
    params:
        order=" ".join(METHODS),
    log:
        "results/logs/table.log",
    shell:
        "wsss table --metrics {input.metrics} --decoder-metrics {input.decoder} --out-dir results --method-order {params.order}"
        " > {log} 2>&1"
