rule train:
    input:
        unpack(upstream_files),
        manifest=results("data/{dataset}.json"),
        weights=pretrained_weights,
        code=code("train", training_method),
    output:
        model=results("runs/{dataset}/train/{train}/seed{seed}/model.pt"),
        metrics=results("runs/{dataset}/train/{train}/seed{seed}/train_metrics.json"),
        # the per-epoch losses (the train_curves rule reads them)
        history=results("runs/{dataset}/train/{train}/seed{seed}/train_log.tsv"),
    log:
        results("logs/train/{dataset}/{train}/seed{seed}.log"),
    threads: rule_resources("train")["threads"]
    resources:
        **job_resources("train", "train"),
    params:
        cfg=job_config("train"),
        out_dir=subpath(output.model, parent=True),
        upstream=lambda wc, input: " ".join(
            f"--upstream {param}={input[param]}" for param in upstream_files(wc)
        ),
    shell:
        launcher("train")
        + " train --config {params.cfg:q} --seed {wildcards.seed} --out-dir {params.out_dir}"
        " {params.upstream} --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log}"


# AReAM's per-block entropy weights (entropy_weights: baseline), from the trained run of the
# baseline it declares (wsss.methods.Upstream), written beside that run's model.pt.
rule entropy_weights:
    input:
        model=results("runs/{dataset}/train/{train}/seed{seed}/model.pt"),
        manifest=results("data/{dataset}.json"),
        code=code("entropy-weights", training_method),
    output:
        weights=results("runs/{dataset}/train/{train}/seed{seed}/entropy_weights.json"),
    log:
        results("logs/entropy_weights/{dataset}/{train}/seed{seed}.log"),
    threads: rule_resources("entropy_weights")["threads"]
    resources:
        **job_resources("entropy_weights", "train"),
    params:
        cfg=job_config("entropy-weights"),
    shell:
        "wsss entropy-weights --config {params.cfg:q} --model {input.model}"
        " --out {output.weights} --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log}"
