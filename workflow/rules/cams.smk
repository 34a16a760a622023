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
