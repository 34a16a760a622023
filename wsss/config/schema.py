"""The params schema (shipped in the package), the error every check raises, and merging.

``wsss/resources/params.schema.yaml`` says each key's type, range and default; the
checks a schema cannot make are in :mod:`wsss.config.validation`.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from importlib import resources
from typing import Any

import yaml

# Shipped inside the package, so a non-editable install validates params too.
SCHEMA_RESOURCE = ("wsss", "resources/params.schema.yaml")


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


def results_dir(params: dict[str, Any]) -> str:
    """The folder every job writes under: ``results_dir``, else the schema default (``results``)."""
    return params.get("results_dir", _schema()["properties"]["results_dir"]["default"])


@cache
def _schema() -> dict[str, Any]:
    package, name = SCHEMA_RESOURCE
    return yaml.safe_load(resources.files(package).joinpath(name).read_text())


def params_schema() -> dict[str, Any]:
    """The schema params are validated against: the shipped one with the dataset kinds'
    enum filled from the registry (:data:`wsss.data.kinds.DATASET_KINDS`), so an unknown
    kind is named with the known ones and a new kind needs no schema edit."""
    from wsss.data.kinds import DATASET_KINDS

    schema = copy.deepcopy(_schema())
    block = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    block["kind"] = {**block["kind"], "enum": DATASET_KINDS.names()}
    return schema


# A number as YAML 1.2 and JSON spell it. PyYAML (YAML 1.1) reads ``1e-06`` or ``5e-4`` as a
# string: `dvc exp run -S train.lr=0.000001` writes the first, papers write the second.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    """Read every value the schema types as a number as one, in place (and return
    ``params``): ``number`` leaves become floats (``1`` -> ``1.0``, ``"1e-06"`` -> ``1e-06``),
    ``integer`` leaves ints (``"3"`` or ``3.0`` -> ``3``). Equal values then serialise
    alike in the job configs, so Snakemake reruns nothing for ``crop_scale: [0.6, 1]`` against
    ``[0.6, 1.0]``. A value that spells no number is left for validation to name."""
    root = _schema()
    for key, value in list(params.items()):
        schema = root.get("properties", {}).get(key)
        if schema is not None:
            params[key] = _normalise(value, schema, root)
    return params


def _normalise(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/").split("/")
        target = root
        for part in ref:
            target = target[part]
        value = _normalise(value, target, root)
    for sub in schema.get("allOf", ()):
        value = _normalise(value, sub, root)
    alternatives = schema.get("oneOf", ()) or schema.get("anyOf", ())
    if alternatives:
        types = {t for alt in alternatives for t in _types(alt)}
        return _as_typed(value, types, lambda v: _first_fit(v, alternatives, root))
    types = _types(schema)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in list(value.items()):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                value[key] = _normalise(item, sub, root)
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_normalise(item, schema["items"], root) for item in value]
    return _as_typed(value, types, lambda v: v)


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def _first_fit(value: Any, alternatives: Any, root: dict[str, Any]) -> Any:
    """A container under oneOf/anyOf: normalised by the first alternative of its kind."""
    kind = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else None
    for alt in alternatives:
        if kind in _types(alt):
            return _normalise(value, alt, root)
    return value


def _as_typed(value: Any, types: set[str], otherwise: Any) -> Any:
    if isinstance(value, bool) or not ({"number", "integer"} & types):
        return otherwise(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value.strip())
    if not isinstance(value, (int, float)):
        return otherwise(value)
    if "integer" in types and isinstance(value, float) and value.is_integer():
        return int(value)
    # An int written for a ``number`` leaf is a float (``1`` -> ``1.0``), so that the job
    # configs, which Snakemake compares for reruns, spell equal values alike. (The first
    # run after this rule was added reran the jobs whose defaults held such ints: the CRF
    # and head_lr_mult of stage 2, 66 jobs of the default grid.)
    if "number" in types and "integer" not in types and isinstance(value, int):
        return float(value)
    return value
