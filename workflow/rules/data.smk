rule prepare_data:
    input:
        code=code("prepare-data"),
        conversion=conversion_manifest,
    output:
        manifest=results("data/{dataset}.json"),
    log:
        results("logs/prepare_data/{dataset}.log"),
    threads: rule_resources("prepare_data")["threads"]
    resources:
        **job_resources("prepare_data"),
    params:
        cfg=job_config("prepare-data"),
        # A copy of the manifest's record of the files decoded and checked, read by the next
        # run so that it decodes only changed files. Not an output: Snakemake deletes outputs
        # before a job runs, and losing the copy costs only decoding time. (An update() flag
        # on the manifest would keep it, but also restore it when the check fails, and the
        # next run then took the restored manifest as current and trained on the refused data.)
        cache=results("data/{dataset}.checked.json"),
    shell:
        "wsss prepare-data --config {params.cfg:q} --out {output.manifest}"
        " --cache {params.cache} --threads {threads} 2> {log}"


# Raw files -> the VOC-style layout at datasets.<name>.root, once per dataset whose kind
# declares a conversion stage (wsss.data.kinds; coco: `wsss convert-coco`). No code inputs
# on purpose: the conversion is a one-time step (COCO 2014's 123k images at the ~100
# images/s measured on the sample: ~20 min), and a root converted with other settings is
# refused rather than silently rewritten; delete the root to convert again. Resources:
# resources.<stage with underscores> (convert_coco).
rule convert_data:
    output:
        manifest=results("data/{dataset}.conversion.json"),
    log:
        results("logs/convert_data/{dataset}.log"),
    threads: 1
    resources:
        **job_resources(conversion_family),
    params:
        stage=conversion_stage,
        cfg=job_config(conversion_stage),
    shell:
        "wsss {params.stage} --config {params.cfg:q} --out {output.manifest} 2> {log}"
