"""Reading ``params.yaml`` and the override files deep-merged on top of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from wsss.config.schema import ParamsError, deep_merge
from wsss.config.validation import ParamsSources, validate_params


def load_params(path: str | Path, *overrides: str | Path) -> dict[str, Any]:
    """Read a params file (plus override files deep-merged on top, like ``--configfile``) and
    validate; an error names the file that set the bad key."""
    params: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    for file in (path, *overrides):
        file = Path(file)
        if not file.is_file():
            raise ParamsError(f"{file}: params file not found")
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as err:
            raise ParamsError(_yaml_error(file, err)) from err
        if data is None:
            # An empty override changes nothing: most likely the wrong file, or one whose
            # content was lost; refused here rather than reported valid.
            raise ParamsError(f"{file}: the params file is empty; expected a mapping of keys")
        if not isinstance(data, dict):
            raise ParamsError(
                f"{file}: expected a mapping at the top level, got {type(data).__name__}"
            )
        params = deep_merge(params, data)
        layers.append((str(file), data))
    validate_params(params, source=ParamsSources.of(layers))
    return params


def _yaml_error(file: Path, err: Exception) -> str:
    """``<file>:<line>:<column>: not valid YAML: <problem>`` (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return f"{file}: not valid YAML: {problem}"
    context = getattr(err, "context", None)
    where = f" ({context})" if context else ""
    return f"{file}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}{where}"
