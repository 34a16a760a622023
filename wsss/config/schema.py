"""The params schema (shipped in the package), the error every check raises, and merging.

``wsss/resources/params.schema.yaml`` says each key's type, range and default; the
checks a schema cannot make are in :mod:`wsss.config.validation`.
"""

from __future__ import annotations

import copy
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
