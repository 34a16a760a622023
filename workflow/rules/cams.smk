# CAMs of a split: one `cams_<run>` job per trained run and split, or, when the split has
# more than cam.shard_size images, one `cams_shard_<run>` job per shard (the checkpoint
# cam_shard_plan cuts the split) and a cam_shard_index job whose index the
# consumers read as the split's CAMs (cam_artifact in common.smk).
import hashlib
from types import SimpleNamespace as Namespace


# The plan and the index only read id lists and zip indexes: no cluster job for them.
localrules:
    cam_shard_plan,
    cam_shard_index,


def cam_group_outputs(variants, suffix):
    """{variant: its CAM file} of one CAM job (wildcards dataset, seed, split[, shard] kept)."""
    return {v: results(f"cams/{{dataset}}/{v}/seed{{seed}}/{{split}}{suffix}") for v in variants}


def cam_group_outs(variants):
    """Params function: the job's --out=NAME=FILE arguments, one per variant."""
    return lambda wc, output: " ".join(shlex.quote(f"--out={v}={output[v]}") for v in variants)


# One CAM job per trained model and split (or shard): it writes the CAM file of every grid
# variant that reads that model (wsss.config.cam_groups), from one forward pass per scale;
# the rule of run R is cams_R (cams_shard_R for shards). Changing one variant's CAM settings
# reruns its siblings' CAMs too (they are one job); their files come out bitwise the same.
for cam_run, cam_variants in CAM_GROUPS.items():

    rule:
        name:
            cam_rule_name("cams", cam_run)
        input:
            model=results(f"runs/{{dataset}}/train/{cam_run}/seed{{seed}}/model.pt"),
            code=code("cams", cam_group_methods(cam_variants)),
        output:
            **cam_group_outputs(cam_variants, ".npz"),
        # The timing JSON varies run to run: a log (untracked, never a rerun trigger), not an
        # output in results/cams, which DVC caches and pushes.
        log:
            log=results(f"logs/cams/{{dataset}}/{cam_run}/seed{{seed}}/{{split}}.log"),
            timing=results(f"logs/cams/{{dataset}}/{cam_run}/seed{{seed}}/{{split}}_timing.json"),
        threads: rule_resources("cams")["threads"]
        resources:
            **job_resources("cams", "train"),
        params:
            cfg=job_config("cams", variants=cam_variants),
            outs=cam_group_outs(cam_variants),
        shell:
            "wsss cams --config {params.cfg:q} --model {input.model} --split {wildcards.split}"
            " {params.outs} --timing {log.timing} --threads {threads}"
            " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
            " 2> {log.log}"


def cam_split_files(dataset, method, seed, split):
    """Every CAM file of a run's split: the CAM file, or the shard index and each shard.
    Targets of `all` (every_cam_artifact), so that a deleted shard is rebuilt like any
    other artifact, not only when its index is missing."""
    artifact = cam_artifact(dataset, method, seed, split)
    if not artifact.endswith(".shards.json"):
        return [artifact]
    wildcards = Namespace(dataset=dataset, method=method, seed=seed, split=split)
    return [artifact, *cam_shard_files(wildcards)]


def shard_plan_digest(wildcards):
    """Params of the shard and index jobs: the SHA-256 of their split's plan.

    The plan is their input as ancient(), so a plan rebuilt with the same content (its
    manifest regenerated, the file deleted) reruns nothing downstream, while a plan whose
    content changed (another cam.shard_size, another image list) reruns them through
    Snakemake's params trigger. Reading the plan waits for the checkpoint that makes it."""
    plan = checkpoints.cam_shard_plan.get(dataset=wildcards.dataset, split=wildcards.split)
    with open(plan.output.plan, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


checkpoint cam_shard_plan:
    input:
        manifest=results("data/{dataset}.json"),
        code=code("cam-shards"),
    output:
        plan=results("cams/{dataset}/{split}.shard_plan.json"),
    log:
        results("logs/cam_shard_plan/{dataset}/{split}.log"),
    params:
        cfg=job_config("cam-shards"),
    shell:
        "wsss cam-shards plan --config {params.cfg:q} --split {wildcards.split}"
        " --out {output.plan} --threads 1 2> {log}"


for cam_run, cam_variants in CAM_GROUPS.items():

    rule:
        name:
            cam_rule_name("cams_shard", cam_run)
        input:
            model=results(f"runs/{{dataset}}/train/{cam_run}/seed{{seed}}/model.pt"),
            plan=ancient(results("cams/{dataset}/{split}.shard_plan.json")),
            code=code("cams", cam_group_methods(cam_variants)),
        output:
            **cam_group_outputs(cam_variants, ".shards/{shard}.npz"),
        log:
            log=results(
                f"logs/cams/{{dataset}}/{cam_run}/seed{{seed}}/{{split}}.shards/{{shard}}.log"
            ),
            timing=results(
                f"logs/cams/{{dataset}}/{cam_run}/seed{{seed}}/{{split}}.shards/{{shard}}_timing.json"
            ),
        threads: rule_resources("cams")["threads"]
        resources:
            **job_resources("cams", "train"),
        params:
            plan_sha256=shard_plan_digest,
            cfg=job_config("cams", variants=cam_variants),
            outs=cam_group_outs(cam_variants),
        shell:
            "wsss cams --config {params.cfg:q} --model {input.model} --split {wildcards.split}"
            " --shard {wildcards.shard} --plan {input.plan}"
            " {params.outs} --timing {log.timing} --threads {threads}"
            " --device {resources.device} --workers {resources.workers} --cache-images {resources.cache_images}"
            " 2> {log.log}"


rule cam_shard_index:
    input:
        shards=cam_shard_files,
        plan=ancient(results("cams/{dataset}/{split}.shard_plan.json")),
        code=code("cam-shards"),
    output:
        index=results("cams/{dataset}/{method}/seed{seed}/{split}.shards.json"),
    log:
        results("logs/cam_shard_index/{dataset}/{method}/seed{seed}/{split}.log"),
    params:
        plan_sha256=shard_plan_digest,
    shell:
        "wsss cam-shards index --plan {input.plan} --shards {input.shards}"
        " --out {output.index} --threads 1 2> {log}"
