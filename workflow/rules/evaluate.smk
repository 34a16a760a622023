rule evaluate_cams:
    input:
        cams=lambda wc: cam_artifact(wc.dataset, wc.method, wc.seed, eval_split(wc.dataset)),
        code=code("evaluate"),
    output:
        metrics=results("runs/{dataset}/{method}/seed{seed}/cam_metrics.json"),
    log:
        results("logs/evaluate/{dataset}/{method}/seed{seed}.log"),
    threads: rule_resources("evaluate_cams")["threads"]
    resources:
        **job_resources("evaluate_cams"),
    params:
        cfg=job_config("evaluate"),
    shell:
        "wsss evaluate --config {params.cfg:q} --cams {input.cams} --out {output.metrics}"
        " --threads {threads} 2> {log}"


rule evaluate_decoder:
    input:
        model=model_path,
        code=code("evaluate-decoder", variant_methods),
    output:
        metrics=results("runs/{dataset}/{method}/seed{seed}/decoder_metrics.json"),
    log:
        results("logs/evaluate_decoder/{dataset}/{method}/seed{seed}.log"),
    threads: rule_resources("evaluate_decoder")["threads"]
    resources:
        **job_resources("evaluate_decoder", "train"),
    params:
        cfg=job_config("evaluate-decoder"),
    shell:
        "wsss evaluate-decoder --config {params.cfg:q} --model {input.model} --out {output.metrics}"
        " --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log}"
