# Attention diagnostics: one job per trained run (beside its model.pt), one figure per dataset.


def attention_files(wildcards):
    """The diagnostics of every trained run of the grid on {dataset}."""
    return expand(
        results("runs/{dataset}/train/{train}/seed{seed}/attention_diagnostics.json"),
        dataset=wildcards.dataset,
        train=train_keys(),
        seed=SEEDS,
    )


rule attention_diagnostics:
    input:
        model=results("runs/{dataset}/train/{train}/seed{seed}/model.pt"),
        manifest=results("data/{dataset}.json"),
        code=code("attention-diagnostics", training_method),
    output:
        diagnostics=results("runs/{dataset}/train/{train}/seed{seed}/attention_diagnostics.json"),
    log:
        results("logs/attention_diagnostics/{dataset}/{train}/seed{seed}.log"),
    threads: rule_resources("attention_diagnostics")["threads"]
    resources:
        **job_resources("attention_diagnostics", "train"),
    params:
        cfg=job_config("attention-diagnostics"),
    shell:
        "wsss attention-diagnostics --config {params.cfg:q} --model {input.model}"
        " --out {output.diagnostics} --threads {threads}"
        " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
        " 2> {log}"


localrules:
    attention_figure,


rule attention_figure:
    input:
        diagnostics=attention_files,
        code=code("attention-figure"),
    output:
        figure=report(
            results("figures/{dataset}/attention_diagnostics.png"),
            caption="../report/attention_diagnostics.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "attention diagnostics"},
        ),
    log:
        results("logs/attention_figure/{dataset}.log"),
    params:
        cfg=job_config("attention-figure"),
    shell:
        "wsss attention-figure --config {params.cfg:q} --diagnostics {input.diagnostics}"
        " --out {output.figure} > {log} 2>&1"
