rule prepare_data:
    input:
        code=code("data", "config.py"),
    output:
        manifest="results/data/{dataset}.json",
    params:
        cfg=lambda wc: as_json(wsss_config.dataset_config(config, wc.dataset)),
    log:
        "results/logs/prepare_data/{dataset}.log",
    shell:
        "wsss prepare-data --config {params.cfg:q} --out {output.manifest} --threads 1 2> {log}"
