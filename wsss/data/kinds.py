"""Dataset kinds, registered by name like the methods (``datasets.<name>.kind`` in params).

A kind is one class in one module of :mod:`wsss.data`, decorated with :func:`register_kind`
and carrying a literal ``name``; the module is imported only when a dataset of that kind is
prepared or opened (:data:`DATASET_KINDS` is lazy), so a job imports, and depends on, only its
own kind's code (:mod:`wsss.code_deps`). Everything that differs between kinds is declared
here and nowhere else; the rest of the pipeline asks the kind:

- ``class_names``: the names of classes 1..K (index 0 is background);
- how the VOC layout comes to exist: nothing to do (``voc``: the download is it),
  generated from the block by :meth:`DatasetKind.prepare` (``generated``: synthetic), or
  written by a conversion stage (``conversion``: the ``wsss`` command of that stage, run once
  per dataset by the workflow's ``convert_data`` rule before ``prepare_data``);
- its checks: the block keys only it reads (``own_keys``), the problems a schema cannot see
  (:meth:`DatasetKind.check_block`), the files that must exist before any job starts
  (:meth:`DatasetKind.check_inputs`), the files its manifest records
  (:meth:`DatasetKind.dataset_files`) and what happens when they changed
  (:meth:`DatasetKind.restore`).

Adding a kind in the VOC layout is one module (``voc``: :mod:`wsss.data.pascal_voc`) (a subclass giving ``name`` and
``class_names``) and a preset naming it; a converted kind adds its conversion stage
(``wsss/stages/convert_<kind>.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from wsss.data.voc import VOCLayout
from wsss.registry import Registry, scan_plugins

# wsss.data.datasets imports this module; the code inputs count every import, typing ones
# too, so an opened dataset is typed by name only.
OpenedDataset = Any


class DatasetKind:
    """A dataset kind; the defaults describe a dataset already on disk in the VOC layout."""

    name: ClassVar[str]
    # The pipeline writes the data itself from the block (the root need not exist before).
    generated: ClassVar[bool] = False
    # The ``wsss`` command of the stage that writes the VOC layout at ``root`` from the raw
    # files the block names (e.g. ``convert-coco``); None when the root is read as it is.
    conversion: ClassVar[str | None] = None
    # Keys of the dataset block only this kind reads (another kind's block may not set them).
    own_keys: ClassVar[tuple[str, ...]] = ()

    # ---------------------------------------------------------------- declarations

    def class_names(self, config: dict[str, Any], layout: VOCLayout) -> list[str]:
        """Names of classes 1..K of the dataset ``config`` describes, found at ``layout``."""
        raise NotImplementedError(f"dataset kind {self.name!r} declares no class names")

    # ---------------------------------------------------------------- preparing and opening

    def prepare(self, config: dict[str, Any], progress: bool = True) -> None:
        """Make the layout exist before it is opened (the prepare-data stage). Default:
        nothing, the layout is on disk (or a conversion stage wrote it)."""

    def open_layout(self, config: dict[str, Any]) -> tuple[VOCLayout, list[str]]:
        """The layout at ``config["root"]`` and the class names; FileNotFoundError naming the
        folder when there is none."""
        layout = VOCLayout.locate(config["root"], mask_dir=config.get("mask_dir", "auto"))
        return layout, self.class_names(config, layout)

    # ---------------------------------------------------------------- checks

    def check_block(self, name: str, spec: dict[str, Any]) -> list[str]:
        """Problems of the dataset block ``datasets.<name>`` a schema cannot see (no file is
        read), each naming its key."""
        return []

    def check_inputs(self, name: str, spec: dict[str, Any]) -> list[str]:
        """Problems with the files the block needs before any job starts, each naming its
        key. Default: ``root`` holds the VOC layout."""
        try:
            VOCLayout.locate(spec["root"], mask_dir=spec.get("mask_dir", "auto"))
        except FileNotFoundError as err:
            return [f"datasets.{name}.root: {err}"]
        return []

    def dataset_files(self, dataset: OpenedDataset, splits: Iterable[str]) -> dict[str, int]:
        """``{path relative to the root: size in bytes}`` of the files the pipeline reads:
        the list of each split in ``splits``, every listed image, and each listed image's
        mask and annotation XML where present. An image missing here raises
        FileNotFoundError naming it (its id and split list too). One ``stat`` per file:
        about 30k for VOC ``train_aug``."""
        layout = dataset.layout
        files = []
        for split in splits:
            split_file = layout.split_file(split)
            if split_file.is_file():
                files.append(split_file)
            for image_id in layout.split_ids(split):
                image = layout.image_path(image_id)
                if not image.is_file():
                    raise FileNotFoundError(
                        f"datasets.{dataset.name}: image {image} of id {image_id!r} (split "
                        f"{split!r}) is missing; restore it from the original download"
                    )
                files.append(image)
                for extra in (layout.mask_path(image_id), layout.annotation_path(image_id)):
                    if extra.is_file():
                        files.append(extra)
        root = layout.root
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in dict.fromkeys(files)}

    def restore(
        self, config: dict[str, Any], root: Path, problems: dict[str, str], manifest: Path
    ) -> list[str]:
        """Bring back the recorded files of ``root`` that are missing or changed
        (``problems``: ``{relative path: what is wrong}``) and return those restored.
        Default: a downloaded dataset cannot be regenerated, so FileNotFoundError names them
        (and the manifest that recorded them)."""
        name = config.get("name", config["kind"])
        listed = "\n  ".join(f"{root / n}: {why}" for n, why in sorted(problems.items())[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise FileNotFoundError(
            f"datasets.{name}: {len(problems)} file(s) of {root} differ from what {manifest} "
            f"recorded when the dataset was prepared:\n  {listed}{more}\nrestore them from the "
            "original download (the results were computed with the recorded files)"
        )


# Lazy: a kind's module (a plug-in of wsss.data) is imported when the kind is first used.
DATASET_KINDS: Registry[type[DatasetKind]] = Registry(
    "dataset kind", lambda: scan_plugins("wsss.data", "register_kind")
)


def register_kind(cls: type[DatasetKind]) -> type[DatasetKind]:
    return DATASET_KINDS.register(cls.name)(cls)


def kind_of(config: dict[str, Any]) -> DatasetKind:
    """The kind of a dataset block (``config["kind"]``; ``config["name"]``, where given, names
    the block in errors); ValueError naming the key and the known kinds for an unknown one."""
    kind = config["kind"]
    if kind not in DATASET_KINDS:
        name = config.get("name", kind)
        raise ValueError(
            f"datasets.{name}.kind: unsupported kind {kind!r} "
            f"(known: {', '.join(DATASET_KINDS.names())})"
        )
    return DATASET_KINDS.get(kind)()


def conversion_stages() -> dict[str, str]:
    """``{kind: the wsss command of its conversion stage}`` of the kinds that have one."""
    stages = {}
    for name in DATASET_KINDS.names():
        conversion = DATASET_KINDS.get(name).conversion
        if conversion:
            stages[name] = conversion
    return stages
