"""Every job's settings (its ``--config``), built from params in one place.

Each ``wsss <stage>`` job reads one JSON object; the rules pass ``job_config(<stage>)``,
which calls the builder registered here for that stage (:data:`JOBS`) with the job's
wildcards. Snakemake compares that JSON between runs, so a job reruns exactly when a
setting it reads changes. Rule resources come from :func:`job_resources`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from wsss.config.resolve import (
    _resolved_method,
    dataset_block,
    dataset_config,
    shard_size,
    training_key,
    training_variant,
    variant_block,
    variant_label,
    variant_spec,
)
from wsss.config.schema import deep_merge

# Keys of the train / segmentation blocks that say how a job runs, not what it computes
# (wsss.runtime.Execution): the rules pass them outside the jobs' params.
EXECUTION_KEYS = ("device", "num_workers", "cache_images")


# Fine-tuning and precision options at the value that turns them off (the plain recipe). A training job's
# params leave them out at that value, so adding or spelling them out reruns no existing run
# and its model.pt (which stores the config) stays byte-identical.
TRAIN_OFF_DEFAULTS = {"layer_decay": 1.0, "freeze_blocks": 0, "cpu_bf16": False}


def _without(block: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k not in keys}


def execution(params: dict[str, Any], dataset: str, block: str = "train") -> dict[str, Any]:
    """The execution knobs of a job (not params): device, DataLoader workers, image cache."""
    train = dataset_block(params, dataset, "train")
    own = dataset_block(params, dataset, block) if block != "train" else train
    return {
        "device": train.get("device", "auto"),
        "workers": int(own.get("num_workers", 0)),
        "cache_images": bool(own.get("cache_images", True)),
    }


def training_config(params: dict[str, Any], dataset: str, key: str) -> dict[str, Any]:
    """What a training job reads (its rule's params): the dataset and its train_split, the
    model and train blocks (execution knobs aside), the method with its defaults filled."""
    variant = training_variant(params, key)
    method, _ = _resolved_method(params, variant)
    train = _without(variant_block(params, dataset, variant, "train"), EXECUTION_KEYS)
    off = [k for k, v in TRAIN_OFF_DEFAULTS.items() if k in train and train[k] == v]
    return {
        "dataset": dataset_config(params, dataset, "train_split"),
        "model": variant_block(params, dataset, variant, "model"),
        "train": _without(train, tuple(off)),
        "method": method,
    }


def entropy_config(params: dict[str, Any], dataset: str, key: str) -> dict[str, Any]:
    """An entropy-weights job: the dataset (its train_split is read) and the batch size of the
    baseline run ``key`` it reads. The image size is the trained model's."""
    train = variant_block(params, dataset, training_variant(params, key), "train")
    return {
        "dataset": dataset_config(params, dataset, "train_split"),
        "batch_size": train["batch_size"],
    }


def cam_config(params: dict[str, Any], dataset: str, variant: str) -> dict[str, Any]:
    """A CAM job: the dataset, the CAM recipe and the refiner (the trained method and model
    come from ``model.pt``)."""
    spec = variant_spec(params, variant)
    _, refiner = _resolved_method(params, variant)
    # shard_size is read by the shard plan (cam_shards_config), not by the extraction itself.
    cam = _without(dataset_block(params, dataset, "cam"), ("shard_size",))
    return {
        "dataset": dataset_config(params, dataset),
        "cam": deep_merge(cam, spec["cam"]),
        "refiner": refiner,
    }


def cam_group_config(params: dict[str, Any], dataset: str, variants: list[str]) -> dict[str, Any]:
    """A CAM job of every variant in ``variants`` (which share one trained model, see
    :func:`cam_groups`): the dataset once and each variant's CAM recipe and refiner."""
    keys = {training_key(params, v) for v in variants}
    if len(keys) != 1:
        raise ValueError(f"the CAM variants {variants} do not share one trained model: {keys}")
    return {
        "dataset": dataset_config(params, dataset),
        "variants": {
            v: {k: c for k, c in cam_config(params, dataset, v).items() if k != "dataset"}
            for v in variants
        },
    }


def cam_shards_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A shard-plan job: how to open the dataset and the shard size."""
    return {"dataset": dataset_config(params, dataset), "shard_size": shard_size(params, dataset)}


def evaluate_config(params: dict[str, Any], dataset: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A CAM-evaluation job: the dataset's eval_split and the threshold sweep."""
    return {
        "dataset": dataset_config(params, dataset, "eval_split"),
        "evaluate": _without(params["evaluate"], ("seg_scales",)),
        "meta": meta,
    }


def decoder_config(params: dict[str, Any], dataset: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A decoder-evaluation job: the dataset's seg_split and the inference scales."""
    return {
        "dataset": dataset_config(params, dataset, "seg_split"),
        "scales": params["evaluate"]["seg_scales"],
        "meta": meta,
    }


def pseudo_label_config(
    params: dict[str, Any], dataset: str, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pseudo-label job: the dataset and the ``pseudo_labels`` block (with the dataset's overrides)."""
    config = {
        "dataset": dataset_config(params, dataset, "train_split", "eval_split"),
        "pseudo_labels": dataset_block(params, dataset, "pseudo_labels"),
    }
    if meta is not None:
        config["meta"] = meta
    return config


def segmentation_config(
    params: dict[str, Any], dataset: str, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A stage-2 job: the ``segmentation`` block (execution knobs aside) and the inference scales."""
    config = {
        "dataset": dataset_config(params, dataset, "train_split", "seg_split"),
        "segmentation": _without(dataset_block(params, dataset, "segmentation"), EXECUTION_KEYS),
        "scales": params["evaluate"]["seg_scales"],
    }
    if meta is not None:
        config["meta"] = meta
    return config


def prepare_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A prepare-data job: the generator (synthetic) and every split in use, all checked
    up front (wsss.data.checks), seg_split included."""
    return dataset_config(params, dataset, "train_split", "eval_split", "seg_split", "generator")


def conversion_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A conversion job (the stage its kind declares, e.g. convert-coco): the dataset's whole
    block as written (its raw ``source`` and the converted ``root``), and its name."""
    return {**params["datasets"][dataset], "name": dataset}


def conversion_family(params: dict[str, Any], dataset: str) -> str:
    """The resources key (``resources.<family>`` in params) of the dataset's conversion job:
    its stage's command with underscores (``convert_coco``)."""
    stage = conversion_stage(params, dataset)
    if stage is None:
        raise ValueError(f"datasets.{dataset}: its kind has no conversion stage")
    return stage.replace("-", "_")


def conversion_stage(params: dict[str, Any], dataset: str) -> str | None:
    """The ``wsss`` command that writes the dataset's layout before prepare-data (its kind's
    :attr:`~wsss.data.kinds.DatasetKind.conversion`), or None when it has none."""
    from wsss.data.kinds import kind_of

    return kind_of({**params["datasets"][dataset], "name": dataset}).conversion


def pretrain_config(params: dict[str, Any]) -> dict[str, Any]:
    """The pretrain job: the ``pretrain`` block."""
    return params["pretrain"]


def attention_config(params: dict[str, Any], dataset: str, run: str, seed: int) -> dict[str, Any]:
    """An attention-diagnostics job: the dataset's eval_split, the attention_diagnostics block,
    the blocks the patch affinity sums (the dataset's CAM recipe) and which run it is."""
    cam = dataset_block(params, dataset, "cam")
    return {
        "dataset": dataset_config(params, dataset, "eval_split"),
        **params["attention_diagnostics"],
        "affinity_layers": cam["affinity_layers"],
        "class_layers": cam["class_layers"],
        "meta": {"dataset": dataset, "run": run, "seed": int(seed)},
    }


def gallery_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A gallery job: the dataset's eval_split, the ``report`` block, every grid method with
    its display label, and the seed whose runs are shown (the grid's first)."""
    return {
        "dataset": dataset_config(params, dataset, "eval_split"),
        "report": params["report"],
        "methods": [
            {"name": m, "label": variant_label(params, m)} for m in params["grid"]["methods"]
        ],
        "seed": params["grid"]["seeds"][0],
    }


def plots_config(params: dict[str, Any]) -> dict[str, Any]:
    """A plots job: the grid's methods in row order and each one's display label."""
    methods = params["grid"]["methods"]
    return {
        "method_order": list(methods),
        "labels": {m: variant_label(params, m) for m in methods},
    }


def run_label(params: dict[str, Any], run: str) -> str:
    """A trained run's display label: that of the first grid variant training it without a
    refiner, else the run's name."""
    for method in params["grid"]["methods"]:
        spec = params["methods"][method]
        if training_key(params, method) == run and spec.get("refine", "none") == "none":
            return variant_label(params, method)
    return run


def attention_figure_config(params: dict[str, Any]) -> dict[str, Any]:
    """An attention-figure job: the trained runs of the grid in legend order (that of their
    first variant) and each one's display label (:func:`run_label`)."""
    runs = list(dict.fromkeys(training_key(params, m) for m in params["grid"]["methods"]))
    return {
        "run_order": runs,
        "labels": {run: run_label(params, run) for run in sorted(runs)},
    }


def table_config(params: dict[str, Any]) -> dict[str, Any]:
    """The table job: the row order (the grid's methods), each dataset's kind (it picks the
    papers' numbers shown beside ours), each method's display label, the baseline it is
    compared with (where it names one), its trained run, and the intervals' bootstrap
    settings (params.yaml ``intervals``)."""
    methods = params["grid"]["methods"]
    return {
        "method_order": list(methods),
        "dataset_kinds": {d: params["datasets"][d]["kind"] for d in params["grid"]["datasets"]},
        "labels": {m: variant_label(params, m) for m in methods},
        "baselines": {
            m: params["methods"][m]["baseline"]
            for m in methods
            if params["methods"][m].get("baseline")
        },
        "training_runs": {m: training_key(params, m) for m in methods},
        "intervals": dict(params["intervals"]),
    }


# ---------------------------------------------------------------- by stage


def _run_meta(wildcards: Mapping[str, str]) -> dict[str, Any]:
    """Which run a metrics file belongs to; display labels reach only the report jobs."""
    return {
        "dataset": wildcards["dataset"],
        "method": wildcards["method"],
        "seed": int(wildcards["seed"]),
    }


JobBuilder = Callable[..., dict[str, Any]]

# {wsss command: its config from (params, the job's wildcards, extra)}: every job that takes
# ``--config`` but the dataset kinds' conversion stages (:func:`conversion_config`). The rules
# ask for a stage's config by command name (job_config("train")).
JOBS: dict[str, JobBuilder] = {
    "prepare-data": lambda p, w: prepare_config(p, w["dataset"]),
    "pretrain": lambda p, w: pretrain_config(p),
    "train": lambda p, w: training_config(p, w["dataset"], w["train"]),
    "entropy-weights": lambda p, w: entropy_config(p, w["dataset"], w["train"]),
    "attention-diagnostics": lambda p, w: attention_config(
        p, w["dataset"], w["train"], int(w["seed"])
    ),
    "cam-shards": lambda p, w: cam_shards_config(p, w["dataset"]),
    "cams": lambda p, w, variants: cam_group_config(p, w["dataset"], list(variants)),
    "evaluate": lambda p, w: evaluate_config(p, w["dataset"], _run_meta(w)),
    "evaluate-decoder": lambda p, w: decoder_config(p, w["dataset"], _run_meta(w)),
    "pseudo-labels": lambda p, w: pseudo_label_config(p, w["dataset"], _run_meta(w)),
    "segment": lambda p, w: segmentation_config(p, w["dataset"], _run_meta(w)),
    "gallery": lambda p, w: gallery_config(p, w["dataset"]),
    "plots": lambda p, w: plots_config(p),
    "attention-figure": lambda p, w: attention_figure_config(p),
    "table": lambda p, w: table_config(p),
}


def job_config(
    params: dict[str, Any], stage: str, wildcards: Mapping[str, str], **extra: Any
) -> dict[str, Any]:
    """The ``--config`` of one ``wsss <stage>`` job with these wildcards (``extra``: what a
    rule fixes besides its wildcards, e.g. the variants of a CAM rule). Raises KeyError
    naming the known stages for another name. A dataset kind's conversion stage (e.g.
    ``convert-coco``) gets :func:`conversion_config`."""
    if stage in JOBS:
        return JOBS[stage](params, wildcards, **extra)
    from wsss.data.kinds import conversion_stages

    conversions = conversion_stages().values()
    if stage in conversions:
        return conversion_config(params, wildcards["dataset"])
    known = ", ".join(sorted({*JOBS, *conversions}))
    raise KeyError(f"no job config for stage {stage!r}; known: {known}")


# ---------------------------------------------------------------- resources

# Rules whose jobs train data-parallel (wsss.distributed) when they ask for several GPUs.
DATA_PARALLEL_RULES = ("train", "segment")
# Resources every rule's jobs get from params (resources.<rule>, else resources.default).
RESOURCE_KEYS = ("gpu", "mem_mb", "runtime")


def rule_resources(params: dict[str, Any], rule: str) -> dict[str, Any]:
    """Resources of a rule family from params (``resources.<rule>`` over
    ``resources.default``). More than one GPU only for the data-parallel training rules; at
    least one thread per GPU process. Raises ValueError naming the key otherwise."""
    spec = {**params["resources"]["default"], **params["resources"].get(rule, {})}
    if spec["gpu"] > 1 and rule not in DATA_PARALLEL_RULES:
        raise ValueError(
            f"resources.{rule}.gpu: {spec['gpu']}, but the {rule} job uses one GPU; "
            f"only {' and '.join(DATA_PARALLEL_RULES)} train on several (give 0 or 1)"
        )
    if spec["gpu"] > 1 and spec["threads"] < spec["gpu"]:
        raise ValueError(
            f"resources.{rule}.threads: {spec['threads']} CPUs for {spec['gpu']} GPU "
            "processes; the job's threads are shared by its processes (give at least one each)"
        )
    return spec


def job_resources(
    params: dict[str, Any], rule: str | Callable[[Any], str], execution_block: str | None = None
) -> dict[str, Any]:
    """A rule's ``resources:``: gpu, mem_mb and runtime of its family (:func:`rule_resources`),
    ``nodes: 1`` for the data-parallel rules (torchrun --standalone keeps every GPU of a job
    on one node) and, with ``execution_block`` (``train`` or ``segmentation``), the
    execution knobs of each job (functions of its wildcards; :func:`execution`). ``rule``
    may be a function of the job's wildcards giving the family (a conversion job's is its
    kind's stage, :func:`conversion_family`); each resource is then one too."""
    if callable(rule):
        family = rule

        def of_job(key: str) -> Callable[[Any], Any]:
            return lambda wc: rule_resources(params, family(wc))[key]

        return {key: of_job(key) for key in RESOURCE_KEYS}
    spec = rule_resources(params, rule)
    resources: dict[str, Any] = {key: spec[key] for key in RESOURCE_KEYS}
    if rule in DATA_PARALLEL_RULES:
        resources["nodes"] = 1
    if execution_block is not None:

        def knob(name: str, cast: Callable[[Any], Any]) -> Callable[[Any], Any]:
            return lambda wc: cast(execution(params, wc.dataset, execution_block)[name])

        resources["device"] = knob("device", str)
        resources["workers"] = knob("workers", int)
        resources["cache_images"] = knob("cache_images", int)
    return resources
