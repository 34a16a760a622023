"""Loading and validating ``params.yaml``, and resolving one job's settings from it.

``params.yaml`` is the single source of truth. Snakemake validates it through
:func:`validate_params` before any job starts; each rule then passes a job the
resolved block it needs (:func:`training_config`, :func:`cam_config`, ...), so
Snakemake's params trigger reruns exactly the jobs whose settings changed.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# Shipped inside the package, so a non-editable install validates params too.
SCHEMA_RESOURCE = ("wsss", "resources/params.schema.yaml")

# Keys of the train / segmentation blocks that say how a job runs, not what it computes
# (wsss.runtime.Execution): the rules pass them outside the jobs' params.
EXECUTION_KEYS = ("device", "num_workers", "cache_images")
# Fine-tuning options at the value that turns them off (the plain recipe). A training job's
# params leave them out at that value, so adding or spelling them out reruns no existing run
# and its model.pt (which stores the config) stays byte-identical.
TRAIN_OFF_DEFAULTS = {"layer_decay": 1.0, "freeze_blocks": 0}


class ParamsError(ValueError):
    """A malformed params file; the message names the key and what is expected."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base`` (dicts recursively, everything else replaced)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_params(path: str | Path, *overrides: str | Path) -> dict[str, Any]:
    """Read a params file (plus override files deep-merged on top, like ``--configfile``) and validate."""
    params: dict[str, Any] = {}
    for file in (path, *overrides):
        file = Path(file)
        if not file.is_file():
            raise ParamsError(f"{file}: params file not found")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ParamsError(_yaml_error(file, err)) from err
        if not isinstance(data, dict):
            raise ParamsError(
                f"{file}: expected a mapping at the top level, got {type(data).__name__}"
            )
        params = deep_merge(params, data)
    validate_params(params, source=str(path))
    return params


def results_dir(params: dict[str, Any]) -> str:
    """The folder every job writes under: ``results_dir``, else the schema default (``results``)."""
    return params.get("results_dir", _schema()["properties"]["results_dir"]["default"])


def _yaml_error(file: Path, err: Exception) -> str:
    """``<file>:<line>:<column>: not valid YAML: <problem>`` (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return f"{file}: not valid YAML: {problem}"
    context = getattr(err, "context", None)
    where = f" ({context})" if context else ""
    return f"{file}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}{where}"


@cache
def _schema() -> dict[str, Any]:
    package, name = SCHEMA_RESOURCE
    return yaml.safe_load(resources.files(package).joinpath(name).read_text())


def _format_schema_error(error: Any) -> str:
    import jsonschema

    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        key = ".".join(filter(None, [path, missing[0] if missing else ""]))
        return f"{key}: missing required key"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = ".".join(filter(None, [path, extra[0] if extra else ""]))
        known = sorted(error.schema.get("properties", {}))
        return f"{key}: unknown key (known here: {', '.join(known)})"
    if error.validator == "oneOf" and "description" in error.schema:
        # Each alternative fails on its own terms ("'best' was expected" for 1.5); the
        # description says what is accepted, every alternative together.
        return f"{path}: {error.instance!r} is not valid; expected {error.schema['description']}"
    if error.context:  # oneOf/allOf: report the most specific sub-error
        best = jsonschema.exceptions.best_match(error.context)
        return _format_schema_error(best) if best.absolute_path else f"{path}: {best.message}"
    return f"{path or '<top level>'}: {error.message}"


def validate_params(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Check ``params`` against the JSON schema and the registries; raise :class:`ParamsError`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_format_schema_error(e) for e in errors[:10])
        raise ParamsError(f"{source} is invalid:\n  {lines}")
    _check_names(params, source)


def _check_names(params: dict[str, Any], source: str) -> None:
    from wsss.methods import CAM_REFINERS, TRAINING_METHODS

    problems = []
    for dataset in params["grid"]["datasets"]:
        if dataset not in params["datasets"]:
            problems.append(
                f"grid.datasets: {dataset!r} is not defined under datasets "
                f"(defined: {', '.join(sorted(params['datasets']))})"
            )
    for variant in params["grid"]["methods"]:
        if variant not in params["methods"]:
            problems.append(
                f"grid.methods: unknown method {variant!r} (defined under methods: "
                f"{', '.join(sorted(params['methods']))})"
            )
    for variant, spec in params["methods"].items():
        baseline = spec.get("baseline")
        if baseline is not None and (baseline == variant or baseline not in params["methods"]):
            problems.append(
                f"methods.{variant}.baseline: {baseline!r} must name another variant under "
                f"methods (defined: {', '.join(sorted(params['methods']))})"
            )
        if spec["train"] not in TRAINING_METHODS:
            problems.append(
                f"methods.{variant}.train: unknown training method {spec['train']!r} "
                f"(registered: {', '.join(TRAINING_METHODS.names())})"
            )
        refine = spec.get("refine", "none")
        if refine not in CAM_REFINERS:
            problems.append(
                f"methods.{variant}.refine: unknown CAM refiner {refine!r} "
                f"(registered: {', '.join(CAM_REFINERS.names())})"
            )
        if "shard_size" in (spec.get("cam") or {}):
            problems.append(
                f"methods.{variant}.cam.shard_size: the shards of a split are shared by every "
                "method; set cam.shard_size (or datasets.<name>.overrides.cam.shard_size)"
            )
    for name in params["method_params"]:
        if name not in TRAINING_METHODS and name not in CAM_REFINERS:
            known = sorted(set(TRAINING_METHODS.names()) | set(CAM_REFINERS.names()))
            problems.append(
                f"method_params.{name}: no registered method of that name (known: {', '.join(known)})"
            )
    runs: dict[str, tuple] = {}
    for variant in params["methods"]:
        key, recipe = training_key(params, variant), _training_recipe(params, variant)
        if runs.setdefault(key, recipe) != recipe:
            problems.append(
                f"methods.{variant}: its training run {key!r} is also the run of a variant "
                "with another training method, train_params or overrides; rename one of them"
            )
    problems.extend(_check_upstream(params))
    thresholds = params["evaluate"]["thresholds"]
    if thresholds["start"] > thresholds["stop"]:
        problems.append("evaluate.thresholds: start must not exceed stop")
    problems.extend(_check_ranges(params))
    problems.extend(_check_generators(params))
    if problems:
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    for dataset in params["grid"]["datasets"]:
        spec = params["datasets"][dataset]
        if spec["kind"] == "coco":
            _check_coco_source(dataset, spec, source)
        elif spec["kind"] != "synthetic":  # synthetic data is generated by the pipeline
            from wsss.data.voc import VOCLayout

            try:
                VOCLayout.locate(spec["root"], mask_dir=spec.get("mask_dir", "auto"))
            except FileNotFoundError as err:
                raise ParamsError(
                    f"{source} is invalid:\n  datasets.{dataset}.root: {err}"
                ) from err
    # Constructing the methods checks their parameter names too.
    for variant in params["methods"]:
        try:
            build_variant_methods(params, variant)
        except ValueError as err:
            raise ParamsError(f"{source} is invalid:\n  methods.{variant}: {err}") from err
    # Block indices against the depth of the model each run builds.
    depth_problems = _check_blocks(params)
    if depth_problems:
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(depth_problems))
    # Stage-2 settings the schema cannot check (e.g. PAR and CRF both switched on).
    from wsss.stages.pseudo_labels import PseudoLabelSettings

    for dataset in params["grid"]["datasets"]:
        try:
            PseudoLabelSettings.from_dict(dataset_block(params, dataset, "pseudo_labels"))
        except ValueError as err:
            raise ParamsError(f"{source} is invalid:\n  datasets.{dataset}: {err}") from err


def _check_upstream(params: dict[str, Any]) -> list[str]:
    """Every upstream run a method declares (:class:`wsss.methods.Upstream`) is a variant of
    ``methods`` trained with the declared training method."""
    problems = []
    for variant in params["methods"]:
        try:
            method, _ = build_variant_methods(params, variant)
        except (ValueError, KeyError):
            continue  # an unknown name or parameter: reported with its key elsewhere
        for upstream in method.upstream():
            spec = params["methods"].get(upstream.run)
            if spec is not None and spec["train"] == upstream.train:
                continue
            found = (
                "no variant of that name is under methods"
                if spec is None
                else f"methods.{upstream.run} trains it with {spec['train']!r}"
            )
            problem = (
                f"methods.{variant}: its training method {method.name!r} reads the "
                f"{upstream.stage} of the trained run {upstream.run!r} ({upstream.param}), which "
                f"must train with {upstream.train!r}, but {found}; add that variant or change "
                f"method_params.{method.name}.{upstream.param}"
            )
            if problem not in problems:
                problems.append(problem)
    return problems


# [low, high] pairs, as (block, key): checked in the global block and in every override.
ORDERED_RANGES = (("train", "crop_scale"), ("segmentation", "scale_range"))


def _check_ranges(params: dict[str, Any]) -> list[str]:
    """Every ``[low, high]`` pair (:data:`ORDERED_RANGES`) has ``low <= high``, wherever it is
    set: the global block, a dataset's ``overrides`` or a variant's ``overrides``."""
    places: list[tuple[str, dict[str, Any]]] = [("", params)]
    for name, spec in params["datasets"].items():
        places.append((f"datasets.{name}.overrides.", spec.get("overrides") or {}))
    for name, spec in params["methods"].items():
        places.append((f"methods.{name}.overrides.", spec.get("overrides") or {}))
    problems = []
    for prefix, blocks in places:
        for block, key in ORDERED_RANGES:
            value = (blocks.get(block) or {}).get(key)
            if isinstance(value, list) and len(value) == 2 and value[0] > value[1]:
                problems.append(
                    f"{prefix}{block}.{key}: {value} is not an ordered range; expected "
                    f"[low, high] with low <= high, e.g. {sorted(value)}"
                )
    return problems


def _check_generators(params: dict[str, Any]) -> list[str]:
    """A synthetic dataset's ``generator`` block builds its generator config (unknown keys and
    bad values are named); other kinds have no generator."""
    problems = []
    for name, spec in params["datasets"].items():
        if "generator" not in spec:
            continue
        if spec["kind"] != "synthetic":
            problems.append(
                f"datasets.{name}.generator: only a synthetic dataset has a generator "
                f"(this one is kind {spec['kind']!r}); remove the block"
            )
            continue
        from wsss.data.synthetic import SyntheticConfig

        try:
            SyntheticConfig.from_dict(spec["generator"])
        except (ValueError, TypeError) as err:
            message = str(err).removeprefix("synthetic generator: ")
            problems.append(f"datasets.{name}.generator: {message}")
    return problems


# Method parameters that name blocks ("all", the last k, or a list of indices), by the
# convention every registered method follows; keywords such as AReAM's "deep" are the
# method's own and are checked by its ``blocks(depth)`` when it has one.
BLOCK_PARAMS = (
    "layers",
    "blocks",
    "cluster_blocks",
    "pseudo_class_layers",
    "loss_layers",
    "refine_layers",
)


@cache
def _backbone_depth(backbone: str, overrides_json: str) -> int | None:
    """Blocks of the timm ViT ``backbone`` built with ``overrides`` (built on the meta
    device: no memory, no weights); None when timm cannot build it (reported elsewhere)."""
    import json

    import timm
    import torch

    overrides = json.loads(overrides_json)
    if "depth" in overrides:
        return overrides["depth"]
    try:
        with torch.device("meta"):
            model = timm.create_model(backbone, pretrained=False, num_classes=0, **overrides)
    except Exception:  # an unknown name or a bad kwarg: the model stage names it
        return None
    blocks = getattr(model, "blocks", None)
    return len(blocks) if blocks is not None else None


def model_depth(model: dict[str, Any]) -> int | None:
    """Transformer blocks of the model a ``model`` block builds (``overrides.depth``, else
    the timm backbone's own depth); None when it cannot be told."""
    import json

    overrides = model.get("overrides") or {}
    if isinstance(overrides.get("depth"), int):
        return overrides["depth"]
    return _backbone_depth(model["backbone"], json.dumps(overrides, sort_keys=True, default=str))


def _check_blocks(params: dict[str, Any]) -> list[str]:
    """Every block selection a grid run makes fits its model's depth: ``cam.class_layers``
    and ``cam.affinity_layers`` (global, dataset and variant CAM recipes) and the method
    parameters that name blocks (:data:`BLOCK_PARAMS`, and AReAM-style ``blocks(depth)``).
    One line per offending key, naming the runs it breaks."""
    from wsss.models.attention import select_blocks

    found: dict[str, list[str]] = {}  # problem -> the runs ("variant on dataset") it breaks

    def check(key: str, spec: Any, depth: int, run: str) -> None:
        if isinstance(spec, str) and spec != "all":
            return  # a method keyword ("deep", "shallow"): the method's own check below
        try:
            select_blocks(depth, spec)
        except (ValueError, TypeError) as err:
            found.setdefault(f"{key}: {spec!r} does not fit a {depth}-block model ({err})", [])
            found[f"{key}: {spec!r} does not fit a {depth}-block model ({err})"].append(run)

    for dataset in params["grid"]["datasets"]:
        cam_block = dataset_block(params, dataset, "cam")
        cam_overrides = (params["datasets"][dataset].get("overrides") or {}).get("cam") or {}
        for variant in params["grid"]["methods"]:
            if variant not in params["methods"]:
                continue  # reported by _check_names
            depth = model_depth(variant_block(params, dataset, variant, "model"))
            if depth is None or depth < 1:
                continue  # an unbuildable backbone or depth 0: reported elsewhere
            run = f"{variant} on {dataset}"
            spec = variant_spec(params, variant)
            raw = params["methods"][variant]
            for key in ("class_layers", "affinity_layers"):
                if key in spec["cam"]:
                    check(f"methods.{variant}.cam.{key}", spec["cam"][key], depth, run)
                elif key in cam_overrides:
                    check(f"datasets.{dataset}.overrides.cam.{key}", cam_block[key], depth, run)
                else:
                    check(f"cam.{key}", cam_block[key], depth, run)
            try:
                method, refiner = build_variant_methods(params, variant)
            except (ValueError, KeyError):
                continue  # reported with its key elsewhere
            for built, name, own in (
                (method, spec["train"], "train_params"),
                (refiner, spec["refine"], "refine_params"),
            ):
                for key in BLOCK_PARAMS:
                    if key in built.params:
                        where = (
                            f"methods.{variant}.{own}.{key}"
                            if key in (raw.get(own) or {})
                            else f"method_params.{name}.{key}"
                        )
                        check(where, built.params[key], depth, run)
                if callable(getattr(type(built), "blocks", None)):
                    try:
                        built.blocks(depth)
                    except ValueError as err:
                        found.setdefault(str(err), []).append(run)
    return [f"{problem} (runs: {', '.join(runs)})" for problem, runs in found.items()]


def _check_coco_source(name: str, spec: dict[str, Any], source: str) -> None:
    """A coco dataset needs its raw files, unless its root already holds the conversion."""
    from wsss.data.coco import MANIFEST, dataset_conversion

    if (Path(spec["root"]).expanduser() / MANIFEST).is_file():
        return
    try:
        problems = dataset_conversion({**spec, "name": name}).missing_inputs()
    except ValueError as err:
        raise ParamsError(f"{source} is invalid:\n  {err}") from err
    if problems:
        raise ParamsError(
            f"{source} is invalid:\n  datasets.{name}.source: {spec['root']} holds no converted "
            "COCO layout, and its raw inputs are missing:\n    " + "\n    ".join(problems)
        )


# ---------------------------------------------------------------- resolution


def dataset_block(params: dict[str, Any], dataset: str, block: str) -> dict[str, Any]:
    """The global ``model``/``train``/``cam`` block with the dataset's overrides merged in."""
    overrides = params["datasets"][dataset].get("overrides", {}).get(block, {})
    return deep_merge(params[block], overrides)


def variant_spec(params: dict[str, Any], variant: str) -> dict[str, Any]:
    spec = params["methods"][variant]
    train, refine = spec["train"], spec.get("refine", "none")
    return {
        "name": variant,
        "train": train,
        "refine": refine,
        "label": spec.get("label"),
        "cam": spec.get("cam", {}),
        "train_params": deep_merge(
            params["method_params"].get(train, {}), spec.get("train_params", {})
        ),
        "refine_params": deep_merge(
            params["method_params"].get(refine, {}), spec.get("refine_params", {})
        ),
    }


def training_key(params: dict[str, Any], variant: str) -> str:
    """Name of the training run a variant uses.

    Variants that only differ by refiner share one trained model (refinement
    must not retrain); a variant with its own ``train_params`` or ``overrides``
    (of the model/train blocks) trains its own, shared with the variants whose
    training method, ``train_params`` and ``overrides`` are all equal to its own.
    """
    recipe = _training_recipe(params, variant)
    if recipe == (recipe[0], {}, {}):
        return recipe[0]
    # Variants with equal recipes share the run, named after the first of them.
    return next(v for v in params["methods"] if _training_recipe(params, v) == recipe)


def _training_recipe(params: dict[str, Any], variant: str) -> tuple[str, dict, dict]:
    """What decides a variant's trained model, besides the dataset and the seed."""
    spec = params["methods"][variant]
    overrides = {block: v for block, v in (spec.get("overrides") or {}).items() if v}
    return spec["train"], spec.get("train_params") or {}, overrides


def training_variant(params: dict[str, Any], key: str) -> str:
    """A variant that trains under ``key`` (inverse of :func:`training_key`)."""
    for variant in params["methods"]:
        if training_key(params, variant) == key:
            return variant
    raise ParamsError(f"no method in params uses the training run {key!r}")


def upstream_inputs(params: dict[str, Any], key: str) -> list[tuple[str, str, str]]:
    """``(param, stage, run key)`` for each artifact the training run ``key`` reads from
    another trained run (its method's :meth:`~wsss.methods.TrainingMethod.upstream`)."""
    method, _ = build_variant_methods(params, training_variant(params, key))
    return [(u.param, u.stage, training_key(params, u.run)) for u in method.upstream()]


def build_variant_methods(params: dict[str, Any], variant: str):
    from wsss.methods import CAM_REFINERS, TRAINING_METHODS

    spec = variant_spec(params, variant)
    method = TRAINING_METHODS.get(spec["train"])(spec["train_params"])
    refiner = CAM_REFINERS.get(spec["refine"])(spec["refine_params"])
    return method, refiner


def variant_block(params: dict[str, Any], dataset: str, variant: str, block: str) -> dict[str, Any]:
    """The ``model``/``train`` block for one variant on one dataset.

    Merge order: the global block, the dataset's ``overrides``, then the
    variant's ``overrides`` (a method's own recipe, e.g. ClusterCAM's 80 epochs
    at 448 px, wins over the dataset's common one).
    """
    overrides = params["methods"][variant].get("overrides", {}).get(block, {})
    return deep_merge(dataset_block(params, dataset, block), overrides)


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


def _resolved_method(params: dict[str, Any], variant: str) -> tuple[dict, dict]:
    """(training method, refiner) as ``{"name", "params"}`` with every default filled in."""
    method, refiner = build_variant_methods(params, variant)
    spec = variant_spec(params, variant)
    return (
        {"name": spec["train"], "params": method.params},
        {"name": spec["refine"], "params": refiner.params},
    )


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


def cam_groups(params: dict[str, Any]) -> dict[str, list[str]]:
    """{training run: the grid variants whose CAMs come from it}, in grid order: one CAM job
    per trained model and split writes all of them (rules ``cams_<run>``)."""
    groups: dict[str, list[str]] = {}
    for variant in params["grid"]["methods"]:
        groups.setdefault(training_key(params, variant), []).append(variant)
    return groups


def cam_rule_name(prefix: str, run: str) -> str:
    """The Snakemake rule of a trained run's CAM jobs: ``<prefix>_<run>`` (prefix ``cams`` or
    ``cams_shard``), the run's name made an identifier, as rule names must be."""
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', run)}"


def rule_family(rule: str) -> str:
    """A rule's name with the per-run CAM rules (:func:`cam_rule_name`) folded into
    ``cams`` / ``cams_shard``: the key of their resources in params.yaml, and one row
    when a run's jobs are counted or timed per rule."""
    if rule.startswith("cams_shard_"):
        return "cams_shard"
    return "cams" if rule.startswith("cams_") else rule


def shard_size(params: dict[str, Any], dataset: str) -> int:
    """Images per CAM shard of the dataset's splits; 0 (or null in params) = no sharding."""
    return int(dataset_block(params, dataset, "cam").get("shard_size") or 0)


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


def dataset_config(
    params: dict[str, Any], dataset: str, *keys: str, full: bool = False
) -> dict[str, Any]:
    """The dataset block a job reads, schema defaults filled in: how to open it (kind, root,
    mask directory, label source) and the other ``keys`` it uses (its splits); with
    ``full``, the whole block."""
    block = dict(params["datasets"][dataset])
    block.pop("overrides", None)
    # Only the convert_coco rule reads the raw COCO files; jobs read the converted root.
    block.pop("source", None)
    properties = _schema()["properties"]["datasets"]["additionalProperties"]["properties"]
    for key, prop in properties.items():
        if "default" in prop:
            block.setdefault(key, prop["default"])
    if not full:
        keep = {"kind", "root", "mask_dir", "label_source", *keys}
        block = {k: v for k, v in block.items() if k in keep}
    block["name"] = dataset
    return block


def prepare_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A prepare-data job: the generator (synthetic) and the splits the classifier stages
    read; seg_split is checked by stage 2, which alone reads it."""
    return dataset_config(params, dataset, "train_split", "eval_split", "generator")


def variant_label(params: dict[str, Any], variant: str) -> str:
    from wsss.methods import Variant

    spec = variant_spec(params, variant)
    return Variant(
        variant, spec["train"], spec["refine"], spec["cam"], spec["label"]
    ).display_label()
