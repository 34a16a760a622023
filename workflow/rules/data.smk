rule prepare_data:
    input:
        code=code("prepare-data"),
        conversion=conversion_manifest,
    output:
        manifest=results("data/{dataset}.json"),
    params:
        cfg=job_config("prepare-data"),
        # A copy of the manifest's record of the files decoded and checked, read by the next
        # run so that it decodes only changed files. Not an output: Snakemake deletes outputs
        # before a job runs, and losing the copy costs only decoding time. (An update() flag
        # on the manifest would keep it, but also restore it when the check fails, and the
        # next run then took the restored manifest as current and trained on the refused data.)
        cache=results("data/{dataset}.checked.json"),
    threads: rule_resources("prepare_data")["threads"]
    resources:
        **job_resources("prepare_data"),
    log:
        results("logs/prepare_data/{dataset}.log"),
    shell:
        "wsss prepare-data --config {params.cfg:q} --out {output.manifest}"
        " --cache {params.cache} --threads {threads} 2> {log}"


# COCO instance annotations -> the VOC-style layout at datasets.<name>.root, once per
# dataset of kind coco. No code inputs on purpose: the conversion is a one-time step
# (COCO 2014's 123k images at the ~100 images/s measured on the sample: ~20 min), and
# a root converted with other settings is refused rather than silently rewritten;
# delete the root to convert again.
rule convert_coco:
    output:
        manifest=results("data/{dataset}.conversion.json"),
    params:
        cfg=job_config("convert-coco"),
    threads: 1
    resources:
        **job_resources("convert_coco"),
    log:
        results("logs/convert_coco/{dataset}.log"),
    shell:
        "wsss convert-coco --config {params.cfg:q} --out {output.manifest} 2> {log}"
