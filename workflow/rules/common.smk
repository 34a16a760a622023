# Helpers shared by the rules: validation, the grid, per-job settings, code inputs.
import json
import shlex
import sys
from pathlib import Path

# The project this workflow belongs to: the code inputs resolve against it, so that the
# workflow also runs as a module of another folder (`module ...: snakefile:`, snakedeploy),
# where relative inputs would name files in that folder. workflow.basedir is the main
# Snakefile's folder, the deploying one's in a module; current_basedir is this file's
# (workflow/rules). Import the package from it even when it is not installed.
_rules_dir = workflow.current_basedir.get_path_or_uri(secret_free=True)
if not Path(_rules_dir).is_dir():
    raise WorkflowError(
        f"the workflow's rules are at {_rules_dir}, not a local folder: the rules' code inputs "
        "are the package's files, so use the workflow as a module from a local clone "
        '(module ...: snakefile: "<clone>/workflow/Snakefile")'
    )
PROJECT = Path(_rules_dir).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from wsss import code_deps as wsss_code_deps  # noqa: E402
from wsss import config as wsss_config  # noqa: E402


def config_sources():
    """Which file set each key of `config` (params.yaml, each --configfile, --config), so an
    error names the file the bad value came from (wsss.config.ParamsSources)."""
    import yaml

    layers = []
    for path in ["params.yaml", *workflow.config_settings.configfiles]:
        try:
            shown = Path(path).resolve().relative_to(Path.cwd())
        except ValueError:
            shown = path
        try:
            layers.append((str(shown), yaml.safe_load(Path(path).read_text())))
        except (OSError, yaml.YAMLError):
            layers.append((str(shown), None))  # Snakemake has read it; names the rest
    layers.append(("--config", dict(workflow.config_settings.config)))
    return wsss_config.ParamsSources.of(layers)


# Fails before any job starts, naming the key and its file (schema + method registry).
wsss_config.validate_params(config, source=config_sources())

# Every path a rule reads or writes lives under this one prefix (params.yaml `results_dir`,
# default `results`; configs/smoke.yaml moves the smoke run out of the committed results).
RESULTS = wsss_config.results_dir(config)


def results(path):
    """``path`` (wildcards kept as they are) below the results folder."""
    return f"{RESULTS}/{path}"


GRID = config["grid"]
DATASETS = GRID["datasets"]
METHODS = GRID["methods"]
SEEDS = GRID["seeds"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    seed=r"\d+",
    split=r"[A-Za-z0-9_-]+",  # no dots: {split}.npz and {split}.shards.json stay apart
    shard=r"\d+",


def dataset_kind(dataset):
    return config["datasets"][dataset]["kind"]


def code(command, methods=None):
    """Input function: the package files the ``wsss <command>`` job imports, derived from the
    package's imports for the job's dataset kind and the methods it builds (wsss.code_deps).
    ``methods(wildcards)`` gives (training methods, refiners)."""

    def inputs(wildcards):
        kind = dataset_kind(wildcards.dataset) if "dataset" in wildcards.keys() else None
        trains, refiners = methods(wildcards) if methods else ((), ())
        files = wsss_code_deps.code_inputs(command, kind, trains, refiners)
        return files if PROJECT == Path.cwd() else [str(PROJECT / f) for f in files]

    return inputs


def training_method(wildcards):
    """(training method, no refiner) of the training run {train}."""
    variant = wsss_config.training_variant(config, wildcards.train)
    return [config["methods"][variant]["train"]], []


def variant_methods(wildcards):
    """(training method, refiner) of the grid variant {method}."""
    spec = config["methods"][wildcards.method]
    return [spec["train"]], [spec.get("refine", "none")]


def cam_group_methods(variants):
    """Input-function helper: (training method, refiners) of the CAM job of ``variants``."""

    def methods(wildcards):
        specs = [config["methods"][v] for v in variants]
        return [specs[0]["train"]], sorted({s.get("refine", "none") for s in specs})

    return methods


# {trained run: the grid variants whose CAMs it gives}; one CAM rule per run (cams.smk).
CAM_GROUPS = wsss_config.cam_groups(config)


cam_rule_name = wsss_config.cam_rule_name

_cam_rule_names = [cam_rule_name(p, r) for p in ("cams", "cams_shard") for r in CAM_GROUPS]
if len(set(_cam_rule_names)) != len(_cam_rule_names):
    raise ValueError(
        f"two trained runs give the same CAM rule name ({_cam_rule_names}): rename a variant "
        "under methods so that its name differs in more than punctuation"
    )


def job_config(stage, **extra):
    """Params function: the ``--config`` JSON of a ``wsss <stage>`` job with the job's
    wildcards, built in one place (wsss.config.jobs; ``extra``: what the rule fixes, e.g.
    the variants of a CAM rule). ``stage`` may be a function of the wildcards (a
    conversion job's stage is its dataset kind's)."""

    def name(wc):
        return stage(wc) if callable(stage) else stage

    return lambda wc: json.dumps(
        wsss_config.job_config(config, name(wc), dict(wc.items()), **extra), sort_keys=True
    )


def job_resources(rule_name, execution=None):
    """A rule's resources (wsss.config.job_resources): gpu, mem_mb, runtime of its family
    in params.yaml, and with ``execution`` (the params block, train or segmentation) each
    job's device, DataLoader workers and image cache."""
    return wsss_config.job_resources(config, rule_name, execution)


def train_key(wildcards):
    return wsss_config.training_key(config, wildcards.method)


def train_keys():
    return sorted({wsss_config.training_key(config, m) for m in METHODS})


def upstream_files(wildcards):
    """{param: file} of the artifacts the training run {train} reads from other trained runs
    (declared by its method, e.g. AReAM's entropy_weights: baseline), each made by the rule
    of the declared stage beside that run's model.pt."""
    return {
        param: f"{RESULTS}/runs/{wildcards.dataset}/train/{run}/seed{wildcards.seed}/{stage}.json"
        for param, stage, run in wsss_config.upstream_inputs(config, wildcards.train)
    }


def eval_split(dataset):
    return config["datasets"][dataset]["eval_split"]


def model_path(wildcards):
    return f"{RESULTS}/runs/{wildcards.dataset}/train/{train_key(wildcards)}/seed{wildcards.seed}/model.pt"


def decoder_methods():
    """Grid methods whose training method has its own segmentation decoder."""
    from wsss.methods import TRAINING_METHODS

    return [m for m in METHODS if TRAINING_METHODS.get(config["methods"][m]["train"]).has_decoder]


def rule_resources(rule_name):
    """Resources of a rule family (wsss.config.rule_resources): threads, gpu, mem_mb, runtime."""
    return wsss_config.rule_resources(config, rule_name)


def launcher(rule_name):
    """The command that starts a job of a training rule: `wsss` (one process), or with
    resources.<rule>.gpu > 1, torchrun with one process per GPU on this node
    (wsss.distributed: global batch, rank 0 writes the outputs)."""
    gpus = rule_resources(rule_name)["gpu"]
    if gpus <= 1:
        return "wsss"
    return f"torchrun --standalone --nproc_per_node={gpus} -m wsss.cli"


def conversion_manifest(wildcards):
    """A dataset whose kind declares a conversion stage (coco) is read from its converted
    layout: convert first."""
    if wsss_config.conversion_stage(config, wildcards.dataset):
        return f"{RESULTS}/data/{wildcards.dataset}.conversion.json"
    return []


def conversion_stage(wildcards):
    """The `wsss` command that converts {dataset} (its kind's declaration, wsss.data.kinds)."""
    stage = wsss_config.conversion_stage(config, wildcards.dataset)
    if stage is None:
        raise WorkflowError(f"datasets.{wildcards.dataset}: its kind has no conversion stage")
    return stage


def conversion_family(wildcards):
    """resources.<family> of {dataset}'s conversion job (convert_coco)."""
    return wsss_config.conversion_family(config, wildcards.dataset)


def train_split(dataset):
    return config["datasets"][dataset]["train_split"]


def pseudo_label_threshold_source(wildcards):
    """cam_metrics.json when the background threshold is the evaluate stage's best one."""
    block = wsss_config.dataset_block(config, wildcards.dataset, "pseudo_labels")
    if block["bg_threshold"] != "best":
        return []
    return f"{RESULTS}/runs/{wildcards.dataset}/{wildcards.method}/seed{wildcards.seed}/cam_metrics.json"


def shard_count(dataset, split):
    """Shards of a split under cam.shard_size (1: not sharded). Reads the split's plan,
    so the jobs that need it wait for the cam_shard_plan checkpoint."""
    if not wsss_config.shard_size(config, dataset):
        return 1
    plan = checkpoints.cam_shard_plan.get(dataset=dataset, split=split).output.plan
    with open(plan) as f:
        return json.load(f)["shards"]


def cam_shard_plans():
    """The shard plans of the CAM splits of every sharded dataset: targets of `all`, so
    that turning sharding on for CAMs already extracted reruns what reads them."""
    return [
        f"{RESULTS}/cams/{dataset}/{split}.shard_plan.json"
        for dataset in DATASETS
        if wsss_config.shard_size(config, dataset)
        for split in sorted({train_split(dataset), eval_split(dataset)})
    ]


def after_shard_plans(wildcards):
    """Input function that adds no file: the job waits, like the readers of a shard plan,
    for the cam_shard_plan checkpoints of its dataset (of every dataset without {dataset}).

    For the jobs below the plans' readers (segment below pseudo_labels, plots and table
    below evaluate_cams, table_html below table). When a plan is rebuilt (deleted, or its
    inputs newer), Snakemake re-evaluates the jobs that wait for it once it exists, and
    the readers of an unchanged plan then do not run; but it kept the jobs below them
    scheduled, with reasons naming inputs no job rewrote (snakemake#3879): a deleted plan
    retrained both smoke segmenters. Waiting for the plan themselves, they are
    re-evaluated too."""
    datasets = [wildcards.dataset] if "dataset" in wildcards.keys() else DATASETS
    for dataset in datasets:
        for split in sorted({train_split(dataset), eval_split(dataset)}):
            shard_count(dataset, split)
    return []


def cam_artifact(dataset, method, seed, split):
    """What a job reads as the CAMs of a split: the CAM file, or the shard index."""
    base = f"{RESULTS}/cams/{dataset}/{method}/seed{seed}/{split}"
    return f"{base}.npz" if shard_count(dataset, split) == 1 else f"{base}.shards.json"


def cam_shard_files(wildcards):
    """The shards' CAM files of {split}, in shard order."""
    base = f"{RESULTS}/cams/{wildcards.dataset}/{wildcards.method}/seed{wildcards.seed}"
    count = shard_count(wildcards.dataset, wildcards.split)
    return [f"{base}/{wildcards.split}.shards/{i}.npz" for i in range(count)]


def gallery_cams(wildcards):
    """The CAMs of every method's first-seed run on the dataset's eval split."""
    split = eval_split(wildcards.dataset)
    return [cam_artifact(wildcards.dataset, method, SEEDS[0], split) for method in METHODS]


def apply_rule_families():
    """Per-rule settings (``--set-resources RULE:KEY=VALUE``, ``--set-threads RULE=N`` and a
    profile's ``set-resources:`` / ``set-threads:``) may name a rule family instead of a rule:
    ``cams`` reaches every per-run CAM rule ``cams_<run>`` and ``cams_shard`` every
    ``cams_shard_<run>`` (wsss.config.rule_family), as in params.yaml's ``resources:``. An
    entry for one ``cams_<run>`` wins over its family's, key by key. Called once every rule is
    defined; a name that is neither a rule nor a family stops the run here, with the known
    names (Snakemake itself ignores it silently). In a module (snakedeploy), the deploying
    workflow's rules are not defined yet and its names may carry a prefix: no check there."""
    settings = workflow.resource_settings
    rules = {job_rule.name: job_rule for job_rule in workflow.rules}
    families = {wsss_config.rule_family(name) for name in rules}
    given = {
        "--set-resources": dict(settings.overwrite_resources),
        "--set-threads": dict(settings.overwrite_threads),
    }
    # the main workflow has one modifier; `module` / `use rule ... from` push one more
    if len(workflow.modifier_stack) == 1:
        for option, entries in given.items():
            unknown = sorted(set(entries) - set(rules) - families)
            if unknown:
                per_run = sorted(set(rules) - families)
                raise WorkflowError(
                    f"{option} (command line or profile) names {', '.join(unknown)}: no rule "
                    f"of this workflow. Names it knows: {', '.join(sorted(families))} (a family "
                    f"name reaches its per-run rules: {', '.join(per_run)})"
                )
    for name, job_rule in rules.items():
        family = wsss_config.rule_family(name)
        if family == name:
            continue
        own = given["--set-resources"].get(name, {})
        inherited = given["--set-resources"].get(family, {})
        for key, value in inherited.items():
            if key not in own:
                job_rule.resources[key] = value
        if family in given["--set-threads"] and name not in given["--set-threads"]:
            job_rule.resources["_cores"] = given["--set-threads"][family]
