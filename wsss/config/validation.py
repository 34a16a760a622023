"""Checking a params mapping before any job runs: the schema, then what a schema cannot
check (names in the registries, cross-key limits, block indices against the model's depth,
dataset files). Every problem is a :class:`~wsss.config.schema.ParamsError` naming its key."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsss.config.resolve import (
    _is_default_recipe,
    _training_recipe,
    build_variant_methods,
    dataset_block,
    model_depth,
    training_key,
    variant_block,
    variant_spec,
)
from wsss.config.schema import ParamsError, normalise_params, params_schema
from wsss.data.kinds import kind_of


@dataclass(frozen=True)
class ParamsSources:
    """Which file set each key of a merged params mapping, so an error names the file the
    bad value came from (an override file, ``--config``) rather than always params.yaml.

    ``keys``: dotted key -> the last layer that wrote it (deep-merge order); a key no layer
    wrote (a schema default, a missing key) belongs to ``default``.
    """

    default: str = "params.yaml"
    keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, layers: Sequence[tuple[str, Any]]) -> ParamsSources:
        """``layers``: (name, mapping) in merge order, e.g. params.yaml then each override."""
        keys: dict[str, str] = {}

        def walk(prefix: str, value: Any, name: str) -> None:
            for key, item in value.items():
                dotted = f"{prefix}{key}"
                keys[dotted] = name
                if isinstance(item, dict):
                    walk(f"{dotted}.", item, name)
                else:  # replaced whole: what an earlier layer set below it is gone
                    for stale in [k for k in keys if k.startswith(f"{dotted}.")]:
                        del keys[stale]

        for name, mapping in layers:
            if isinstance(mapping, dict):
                walk("", mapping, name)
        return cls(default=layers[0][0] if layers else "params.yaml", keys=keys)

    def of_key(self, key: str) -> str:
        """The file that set ``key`` (dotted), or the nearest enclosing key that a file set."""
        while key:
            if key in self.keys:
                return self.keys[key]
            key = key.rpartition(".")[0]
        return self.default

    def overridden(self, key: str) -> bool:
        """Whether a file after ``default`` (an override) wrote ``key`` (dotted) itself."""
        return self.keys.get(key, self.default) != self.default

    def _file_of(self, line: str) -> str:
        """The file of a problem line's key; for a check across keys (``cls_epochs`` against
        ``train.epochs``) whose leading key is params.yaml's, the file that set another key
        the line names, since that value is the one an override changed."""
        file = self.of_key(_problem_key(line))
        if file != self.default:
            return file
        for token in _DOTTED.findall(line):
            if self.overridden(token):
                return self.keys[token]
        return file

    def error(self, problems: Sequence[str]) -> ParamsError:
        """One error for ``problems`` (lines ``<dotted key>: <what is wrong>``), headed by the
        file that supplied the bad keys, or by each line's file when there are several."""
        files = [self._file_of(line) for line in problems]
        if len(set(files)) == 1:
            return ParamsError(f"{files[0]} is invalid:\n  " + "\n  ".join(problems))
        lines = [f"{line} (from {file})" for line, file in zip(problems, files, strict=True)]
        return ParamsError(
            f"{', '.join(dict.fromkeys(files))} are invalid:\n  " + "\n  ".join(lines)
        )


_KEY = re.compile(r"[^\s:]+(?=: )")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+")


def _problem_key(line: str) -> str:
    """The dotted key a problem line starts with ('' when it names none)."""
    match = _KEY.match(line)
    return match.group(0) if match else ""


def validate_params(params: dict[str, Any], source: str | ParamsSources = "params.yaml") -> None:
    """Check ``params`` against the JSON schema and the registries; raise :class:`ParamsError`
    naming the key, and the file that set it (``source``: the file's name, or a
    :class:`ParamsSources` of the files merged into ``params``).
    Numbers written as strings (``1e-06`` from ``dvc exp run -S``) are first read as numbers
    where the schema types a number, in place (:func:`~wsss.config.schema.normalise_params`)."""
    import jsonschema

    sources = source if isinstance(source, ParamsSources) else ParamsSources(default=source)
    normalise_params(params)
    validator = jsonschema.Draft202012Validator(params_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise sources.error([_format_schema_error(e) for e in errors[:10]])
    _check_names(params, sources)


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


# Names of grid variants and datasets: they become folder names, Snakemake wildcard values and
# rule names, and are written unquoted into shell commands (a "+", "()" or a space breaks that).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SAFE_NAME_TEXT = "a letter or digit, then letters, digits, _ . or - (e.g. aream_v2)"
SAFE_PATH = re.compile(r"[A-Za-z0-9_.~/-]+")


def _check_names(params: dict[str, Any], sources: ParamsSources) -> None:
    from wsss.methods import CAM_REFINERS, TRAINING_METHODS

    problems = [
        f"{key}: {name!r} is not a safe name; expected {SAFE_NAME_TEXT} (it becomes part of "
        "file paths, rule names and shell commands)"
        for key, names in (
            ("methods", params["methods"]),
            ("datasets", params["datasets"]),
            ("grid.methods", params["grid"]["methods"]),
            ("grid.datasets", params["grid"]["datasets"]),
        )
        for name in names
        if not SAFE_NAME.fullmatch(str(name))
    ]
    folder = params.get("results_dir")
    if folder is not None and not SAFE_PATH.fullmatch(str(folder)):
        problems.append(
            f"results_dir: {folder!r} is not a safe path; expected letters, digits and _ . - / "
            "(no spaces, quotes or shell characters: it is written unquoted into commands)"
        )
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
    problems.extend(_check_shared_runs(params, sources))
    problems.extend(_check_upstream(params))
    thresholds = params["evaluate"]["thresholds"]
    if thresholds["start"] > thresholds["stop"]:
        problems.append("evaluate.thresholds: start must not exceed stop")
    problems.extend(_check_ranges(params))
    problems.extend(_check_datasets(params))
    if problems:
        raise sources.error(problems)
    # The files each grid dataset needs before any job starts, as its kind declares them
    # (a root in the VOC layout; raw files to convert; nothing for a generated one).
    for dataset in params["grid"]["datasets"]:
        spec = params["datasets"][dataset]
        missing = kind_of({**spec, "name": dataset}).check_inputs(dataset, spec)
        if missing:
            raise sources.error(missing)
    # Constructing the methods checks their parameter names too.
    for variant in params["methods"]:
        try:
            build_variant_methods(params, variant)
        except ValueError as err:
            raise sources.error([_method_problem(params, variant, str(err))]) from err
    # Block indices against the depth of the model each run builds; each method's limits
    # against the train block of each run (e.g. a start epoch within train.epochs).
    depth_problems = _check_blocks(params) + _check_limits(params)
    if depth_problems:
        raise sources.error(depth_problems)
    # Stage-2 settings the schema cannot check (e.g. PAR and CRF both switched on).
    from wsss.segmentation.pseudo_labels import PseudoLabelSettings

    for dataset in params["grid"]["datasets"]:
        try:
            PseudoLabelSettings.from_dict(dataset_block(params, dataset, "pseudo_labels"))
        except ValueError as err:
            raise sources.error([f"datasets.{dataset}: {err}"]) from err


def _method_problem(params: dict[str, Any], variant: str, text: str) -> str:
    """The problem line for a method's own error ``text`` when building ``variant``.

    A method names the key it rejects in its merged parameters,
    ``method_params.<method>[.<key>]``; the line leads with that key, so the error names
    the file that set it, not the one that declared the variant. Where the key came from
    the variant's own ``train_params``/``refine_params``, the line names that instead
    (``methods.<variant>.train_params.<key>``). An error naming no such key is put under
    ``methods.<variant>``."""
    raw = params["methods"][variant]
    key = _problem_key(text)
    for block, name in (("train_params", raw["train"]), ("refine_params", raw.get("refine"))):
        prefix, own = f"method_params.{name}", raw.get(block) or {}
        if not own or not (key == prefix or key.startswith(f"{prefix}.")):
            continue
        rest = key[len(prefix) + 1 :].split(".")[0]
        # "<prefix>: unknown key(s) ['x']" names no key of its own: look for the listed ones
        if (rest in own) if rest else any(repr(k) in text for k in own):
            return f"methods.{variant}.{block}{text[len(prefix) :]}"
    if key.startswith("method_params."):
        return f"{text} (used by methods.{variant})"
    return f"methods.{variant}: {text}"


def _check_shared_runs(params: dict[str, Any], sources: ParamsSources) -> list[str]:
    """Variants whose training settings differ but whose run names coincide.

    A variant with default settings trains under its training method's name; one with its
    own ``train_params``/``overrides`` trains under the name of the first variant with its
    settings (:func:`~wsss.config.resolve.training_key`). The two collide when that variant
    is named like the training method (e.g. ``methods.aream`` given ``train_params``, while
    ``aream_unrefined`` trains ``aream`` with the defaults). The problem line leads with the
    settings key a file set for the odd variant, so the error names that file."""
    problems = []
    by_run: dict[str, list[str]] = {}
    for variant in params["methods"]:
        by_run.setdefault(training_key(params, variant), []).append(variant)
    for key, variants in by_run.items():
        recipes = [_training_recipe(params, v) for v in variants]
        if all(recipe == recipes[0] for recipe in recipes):
            continue
        own = [v for v, r in zip(variants, recipes, strict=True) if not _is_default_recipe(r)]
        others = [v for v in variants if v not in own]
        if not own or not others:  # two custom recipes under one name: name the later one
            own, others = variants[1:], variants[:1]
        candidates = [
            f"methods.{v}.{field}" for v in own for field in ("train_params", "overrides", "train")
        ]
        # a key a file wrote itself first (its `overrides`), then one under a key it wrote
        written = [c for c in candidates if sources.overridden(c)]
        set_by_a_file = [c for c in candidates if sources.of_key(c) != sources.default]
        lead = (written or set_by_a_file or [f"methods.{own[0]}"])[0]
        train = params["methods"][own[0]]["train"]
        hint = "rename the variant"
        if any(params["methods"][v].get("train_params") for v in own):
            hint += f", or set the value under method_params.{train} for every {train} variant"
        problems.append(
            f"{lead}: {', '.join(f'methods.{v}' for v in own)} has its own training settings "
            f"(train_params or overrides) but trains under the run name {key!r}, which is also "
            f"the run of {', '.join(f'methods.{v}' for v in others)} with other settings; {hint}"
        )
    return problems


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


def _check_datasets(params: dict[str, Any]) -> list[str]:
    """Each dataset block as its kind checks it (:meth:`~wsss.data.kinds.DatasetKind.check_block`,
    e.g. a synthetic ``generator`` builds its config), and no block sets a key that only
    other kinds read (:attr:`~wsss.data.kinds.DatasetKind.own_keys`). The kind names
    themselves are checked by the schema, whose enum is the registry's."""
    from wsss.data.kinds import DATASET_KINDS

    owners: dict[str, list[str]] = {}
    for kind in DATASET_KINDS.names():
        for key in DATASET_KINDS.get(kind).own_keys:
            owners.setdefault(key, []).append(kind)
    problems = []
    for name, spec in params["datasets"].items():
        kind = kind_of({**spec, "name": name})
        foreign = [key for key, kinds in owners.items() if key in spec and kind.name not in kinds]
        for key in foreign:
            problems.append(
                f"datasets.{name}.{key}: only a {' or '.join(owners[key])} dataset has a {key} "
                f"(this one is kind {kind.name!r}); remove the block"
            )
        if not foreign:
            problems.extend(kind.check_block(name, spec))
    return problems


def _check_blocks(params: dict[str, Any]) -> list[str]:
    """Every block selection a grid run makes fits its model's depth: ``cam.class_layers``
    and ``cam.affinity_layers`` (global, dataset and variant CAM recipes) and the method
    parameters each method declares as naming blocks (``Param(type="blocks")``, and
    AReAM-style ``blocks(depth)``).
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
                for key in type(built).block_params():
                    if built.params.get(key) is not None:
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


def _check_limits(params: dict[str, Any]) -> list[str]:
    """Each grid run's methods against its resolved train block (their
    :meth:`~wsss.methods.TrainingMethod.limits`), one line per problem naming the runs."""
    found: dict[str, list[str]] = {}
    for dataset in params["grid"]["datasets"]:
        for variant in params["grid"]["methods"]:
            if variant not in params["methods"]:
                continue
            try:
                built = build_variant_methods(params, variant)
            except (ValueError, KeyError):
                continue  # reported with its key elsewhere
            train = variant_block(params, dataset, variant, "train")
            raw = params["methods"][variant]
            for method, own in zip(built, ("train_params", "refine_params"), strict=True):
                for key, problem in method.limits(train):
                    where = (
                        f"methods.{variant}.{own}.{key}"
                        if key in (raw.get(own) or {})
                        else f"method_params.{method.name}.{key}"
                    )
                    found.setdefault(f"{where}: {problem}", []).append(f"{variant} on {dataset}")
    return [f"{problem} (runs: {', '.join(runs)})" for problem, runs in found.items()]
