rule train:
    input:
        manifest="results/data/{dataset}.json",
        entropy_weights=entropy_weights_path,
        code=code("data", "models", "methods"),
    output:
        model="results/runs/{dataset}/train/{train}/seed{seed}/model.pt",
        metrics="results/runs/{dataset}/train/{train}/seed{seed}/train_metrics.json",
    params:
        cfg=lambda wc: as_json(wsss_config.training_config(config, wc.dataset, wc.train)),
        out_dir=subpath(output.model, parent=True),
        entropy_weights=lambda wc, input: (
            f"--entropy-weights {input.entropy_weights}" if input.entropy_weights else ""
        ),
    threads: rule_resources("train")["threads"]
    resources:
        gpu=rule_resources("train")["gpu"],
        mem_mb=rule_resources("train")["mem_mb"],
        runtime=rule_resources("train")["runtime"],
    log:
        "results/logs/train/{dataset}/{train}/seed{seed}.log",
    shell:
        "wsss train --config {params.cfg:q} --seed {wildcards.seed} --out-dir {params.out_dir}"
        " {params.entropy_weights} --threads {threads} 2> {log}"


# AReAM's per-block entropy weights from the trained baseline of the same dataset and seed,
# for the training runs whose method params say entropy_weights: baseline.
rule entropy_weights:
    input:
        model=entropy_baseline_model,
        manifest="results/data/{dataset}.json",
        code=code("data", "models", "methods", "cams"),
    output:
        weights="results/runs/{dataset}/entropy/seed{seed}/entropy_weights.json",
    params:
        cfg=lambda wc: as_json(wsss_config.entropy_config(config, wc.dataset)),
    threads: rule_resources("entropy_weights")["threads"]
    resources:
        gpu=rule_resources("entropy_weights")["gpu"],
        mem_mb=rule_resources("entropy_weights")["mem_mb"],
        runtime=rule_resources("entropy_weights")["runtime"],
    log:
        "results/logs/entropy_weights/{dataset}/seed{seed}.log",
    shell:
        "wsss entropy-weights --config {params.cfg:q} --model {input.model}"
        " --out {output.weights} --threads {threads} 2> {log}"
