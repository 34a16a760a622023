"""Command ``merge-params``: write override files into params.yaml, keeping its comments.

DVC reads the ``grid`` stage's parameters from params.yaml only (``dvc repro`` and
``dvc exp run`` start ``snakemake`` without ``--configfile``), so running a preset under DVC
means merging it into params.yaml first. The merge is Snakemake's ``--configfile`` merge
(:func:`wsss.config.deep_merge`: mappings key by key, anything else replaced), done on
ruamel.yaml's round-trip document, so params.yaml keeps its comments, key order and layout;
keys the overrides add come after params.yaml's own.

Two keys are not taken from the overrides (:data:`DVC_PATHS`): the paths of the ``grid``
stage's outputs, which dvc.yaml spells out (``results/...`` and ``data/synthetic``;
tests/test_dvc_params.py checks the two agree). A preset's own results folder (the smoke
preset's ``results-smoke``) keeps runs outside DVC apart from the committed results; under
DVC the run is the experiment and its outputs are the stage's. Each key kept is printed.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

from wsss.config import ParamsSources, validate_params
from wsss.io import write_text

HELP = (
    "merge override files (presets, site file) into params.yaml, keeping its comments, "
    "for dvc repro / dvc exp run"
)
EXAMPLE = """\
example (the smoke preset as a DVC experiment):
  wsss merge-params configs/smoke.yaml        # params.yaml += the preset, comments kept
  dvc exp run -S train.lr=0.002               # the grid stage on the merged params
"""
# Keys an override may not move: the grid stage's output paths in dvc.yaml.
DVC_PATHS = (("results_dir",), ("datasets", "synthetic", "root"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EXAMPLE
    p.add_argument("overrides", nargs="+", type=Path, help="override files, merged in order")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="file to rewrite")


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order, quotes and flow style survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    yaml.indent(mapping=2, sequence=4, offset=2)
    # `null` as params.yaml writes it (ruamel's default leaves the value empty)
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return yaml


def _load(yaml, path: Path) -> Any:
    try:
        return yaml.load(path)  # a Path: its errors name the file, line and column
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file") from None
    except Exception as err:  # ruamel's errors name the line and column
        raise SystemExit(f"{path}: not valid YAML: {err}") from None


def _merge(
    document: Any, override: dict, path: tuple[str, ...], kept: list[str], source: str
) -> None:
    """``override`` into the round-trip mapping ``document`` in place, as deep_merge. A
    replaced value's end-of-line comment described the old value (``seeds: [0]  # at least
    3``): its first line now names ``source`` instead; the comment lines after it stay."""
    for key, value in override.items():
        where = (*path, key)
        if where in DVC_PATHS:
            if document.get(key) != value:
                kept.append(".".join(where))
            continue
        current = document.get(key) if hasattr(document, "get") else None
        if isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value, where, kept, source)
        else:
            if current != value:
                _replace_line_comment(document, key, f"# set by {source}")
            document[key] = value


def _replace_line_comment(document: Any, key: str, text: str) -> None:
    """The first line of ``key``'s end-of-line comment (ruamel keeps the comment lines that
    follow it in the same token) becomes ``text``; nothing when the key has none."""
    comments = document.ca.items.get(key) if hasattr(document, "ca") else None
    token = comments[2] if comments else None  # [.., .., end-of-line token, ..]
    if token is None or not token.value.startswith("#"):
        return
    _, newline, rest = token.value.partition("\n")
    token.value = f"{text}{newline}{rest}"


def _without_dvc_paths(layer: dict) -> dict:
    """``layer`` less the :data:`DVC_PATHS` keys, which the merge keeps at params' values."""
    for *parents, key in DVC_PATHS:
        block = layer
        for parent in parents:
            block = block.get(parent) if isinstance(block, dict) else None
        if isinstance(block, dict):
            block.pop(key, None)
    return layer


def merge_into(params: Path, overrides: list[Path]) -> list[str]:
    """Merge ``overrides`` into the file ``params`` (validated first, written atomically).
    Returns the DVC path keys kept at params' values. SystemExit naming the file on a
    missing or malformed file, ValueError (the schema's message) on invalid params."""
    yaml = _yaml()
    document = _load(yaml, params)
    layers = [(str(params), json.loads(json.dumps(document)))]
    kept: list[str] = []
    for override in overrides:
        layer = _load(yaml, override)
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise SystemExit(f"{override}: expected a mapping of params.yaml keys")
        _merge(document, layer, (), kept, str(override))
        layers.append((str(override), _without_dvc_paths(json.loads(json.dumps(layer)))))
    # an error names the file that set the bad key, as for --configfile
    validate_params(json.loads(json.dumps(document)), source=ParamsSources.of(layers))
    out = io.StringIO()
    yaml.dump(document, out)
    write_text(params, out.getvalue())
    return list(dict.fromkeys(kept))


def run(args: argparse.Namespace) -> int:
    kept = merge_into(args.params, args.overrides)
    for key in kept:
        print(f"kept {key} from {args.params}: dvc.yaml's grid stage writes there")
    names = ", ".join(map(str, args.overrides))
    print(f"{args.params}: merged {names} (comments kept); check with `git diff {args.params}`")
    return 0
