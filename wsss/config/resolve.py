"""Resolving one run's settings from params: the merge order of the global blocks, a
dataset's ``overrides`` and a variant's, which variants share a trained run, the methods a
variant builds, the dataset block a job reads and the per-run CAM rule names."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from wsss.config.schema import ParamsError, _schema, deep_merge


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
    if _is_default_recipe(recipe):
        return recipe[0]
    # Variants with equal recipes share the run, named after the first of them.
    return next(v for v in params["methods"] if _training_recipe(params, v) == recipe)


def _training_recipe(params: dict[str, Any], variant: str) -> tuple[str, dict, dict]:
    """What decides a variant's trained model, besides the dataset and the seed."""
    spec = params["methods"][variant]
    overrides = {block: v for block, v in (spec.get("overrides") or {}).items() if v}
    return spec["train"], spec.get("train_params") or {}, overrides


def _is_default_recipe(recipe: tuple[str, dict, dict]) -> bool:
    """A recipe with no ``train_params`` and no ``overrides``: its run is named after the
    training method."""
    return recipe == (recipe[0], {}, {})


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


def _resolved_method(params: dict[str, Any], variant: str) -> tuple[dict, dict]:
    """(training method, refiner) as ``{"name", "params"}`` with every default filled in."""
    method, refiner = build_variant_methods(params, variant)
    spec = variant_spec(params, variant)
    return (
        {"name": spec["train"], "params": method.params},
        {"name": spec["refine"], "params": refiner.params},
    )


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


def dataset_config(
    params: dict[str, Any], dataset: str, *keys: str, full: bool = False
) -> dict[str, Any]:
    """The dataset block a job reads, schema defaults filled in: how to open it (kind, root,
    mask directory, label source) and the other ``keys`` it uses (its splits); with
    ``full``, the whole block."""
    block = dict(params["datasets"][dataset])
    block.pop("overrides", None)
    # Only the conversion job (convert_data) reads the raw files; jobs read the converted root.
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


def variant_label(params: dict[str, Any], variant: str) -> str:
    from wsss.methods import Variant

    spec = variant_spec(params, variant)
    return Variant(
        variant, spec["train"], spec["refine"], spec["cam"], spec["label"]
    ).display_label()


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
