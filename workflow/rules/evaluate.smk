rule evaluate_cams:
    input:
        cams=lambda wc: f"results/cams/{wc.dataset}/{wc.method}/seed{wc.seed}/{eval_split(wc.dataset)}.npz",
        code=code("data", "cams/store.py", "evaluation"),
    output:
        metrics="results/runs/{dataset}/{method}/seed{seed}/cam_metrics.json",
    params:
        cfg=lambda wc: as_json(
            {
                "dataset": wsss_config.dataset_config(config, wc.dataset),
                "evaluate": config["evaluate"],
                "meta": {
                    "dataset": wc.dataset,
                    "method": wc.method,
                    "seed": int(wc.seed),
                    "label": wsss_config.variant_label(config, wc.method),
                },
            }
        ),
    log:
        "results/logs/evaluate/{dataset}/{method}/seed{seed}.log",
    shell:
        "wsss evaluate --config {params.cfg:q} --cams {input.cams} --out {output.metrics}"
        " 2> {log}"
