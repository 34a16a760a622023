# Stage 2: pseudo-labels from the CAMs of each dataset's train_split, then a
# segmentation network trained on them and scored on seg_split (wsss/stages/pseudo_labels.py,
# wsss/segmentation/).


rule pseudo_labels:
    input:
        cams=lambda wc: cam_artifact(wc.dataset, wc.method, wc.seed, train_split(wc.dataset)),
        cam_metrics=pseudo_label_threshold_source,
        code=code("pseudo-labels"),
    output:
        labels=directory(results("pseudo_labels/{dataset}/{method}/seed{seed}")),
        metrics=results("runs/{dataset}/{method}/seed{seed}/pseudo_label_metrics.json"),
    log:
        results("logs/pseudo_labels/{dataset}/{method}/seed{seed}.log"),
    threads: rule_resources("pseudo_labels")["threads"]
    resources:
        **job_resources("pseudo_labels"),
    params:
        cfg=job_config("pseudo-labels"),
        cam_metrics=lambda wc, input: (
            f"--cam-metrics {input.cam_metrics}" if input.cam_metrics else ""
        ),
    shell:
        "wsss pseudo-labels --config {params.cfg:q} --cams {input.cams} {params.cam_metrics}"
        " --out-dir {output.labels} --metrics {output.metrics} --threads {threads} 2> {log}"


rule segment:
    input:
        labels=results("pseudo_labels/{dataset}/{method}/seed{seed}"),
        manifest=results("data/{dataset}.json"),
        code=code("segment"),
        plans=after_shard_plans,
    output:
        model=results("runs/{dataset}/{method}/seed{seed}/segmenter.pt"),
        metrics=results("runs/{dataset}/{method}/seed{seed}/seg_metrics.json"),
    log:
        results("logs/segment/{dataset}/{method}/seed{seed}.log"),
    threads: rule_resources("segment")["threads"]
    resources:
        **job_resources("segment", "segmentation"),
    params:
        cfg=job_config("segment"),
    shell:
        launcher("segment")
        + " segment --config {params.cfg:q} --labels {input.labels} --seed {wildcards.seed}"
        " --model {output.model} --metrics {output.metrics} --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log}"
