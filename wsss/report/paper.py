"""The numbers the methods' papers report, to print beside ours.

They live in ``wsss/resources/paper_numbers.yaml`` (from methods.md, each entry
citing its section), keyed by dataset kind (``voc``, ``coco``) and grid variant
name. :func:`paper_numbers` gives one variant's entries, or ``{}`` where the
papers report nothing comparable (any synthetic dataset, AD-CAM, DOEI, ...).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
from pathlib import Path
from typing import Any

import yaml

METRICS: tuple[str, ...] = ("cam_miou", "pseudo_label_miou", "seg_miou_val", "seg_miou_test")
SPLITS: tuple[str, ...] = ("train", "train_aug", "val", "test")
ENTRY_KEYS = {"value", "split", "verified", "source", "note"}


# Package data this module reads (part of the code inputs of the jobs that import it).
PACKAGE_DATA = ("resources/paper_numbers.yaml",)


def paper_numbers(dataset_kind: str, variant: str) -> dict[str, dict[str, Any]]:
    """``{metric: {"value" (mIoU %), "split", "verified", "source", "note"}}`` for one variant.

    Empty when the dataset kind or the variant has no reported number. The
    result is a copy: callers may change it.
    """
    return copy.deepcopy(_packaged().get(dataset_kind, {}).get(variant, {}))


@functools.cache
def _packaged() -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    resource = importlib.resources.files("wsss") / "resources" / "paper_numbers.yaml"
    return _parse(resource.read_text(), "wsss/resources/paper_numbers.yaml")


def load_paper_numbers(path: str | Path) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Read and check a paper-numbers file in the packaged file's layout."""
    path = Path(path)
    return _parse(path.read_text(), str(path))


def _parse(text: str, origin: str) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: expected <dataset kind>: <variant>: <metric>: entry")
    for kind, variants in data.items():
        if not isinstance(variants, dict):
            raise ValueError(f"{origin}: {kind}: expected a mapping of variants")
        for variant, metrics in variants.items():
            if not isinstance(metrics, dict):
                raise ValueError(f"{origin}: {kind}.{variant}: expected a mapping of metrics")
            for metric, entry in metrics.items():
                _check_entry(entry, f"{origin}: {kind}.{variant}.{metric}", metric)
    return data


def _check_entry(entry: Any, where: str, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"{where}: unknown metric (known: {', '.join(METRICS)})")
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        raise ValueError(f"{where}: expected exactly the keys {', '.join(sorted(ENTRY_KEYS))}")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
        raise ValueError(f"{where}.value: expected an mIoU in percent, got {value!r}")
    if entry["split"] not in SPLITS:
        raise ValueError(f"{where}.split: expected one of {', '.join(SPLITS)}")
    if not isinstance(entry["verified"], bool):
        raise ValueError(f"{where}.verified: expected true or false")
    if not str(entry["source"]).startswith("methods.md "):
        raise ValueError(f"{where}.source: expected 'methods.md <section>'")
