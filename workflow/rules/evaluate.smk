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
                # the table compares each row with this variant (params methods.<v>.baseline)
                "meta": {**run_meta(wc), "baseline": config["methods"][wc.method].get("baseline")},
            }
        ),
    threads: rule_resources("evaluate_cams")["threads"]
    resources:
        gpu=rule_resources("evaluate_cams")["gpu"],
        mem_mb=rule_resources("evaluate_cams")["mem_mb"],
        runtime=rule_resources("evaluate_cams")["runtime"],
    log:
        "results/logs/evaluate/{dataset}/{method}/seed{seed}.log",
    shell:
        "wsss evaluate --config {params.cfg:q} --cams {input.cams} --out {output.metrics}"
        " --threads {threads} 2> {log}"


rule evaluate_decoder:
    input:
        model=model_path,
        code=code("data", "models", "methods", "cams", "evaluation"),
    output:
        metrics="results/runs/{dataset}/{method}/seed{seed}/decoder_metrics.json",
    params:
        cfg=lambda wc: as_json(
            {
                "dataset": wsss_config.dataset_config(config, wc.dataset),
                "train": {"device": wsss_config.dataset_block(config, wc.dataset, "train")["device"]},
                "scales": config["evaluate"]["seg_scales"],
                "meta": run_meta(wc),
            }
        ),
    threads: rule_resources("evaluate_decoder")["threads"]
    resources:
        gpu=rule_resources("evaluate_decoder")["gpu"],
        mem_mb=rule_resources("evaluate_decoder")["mem_mb"],
        runtime=rule_resources("evaluate_decoder")["runtime"],
    log:
        "results/logs/evaluate_decoder/{dataset}/{method}/seed{seed}.log",
    shell:
        "wsss evaluate-decoder --config {params.cfg:q} --model {input.model} --out {output.metrics}"
        " --threads {threads} 2> {log}"
