"""Opening a dataset block of ``params.yaml``: the layout on disk, the class names, the splits.

Every dataset kind ends up in the VOC layout, so one reader serves them all:
the synthetic generator writes it, VOC is it, COCO is converted into it.
This module stays free of torch so that evaluation jobs start fast.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss.data.voc import VOC_CLASSES, VOCLayout
from wsss.io import NoSpaceError, read_json, write_error

# The module of each dataset kind, imported when a dataset of that kind is prepared or
# opened (not before), so a job imports only its own kind's code; wsss.code_deps adds it
# to the rules' code inputs.
KIND_MODULES = {
    "synthetic": "wsss.data.synthetic",
    "voc": "wsss.data.voc",
    "coco": "wsss.data.coco",
}


def kind_module(config: dict[str, Any]):
    """The module of the dataset's kind; ValueError naming the key for an unknown kind."""
    kind = config["kind"]
    if kind not in KIND_MODULES:
        name = config.get("name", kind)
        raise ValueError(
            f"datasets.{name}.kind: unsupported kind {kind!r} (known: {', '.join(KIND_MODULES)})"
        )
    return importlib.import_module(KIND_MODULES[kind])


@dataclass
class OpenedDataset:
    name: str
    kind: str
    layout: VOCLayout
    class_names: list[str]
    config: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_source(self) -> str:
        return self.config.get("label_source", "auto")


def prepare_dataset(config: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Make the dataset exist on disk (generate or check it) and return its manifest."""
    kind = config["kind"]
    module = kind_module(config)
    if kind == "synthetic":
        generator = module.SyntheticConfig.from_dict(config.get("generator", {}))
        try:
            module.write_dataset(generator, config["root"], progress=progress)
        except OSError as err:
            translated = _generation_error(err, config)
            if translated is None or translated is err:
                raise
            raise translated from err
    # kind coco: the convert_coco rule (`wsss convert-coco`) wrote the layout before this
    # runs; open_dataset below names the missing manifest otherwise.
    dataset = open_dataset(config)
    splits = {}
    for key in ("train_split", "eval_split", "seg_split"):
        if key in config:
            ids = dataset.layout.split_ids(config[key])
            if not ids:
                raise ValueError(f"datasets.{dataset.name}.{key}: split {config[key]!r} is empty")
            splits[config[key]] = len(ids)
    return {
        "name": dataset.name,
        "kind": kind,
        "root": str(dataset.layout.root),
        "class_names": dataset.class_names,
        "splits": splits,
    }


def _generation_error(err: OSError, config: dict[str, Any]) -> OSError | None:
    """A failed generation reported against the dataset root and its params key: no space
    left, or a folder that cannot be written (a read-only file system, no permission)."""
    if isinstance(err, NoSpaceError):
        return err  # already names the file and the device
    root, name = Path(config["root"]), config.get("name", config["kind"])
    translated = write_error(err, root)
    if isinstance(translated, PermissionError):
        return PermissionError(
            err.errno,
            f"cannot generate dataset {name!r} at {root} (datasets.{name}.root): "
            f"{err.filename or root} is not writable ({os.strerror(err.errno)}); make it "
            f"writable or set datasets.{name}.root to a writable folder",
        )
    return translated


def open_dataset(config: dict[str, Any]) -> OpenedDataset:
    kind = config["kind"]
    name = config.get("name", kind)
    module = kind_module(config)
    if kind == "coco":  # before locating: a missing conversion gets its own message
        coco_class_names = module.converted_class_names(config["root"])
    layout = VOCLayout.locate(config["root"], mask_dir=config.get("mask_dir", "auto"))
    if kind == "synthetic":
        manifest = Path(layout.root) / "dataset.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"datasets.{name}: {manifest} is missing; run `wsss prepare-data` (or the "
                "prepare_data rule) to generate the synthetic benchmark"
            )
        class_names = list(read_json(manifest, what="dataset manifest")["class_names"])
    elif kind == "voc":
        class_names = list(VOC_CLASSES)
    else:
        class_names = coco_class_names
    return OpenedDataset(name, kind, layout, class_names, config)


def batches_by_size(
    dataset: OpenedDataset, ids: Iterable[str], batch_size: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Images of equal size batched together (VOC has a handful of common sizes)."""
    buckets: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for image_id in ids:
        image = dataset.layout.load_image(image_id)
        bucket = buckets.setdefault(image.shape, [])
        bucket.append((image_id, image))
        if len(bucket) == batch_size:
            yield [i for i, _ in bucket], np.stack([im for _, im in bucket])
            bucket.clear()
    for bucket in buckets.values():
        if bucket:
            yield [i for i, _ in bucket], np.stack([im for _, im in bucket])
