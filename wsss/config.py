"""Loading and validating ``params.yaml``, and resolving one job's settings from it.

``params.yaml`` is the single source of truth. Snakemake validates it through
:func:`validate_params` before any job starts; each rule then passes a job the
resolved block it needs (:func:`training_config`, :func:`cam_config`, ...), so
Snakemake's params trigger reruns exactly the jobs whose settings changed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "params.schema.yaml"


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
            raise ParamsError(f"{file}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ParamsError(
                f"{file}: expected a mapping at the top level, got {type(data).__name__}"
            )
        params = deep_merge(params, data)
    validate_params(params, source=str(path))
    return params


def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


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
    problems.extend(_check_entropy_baseline(params))
    thresholds = params["evaluate"]["thresholds"]
    if thresholds["start"] > thresholds["stop"]:
        problems.append("evaluate.thresholds: start must not exceed stop")
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
    # Stage-2 settings the schema cannot check (e.g. PAR and CRF both switched on).
    from wsss.cams.pseudo_labels import PseudoLabelSettings

    for dataset in params["grid"]["datasets"]:
        try:
            PseudoLabelSettings.from_dict(dataset_block(params, dataset, "pseudo_labels"))
        except ValueError as err:
            raise ParamsError(f"{source} is invalid:\n  datasets.{dataset}: {err}") from err


def _check_entropy_baseline(params: dict[str, Any]) -> list[str]:
    """``entropy_weights: baseline`` needs a variant that trains the MCTformer-V2 run."""
    from wsss.methods.entropy_weights import (
        ENTROPY_BASELINE_METHOD,
        ENTROPY_BASELINE_RUN,
        ENTROPY_FROM_BASELINE,
        uses_baseline_entropy,
    )

    users = [
        v
        for v in params["methods"]
        if uses_baseline_entropy(variant_spec(params, v)["train_params"])
    ]
    if not users:
        return []
    baseline = next(
        (v for v in params["methods"] if training_key(params, v) == ENTROPY_BASELINE_RUN), None
    )
    if baseline is not None and params["methods"][baseline]["train"] == ENTROPY_BASELINE_METHOD:
        return []
    found = (
        "no variant under methods trains it"
        if baseline is None
        else f"methods.{baseline} trains it with {params['methods'][baseline]['train']!r}"
    )
    problems = []
    for variant in users:
        spec = params["methods"][variant]
        own = (spec.get("train_params") or {}).get("entropy_weights") == ENTROPY_FROM_BASELINE
        key = (
            f"methods.{variant}.train_params.entropy_weights"
            if own
            else f"method_params.{spec['train']}.entropy_weights"
        )
        problem = (
            f"{key}: {ENTROPY_FROM_BASELINE!r} computes the weights from the trained "
            f"{ENTROPY_BASELINE_METHOD} run {ENTROPY_BASELINE_RUN!r} of the same dataset and seed, "
            f"but {found}; add a variant with train: {ENTROPY_BASELINE_METHOD} and no train_params "
            "or overrides (as methods.mctformer_v2 in params.yaml), or give a file, a list or null"
        )
        if problem not in problems:
            problems.append(problem)
    return problems


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


def needs_entropy_weights(params: dict[str, Any], key: str) -> bool:
    """Whether the training run ``key`` reads the entropy_weights rule's output
    (its method params say ``entropy_weights: baseline``)."""
    from wsss.methods.entropy_weights import uses_baseline_entropy

    return uses_baseline_entropy(
        variant_spec(params, training_variant(params, key))["train_params"]
    )


def entropy_baseline_run() -> str:
    """The training run (key) whose trained model the entropy weights are computed from."""
    from wsss.methods.entropy_weights import ENTROPY_BASELINE_RUN

    return ENTROPY_BASELINE_RUN


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


def training_config(params: dict[str, Any], dataset: str, key: str) -> dict[str, Any]:
    """Everything a training job needs (what its rule passes on the command line)."""
    variant = training_variant(params, key)
    spec = variant_spec(params, variant)
    return {
        "dataset": dataset_config(params, dataset),
        "model": variant_block(params, dataset, variant, "model"),
        "train": variant_block(params, dataset, variant, "train"),
        "method": {"name": spec["train"], "params": spec["train_params"]},
    }


def entropy_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    """An entropy-weights job: the dataset (its train_split is read), and the device and
    loader settings of the baseline run it reads. The image size is the trained model's."""
    variant = training_variant(params, entropy_baseline_run())
    train = variant_block(params, dataset, variant, "train")
    return {
        "dataset": dataset_config(params, dataset),
        "device": train["device"],
        "batch_size": train["batch_size"],
        "num_workers": train["num_workers"],
    }


def cam_config(params: dict[str, Any], dataset: str, variant: str) -> dict[str, Any]:
    spec = variant_spec(params, variant)
    return {
        "dataset": dataset_config(params, dataset),
        "model": variant_block(params, dataset, variant, "model"),
        "train": {"device": variant_block(params, dataset, variant, "train")["device"]},
        "cam": deep_merge(dataset_block(params, dataset, "cam"), spec["cam"]),
        "method": {"name": spec["train"], "params": spec["train_params"]},
        "refiner": {"name": spec["refine"], "params": spec["refine_params"]},
    }


def pseudo_label_config(
    params: dict[str, Any], dataset: str, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A pseudo-label job: the dataset and the ``pseudo_labels`` block (with the dataset's overrides)."""
    config = {
        "dataset": dataset_config(params, dataset),
        "pseudo_labels": dataset_block(params, dataset, "pseudo_labels"),
    }
    if meta is not None:
        config["meta"] = meta
    return config


def segmentation_config(
    params: dict[str, Any], dataset: str, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A stage-2 job: the ``segmentation`` block, the inference scales and the device."""
    config = {
        "dataset": dataset_config(params, dataset),
        "segmentation": dataset_block(params, dataset, "segmentation"),
        "scales": params["evaluate"]["seg_scales"],
        "device": dataset_block(params, dataset, "train")["device"],
    }
    if meta is not None:
        config["meta"] = meta
    return config


def dataset_config(params: dict[str, Any], dataset: str) -> dict[str, Any]:
    block = dict(params["datasets"][dataset])
    block.pop("overrides", None)
    # Only the convert_coco rule reads the raw COCO files; jobs read the converted root.
    block.pop("source", None)
    block["name"] = dataset
    return block


def variant_label(params: dict[str, Any], variant: str) -> str:
    from wsss.methods import Variant

    spec = variant_spec(params, variant)
    return Variant(
        variant, spec["train"], spec["refine"], spec["cam"], spec["label"]
    ).display_label()
