# Attention diagnostics: one job per trained run (beside its model.pt), one figure per dataset.


def attention_config(wildcards):
    """An attention-diagnostics job: the dataset's eval_split, the attention_diagnostics block,
    the blocks the patch affinity and the class attention sum (the dataset's CAM recipe) and
    which run it is."""
    cam = wsss_config.dataset_block(config, wildcards.dataset, "cam")
    return {
        "dataset": wsss_config.dataset_config(config, wildcards.dataset, "eval_split"),
        **config["attention_diagnostics"],
        "affinity_layers": cam["affinity_layers"],
        "class_layers": cam["class_layers"],
        "meta": {
            "dataset": wildcards.dataset,
            "run": wildcards.train,
            "seed": int(wildcards.seed),
        },
    }


def attention_files(wildcards):
    """The diagnostics of every trained run of the grid on {dataset}."""
    return expand(
        results("runs/{dataset}/train/{train}/seed{seed}/attention_diagnostics.json"),
        dataset=wildcards.dataset,
        train=train_keys(),
        seed=SEEDS,
    )


def run_label(key):
    """A trained run's display label: that of its grid variant without refinement, else the
    run's name."""
    for method in METHODS:
        spec = config["methods"][method]
        if train_key_of(method) == key and spec.get("refine", "none") == "none":
            return wsss_config.variant_label(config, method)
    return key


def train_key_of(method):
    return wsss_config.training_key(config, method)


def run_labels():
    """RUN=LABEL items for the figure, shell-quoted."""
    return " ".join(shlex.quote(f"{key}={run_label(key)}") for key in train_keys())


rule attention_diagnostics:
    input:
        model=results("runs/{dataset}/train/{train}/seed{seed}/model.pt"),
        manifest=results("data/{dataset}.json"),
        code=code("attention-diagnostics", training_method),
    output:
        diagnostics=results("runs/{dataset}/train/{train}/seed{seed}/attention_diagnostics.json"),
    params:
        cfg=lambda wc: as_json(attention_config(wc)),
    threads: rule_resources("attention_diagnostics")["threads"]
    resources:
        gpu=rule_resources("attention_diagnostics")["gpu"],
        mem_mb=rule_resources("attention_diagnostics")["mem_mb"],
        runtime=rule_resources("attention_diagnostics")["runtime"],
        device=lambda wc: execution_resources(wc)["device"],
        workers=lambda wc: execution_resources(wc)["workers"],
        cache_images=lambda wc: int(execution_resources(wc)["cache_images"]),
    log:
        results("logs/attention_diagnostics/{dataset}/{train}/seed{seed}.log"),
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
    params:
        order=" ".join(dict.fromkeys(train_key_of(m) for m in METHODS)),
        labels=run_labels(),
    log:
        results("logs/attention_figure/{dataset}.log"),
    shell:
        "wsss attention-figure --diagnostics {input.diagnostics} --out {output.figure}"
        " --run-order {params.order} --labels {params.labels} > {log} 2>&1"
