rule train:
    input:
        manifest="results/data/{dataset}.json",
        code=code("data", "models", "methods"),
    output:
        model="results/runs/{dataset}/train/{train}/seed{seed}/model.pt",
        metrics="results/runs/{dataset}/train/{train}/seed{seed}/train_metrics.json",
    params:
        cfg=lambda wc: as_json(wsss_config.training_config(config, wc.dataset, wc.train)),
        out_dir=subpath(output.model, parent=True),
    threads: rule_resources("train")["threads"]
    resources:
        gpu=rule_resources("train")["gpu"],
        mem_mb=rule_resources("train")["mem_mb"],
        runtime=rule_resources("train")["runtime"],
    log:
        "results/logs/train/{dataset}/{train}/seed{seed}.log",
    shell:
        "wsss train --config {params.cfg:q} --seed {wildcards.seed} --out-dir {params.out_dir}"
        " --threads {threads} 2> {log}"
