# The pretrained proxy backbone (params `pretrain`): not in the default target, which trains
# from scratch. `snakemake --cores 1 --force pretrained/proxy_vit.pth` rebuilds it; a config whose
# model.weights names it makes every training job depend on it.

PRETRAINED = "pretrained/proxy_vit.pth"


rule pretrain:
    input:
        code=code("pretrain"),
    output:
        weights=PRETRAINED,
        summary=PRETRAINED.removesuffix(".pth") + ".json",
    log:
        results("logs/pretrain.log"),
    threads: rule_resources("pretrain")["threads"]
    resources:
        **job_resources("pretrain"),
    params:
        cfg=job_config("pretrain"),
    shell:
        "wsss pretrain --config {params.cfg:q} --out {output.weights} --threads {threads}"
        " --no-progress 2> {log}"


def pretrained_weights(wildcards):
    """The local weights file a training run starts from (model.weights), as an input so that
    a missing one is built (the pretrain rule's file) and a changed one retrains; none when
    the run trains from scratch or loads timm's hub weights."""
    variant = wsss_config.training_variant(config, wildcards.train)
    model = wsss_config.variant_block(config, wildcards.dataset, variant, "model")
    return [model["weights"]] if model.get("weights") else []
