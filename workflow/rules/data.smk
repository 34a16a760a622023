rule prepare_data:
    input:
        code=code("prepare-data"),
        conversion=conversion_manifest,
    # update: Snakemake keeps the previous manifest (and restores it if the job fails), whose
    # record of the files already decoded and checked lets a rerun skip decoding them.
    output:
        manifest=update(results("data/{dataset}.json")),
    params:
        cfg=job_config("prepare-data"),
    threads: rule_resources("prepare_data")["threads"]
    resources:
        **job_resources("prepare_data"),
    log:
        results("logs/prepare_data/{dataset}.log"),
    shell:
        "wsss prepare-data --config {params.cfg:q} --out {output.manifest} --threads {threads}"
        " 2> {log}"


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
