# CAMs of a split: one `cams` job per split, or, when the split has more than
# cam.shard_size images, one `cams_shard` job per shard (the checkpoint
# cam_shard_plan cuts the split) and a cam_shard_index job whose index the
# consumers read as the split's CAMs (cam_artifact in common.smk).


# The plan and the index only read id lists and zip indexes: no cluster job for them.
localrules:
    cam_shard_plan,
    cam_shard_index,


rule cams:
    input:
        model=model_path,
        code=code("cams", variant_methods),
    output:
        cams=results("cams/{dataset}/{method}/seed{seed}/{split}.npz"),
    params:
        cfg=lambda wc: as_json(wsss_config.cam_config(config, wc.dataset, wc.method)),
    threads: rule_resources("cams")["threads"]
    resources:
        gpu=rule_resources("cams")["gpu"],
        mem_mb=rule_resources("cams")["mem_mb"],
        runtime=rule_resources("cams")["runtime"],
        device=lambda wc: execution_resources(wc)["device"],
        workers=lambda wc: execution_resources(wc)["workers"],
        cache_images=lambda wc: int(execution_resources(wc)["cache_images"]),
    # The timing JSON varies run to run: a log (untracked, never a rerun trigger), not an
    # output in results/cams, which DVC caches and pushes.
    log:
        log=results("logs/cams/{dataset}/{method}/seed{seed}/{split}.log"),
        timing=results("logs/cams/{dataset}/{method}/seed{seed}/{split}_timing.json"),
    shell:
        "wsss cams --config {params.cfg:q} --model {input.model} --split {wildcards.split}"
        " --out {output.cams} --timing {log.timing} --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log.log}"


checkpoint cam_shard_plan:
    input:
        manifest=results("data/{dataset}.json"),
        code=code("cam-shards"),
    output:
        plan=results("cams/{dataset}/{split}.shard_plan.json"),
    params:
        cfg=lambda wc: as_json(wsss_config.cam_shards_config(config, wc.dataset)),
    log:
        results("logs/cam_shard_plan/{dataset}/{split}.log"),
    shell:
        "wsss cam-shards plan --config {params.cfg:q} --split {wildcards.split}"
        " --out {output.plan} --threads 1 2> {log}"


rule cams_shard:
    input:
        model=model_path,
        plan=results("cams/{dataset}/{split}.shard_plan.json"),
        code=code("cams", variant_methods),
    output:
        cams=results("cams/{dataset}/{method}/seed{seed}/{split}.shards/{shard}.npz"),
    params:
        cfg=lambda wc: as_json(wsss_config.cam_config(config, wc.dataset, wc.method)),
    threads: rule_resources("cams")["threads"]
    resources:
        gpu=rule_resources("cams")["gpu"],
        mem_mb=rule_resources("cams")["mem_mb"],
        runtime=rule_resources("cams")["runtime"],
        device=lambda wc: execution_resources(wc)["device"],
        workers=lambda wc: execution_resources(wc)["workers"],
        cache_images=lambda wc: int(execution_resources(wc)["cache_images"]),
    log:
        log=results("logs/cams/{dataset}/{method}/seed{seed}/{split}.shards/{shard}.log"),
        timing=results("logs/cams/{dataset}/{method}/seed{seed}/{split}.shards/{shard}_timing.json"),
    shell:
        "wsss cams --config {params.cfg:q} --model {input.model} --split {wildcards.split}"
        " --shard {wildcards.shard} --plan {input.plan}"
        " --out {output.cams} --timing {log.timing} --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log.log}"


rule cam_shard_index:
    input:
        shards=cam_shard_files,
        plan=results("cams/{dataset}/{split}.shard_plan.json"),
        code=code("cam-shards"),
    output:
        index=results("cams/{dataset}/{method}/seed{seed}/{split}.shards.json"),
    log:
        results("logs/cam_shard_index/{dataset}/{method}/seed{seed}/{split}.log"),
    shell:
        "wsss cam-shards index --plan {input.plan} --shards {input.shards}"
        " --out {output.index} --threads 1 2> {log}"
