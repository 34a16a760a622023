localrules:
    table,


rule table:
    input:
        plans=after_shard_plans,
        metrics=expand(
            results("runs/{dataset}/{method}/seed{seed}/cam_metrics.json"),
            dataset=DATASETS,
            method=METHODS,
            seed=SEEDS,
        ),
        decoder=expand(
            results("runs/{dataset}/{method}/seed{seed}/decoder_metrics.json"),
            dataset=DATASETS,
            method=decoder_methods(),
            seed=SEEDS,
        ),
        pseudo=expand(
            results("runs/{dataset}/{method}/seed{seed}/pseudo_label_metrics.json"),
            dataset=DATASETS,
            method=METHODS,
            seed=SEEDS,
        ),
        seg=expand(
            results("runs/{dataset}/{method}/seed{seed}/seg_metrics.json"),
            dataset=DATASETS,
            method=METHODS,
            seed=SEEDS,
        ),
        # per trained run (variants that differ only in refiner share one)
        attention=expand(
            results("runs/{dataset}/train/{train}/seed{seed}/attention_diagnostics.json"),
            dataset=DATASETS,
            train=train_keys(),
            seed=SEEDS,
        ),
        code=code("table"),
    output:
        table=report(results("table.md"), caption="../report/table_files.rst", category="Results"),
        csv=report(results("table.csv"), caption="../report/table_files.rst", category="Results"),
        runs=report(results("runs.csv"), caption="../report/table_files.rst", category="Results"),
        metrics=results("metrics.json"),
        plots=[results("plots/cam_miou.csv"), results("plots/threshold_curves.csv")],
    log:
        results("logs/table.log"),
    params:
        cfg=job_config("table"),
        out_dir=RESULTS,
    shell:
        "wsss table --metrics {input.metrics} --decoder-metrics {input.decoder}"
        " --pseudo-label-metrics {input.pseudo} --seg-metrics {input.seg}"
        " --attention-diagnostics {input.attention}"
        " --config {params.cfg:q} --out-dir {params.out_dir}"
        " > {log} 2>&1"


# ---------------------------------------------------------------- pictures
# One job per dataset (not per method): each reads every method's results.


localrules:
    plots,
    table_html,


rule table_html:
    input:
        table=results("table.md"),
        code=code("table-html"),
        plans=after_shard_plans,
    output:
        html=report(results("table.html"), caption="../report/table.rst", category="Results"),
    log:
        results("logs/table_html.log"),
    shell:
        "wsss table-html --table {input.table} --out {output.html} 2> {log}"


rule plots:
    input:
        plans=after_shard_plans,
        metrics=expand(
            results("runs/{{dataset}}/{method}/seed{seed}/cam_metrics.json"),
            method=METHODS,
            seed=SEEDS,
        ),
        manifest=results("data/{dataset}.json"),
        code=code("plots"),
    output:
        miou=report(
            results("figures/{dataset}/cam_miou.png"),
            caption="../report/cam_miou.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "CAM mIoU per method"},
        ),
        curves=report(
            results("figures/{dataset}/threshold_curves.png"),
            caption="../report/threshold_curves.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "mIoU vs background threshold"},
        ),
        per_class=report(
            results("figures/{dataset}/per_class_iou.png"),
            caption="../report/per_class_iou.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "per-class IoU"},
        ),
        failure_modes=report(
            results("figures/{dataset}/failure_modes.png"),
            caption="../report/failure_modes.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "part vs body recall, context FP"},
        ),
        csv=results("plots/per_class_iou/{dataset}.csv"),
    log:
        results("logs/plots/{dataset}.log"),
    params:
        cfg=job_config("plots"),
        out_dir=lambda wc, output: str(Path(output.miou).parent),
    shell:
        "wsss plots --config {params.cfg:q} --metrics {input.metrics} --manifest {input.manifest}"
        " --out-dir {params.out_dir} --csv {output.csv} > {log} 2>&1"


rule gallery:
    input:
        cams=gallery_cams,
        # the same runs' pseudo-labels (directory outputs of the pseudo_labels rule)
        pseudo=expand(
            results("pseudo_labels/{{dataset}}/{method}/seed{seed}"), method=METHODS, seed=SEEDS[0]
        ),
        manifest=results("data/{dataset}.json"),
        code=code("gallery"),
    output:
        gallery=report(
            results("gallery/{dataset}.png"),
            caption="../report/gallery.rst",
            category="CAM gallery",
            labels={"dataset": "{dataset}"},
        ),
    log:
        results("logs/gallery/{dataset}.log"),
    resources:
        **job_resources("gallery"),
    params:
        cfg=job_config("gallery"),
    shell:
        "wsss gallery --config {params.cfg:q} --cams {input.cams} --pseudo-labels {input.pseudo}"
        " --out {output.gallery} > {log} 2>&1"


localrules:
    train_curves,


rule train_curves:
    input:
        logs=expand(
            results("runs/{{dataset}}/train/{train}/seed{seed}/train_log.tsv"),
            train=train_keys(),
            seed=SEEDS,
        ),
        code=code("train-curves"),
    output:
        csv=results("plots/train_curves/{dataset}.csv"),
        figure=report(
            results("figures/{dataset}/train_curves.png"),
            caption="../report/train_curves.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "training loss per epoch"},
        ),
    log:
        results("logs/train_curves/{dataset}.log"),
    shell:
        "wsss train-curves --logs {input.logs} --csv {output.csv} --figure {output.figure}"
        " > {log} 2>&1"
