"""Reader for datasets stored in the PASCAL VOC 2012 folder layout.

Every dataset the pipeline uses ends up in this layout (VOC is it, the
synthetic benchmark writes it, COCO is converted into it), so this module
knows nothing about VOC except :data:`VOC_CLASSES` and the packaged official
id lists behind :func:`official_voc_ids`::

    <root>/
      JPEGImages/<id>.jpg                 (or <id>.png when no .jpg exists)
      SegmentationClassAug/<id>.png       and/or SegmentationClass/<id>.png:
                                          class-index PNGs, 0 background,
                                          1..C foreground, 255 ignore
      ImageSets/Segmentation/<split>.txt  one id per line
      Annotations/<id>.xml                optional, VOC object annotations
      SegmentationContext/<id>.png        optional, the synthetic benchmark's failure-mode
      SegmentationPart/<id>.png           maps (:func:`VOCLayout.load_failure_maps`)

Image-level labels, the only supervision a WSSS method may train on, come
either from the annotation XML (what the WSSS literature uses) or from the
classes present in the ground-truth mask.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.data.palette import IGNORE_INDEX, load_label_png

# Package data this module reads (part of the code inputs of the jobs that import it).
PACKAGE_DATA = ("resources/voc/*.txt",)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 VOC foreground classes; class index i (1..20) is ``VOC_CLASSES[i - 1]``."""

OFFICIAL_SPLITS: tuple[str, ...] = ("train", "val", "train_aug")
MASK_DIRS: tuple[str, ...] = ("SegmentationClassAug", "SegmentationClass")
LABEL_SOURCES: tuple[str, ...] = ("auto", "xml", "mask")

# Failure-mode maps beside the VOC layout (written by the synthetic generator; format in
# docs/synthetic.md). SegmentationContext: the class index (1..C) whose co-occurring context
# covers the pixel, 0 none. SegmentationPart: PART_LABEL on an object's discriminative part,
# BODY_LABEL on the rest of the object, 0 elsewhere. Both: 255 where the class mask is 255.
CONTEXT_DIR = "SegmentationContext"
PART_DIR = "SegmentationPart"
FAILURE_MAP_DIRS: tuple[str, ...] = (CONTEXT_DIR, PART_DIR)
PART_LABEL, BODY_LABEL = 1, 2

PathLike = str | os.PathLike

# What to do about a missing or unreadable image or mask.
RESTORE_ADVICE = (
    "restore it from the dataset's source (a generated dataset: delete its root and rerun "
    "prepare-data)"
)


# --------------------------------------------------------------------------- id lists


def read_id_list(path: PathLike) -> list[str]:
    """Read an id list: one id per line, surrounding whitespace and blank lines ignored.

    A line holding more than one field (e.g. the ``<image> <mask>`` pairs of
    DeepLab-style lists) is rejected rather than guessed at, and so is an id listed
    twice (ValueError naming the file, the id and its lines: a hand-merged list would
    otherwise weigh that image twice). The text is UTF-8; a leading byte-order mark
    (Windows editors write one) is not part of the first id. Not UTF-8: ValueError
    naming the file.
    """
    return list(read_id_lines(path))


def read_id_lines(path: PathLike) -> dict[str, int]:
    """Like :func:`read_id_list` (same checks, same errors), each id with its 1-based line
    in the file, in list order: for messages that point at the line of an id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); an id list is one "
            "image id per line, saved as UTF-8"
        ) from err
    return _parse_id_lines(text, str(path))


def _parse_id_lines(text: str, origin: str) -> dict[str, int]:
    """``{id: line}`` in list order; ValueError for a line of several fields or a repeated id."""
    lines: dict[str, list[int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.strip()
        if not item:
            continue
        if len(item.split()) != 1:
            raise ValueError(f"{origin}:{number}: expected one id per line, got {line!r}")
        lines.setdefault(item, []).append(number)
    repeated = {i: n for i, n in lines.items() if len(n) > 1}
    if repeated:
        shown = "; ".join(
            f"{i!r} on lines {', '.join(map(str, n))}" for i, n in list(repeated.items())[:10]
        )
        more = f" (and {len(repeated) - 10} more)" if len(repeated) > 10 else ""
        raise ValueError(
            f"{origin}: {len(repeated)} id(s) listed more than once: {shown}{more}; "
            "list each image once"
        )
    return {item: numbers[0] for item, numbers in lines.items()}


@functools.cache
def _official_ids(split: str) -> tuple[str, ...]:
    resource = importlib.resources.files("wsss") / "resources" / "voc" / f"{split}.txt"
    return tuple(_parse_id_lines(resource.read_text(), f"wsss/resources/voc/{split}.txt"))


def official_voc_ids(split: str) -> list[str]:
    """The official VOC 2012 segmentation ids shipped with the package.

    ``train`` (1,464) and ``val`` (1,449) are VOC 2012 ``ImageSets/Segmentation``;
    ``train_aug`` (10,582) is train plus the SBD images, minus anything in val.
    """
    if split not in OFFICIAL_SPLITS:
        raise ValueError(
            f"unknown VOC split {split!r}; packaged lists: {', '.join(OFFICIAL_SPLITS)}"
        )
    return list(_official_ids(split))


# --------------------------------------------------------------------------- labels


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot ``(num_classes,)`` float32 vector of the foreground classes in ``mask``.

    Index ``c - 1`` is set when class ``c`` (1..num_classes) occurs; background
    (0) and ignore (255) are not classes. Any other value is out of range and
    raises, since it means the mask and ``num_classes`` disagree.
    """
    mask = np.asarray(mask)
    if mask.size == 0:
        return np.zeros(num_classes, dtype=np.float32)
    if mask.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    else:
        present = np.unique(mask)
    present = present[(present != 0) & (present != IGNORE_INDEX)]
    bad = present[(present < 0) | (present > num_classes)]
    if bad.size:
        raise ValueError(
            f"mask holds class values {bad.tolist()} outside 1..{num_classes} "
            f"(0 background and {IGNORE_INDEX} ignore excepted)"
        )
    labels = np.zeros(num_classes, dtype=np.float32)
    labels[present.astype(np.int64) - 1] = 1.0
    return labels


def labels_from_annotation_xml(path: PathLike, class_names: Sequence[str]) -> np.ndarray:
    """Multi-hot ``(len(class_names),)`` float32 vector of the ``<object><name>`` entries.

    Every object counts, including ones flagged ``difficult`` or ``truncated``,
    as in the label files the WSSS literature generates from these XMLs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation XML {path} does not exist")
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise ValueError(f"cannot parse annotation XML {path}: {err}") from err
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros(len(class_names), dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise ValueError(
                f"annotation XML {path}: object class {name!r} is not one of the "
                f"{len(class_names)} known classes"
            )
        labels[index[name]] = 1.0
    return labels


# --------------------------------------------------------------------------- layout


@dataclass
class VOCLayout:
    """One dataset folder in the VOC layout (see the module docstring).

    ``mask_dir`` is ``"SegmentationClassAug"``, ``"SegmentationClass"`` or
    ``"auto"``: Aug when that folder exists (it holds the SBD-extended set,
    a superset of SegmentationClass with identical train/val masks), else the
    original. ``class_names`` maps annotation-XML object names to class
    indices; ``None`` means :data:`VOC_CLASSES`, since VOC is the only dataset
    that ships such XMLs.
    """

    root: Path
    mask_dir: str = "auto"
    class_names: Sequence[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.mask_dir not in ("auto", *MASK_DIRS):
            raise ValueError(
                f"mask_dir must be 'auto', {' or '.join(repr(d) for d in MASK_DIRS)}; "
                f"got {self.mask_dir!r}"
            )

    @classmethod
    def locate(
        cls,
        root: PathLike,
        mask_dir: str = "auto",
        class_names: Sequence[str] | None = None,
    ) -> VOCLayout:
        """Find the layout folder at ``root``, ``root/VOCdevkit/VOC2012`` or ``root/VOC2012``.

        A folder qualifies when it holds ``JPEGImages/`` and the mask folder
        (either one for ``"auto"``); ``"auto"`` is resolved here so the layout
        records which masks it reads.
        """
        given = Path(root).expanduser()
        if mask_dir not in ("auto", *MASK_DIRS):
            raise ValueError(f"mask_dir must be 'auto' or one of {MASK_DIRS}; got {mask_dir!r}")
        wanted = MASK_DIRS if mask_dir == "auto" else (mask_dir,)
        for candidate in (given, given / "VOCdevkit" / "VOC2012", given / "VOC2012"):
            if not (candidate / "JPEGImages").is_dir():
                continue
            for name in wanted:
                if (candidate / name).is_dir():
                    return cls(candidate, name, class_names)
        masks = (
            "SegmentationClass/ or SegmentationClassAug/" if mask_dir == "auto" else f"{mask_dir}/"
        )
        raise FileNotFoundError(
            f"no VOC-layout dataset at {given}: expected JPEGImages/, {masks} and "
            "ImageSets/Segmentation/<split>.txt in that folder, in VOCdevkit/VOC2012/ or in "
            "VOC2012/ below it"
        )

    # ----------------------------------------------------------------- paths

    @property
    def resolved_mask_dir(self) -> str:
        """The mask folder actually read: ``mask_dir`` with ``"auto"`` resolved now."""
        if self.mask_dir != "auto":
            return self.mask_dir
        for name in MASK_DIRS:
            if (self.root / name).is_dir():
                return name
        return MASK_DIRS[-1]

    def split_file(self, split: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def image_path(self, image_id: str) -> Path:
        """``JPEGImages/<id>.jpg``, or ``<id>.png`` when only that exists.

        PNG is accepted so that generated data can be stored losslessly; the
        ``.jpg`` path is returned when neither exists, for the error message.
        """
        jpg = self.root / "JPEGImages" / f"{image_id}.jpg"
        if not jpg.exists():
            png = jpg.with_suffix(".png")
            if png.exists():
                return png
        return jpg

    def mask_path(self, image_id: str) -> Path:
        return self.root / self.resolved_mask_dir / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations" / f"{image_id}.xml"

    # ----------------------------------------------------------------- splits

    def split_ids(self, split: str) -> list[str]:
        """The ids of ``split`` from ``ImageSets/Segmentation/<split>.txt``.

        When that file is absent and ``split`` is ``train``, ``val`` or
        ``train_aug``, the packaged official VOC 2012 list is used instead
        (VOC downloads lack ``train_aug.txt``, and some mirrors lack the
        Segmentation lists). So that a non-VOC dataset never silently picks up
        VOC ids, the fallback is taken only when at least one listed image
        exists here; otherwise, as for any other split, FileNotFoundError.
        An existing but empty list gives ``[]``.
        """
        path = self.split_file(split)
        if path.is_file():
            return read_id_list(path)
        if split in OFFICIAL_SPLITS:
            ids = official_voc_ids(split)
            if any(self.image_path(i).exists() for i in ids):
                return ids
            raise FileNotFoundError(
                f"split list {path} does not exist, and none of the {len(ids)} ids of the "
                f"packaged official VOC {split!r} list has an image under {self.root / 'JPEGImages'}"
            )
        raise FileNotFoundError(f"split list {path} does not exist")

    # ----------------------------------------------------------------- loading

    def load_image(self, image_id: str) -> np.ndarray:
        """The image as an HxWx3 uint8 RGB array (grey, palette or CMYK files converted).

        EXIF orientation is deliberately not applied: masks are aligned with
        the stored pixel grid.
        """
        path = self.image_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(
                f"image {path} does not exist (nor a .png beside it); {RESTORE_ADVICE}"
            )
        try:
            with Image.open(path) as image:
                image.load()
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read image {path}: {err}; {RESTORE_ADVICE}") from err

    def load_mask(self, image_id: str) -> np.ndarray:
        """The HxW uint8 class-index mask from the mask folder."""
        path = self.mask_path(image_id)
        if not path.is_file():
            raise FileNotFoundError(f"mask {path} does not exist; {RESTORE_ADVICE}")
        try:
            return load_label_png(path)
        except ValueError as err:  # names the file; add what to do
            raise ValueError(f"{err}; {RESTORE_ADVICE}") from err

    def has_failure_maps(self) -> bool:
        """Whether this dataset ships the failure-mode maps (both of :data:`FAILURE_MAP_DIRS`)."""
        return all((self.root / name).is_dir() for name in FAILURE_MAP_DIRS)

    def load_failure_maps(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(context, part)``: the H x W uint8 failure-mode maps of ``image_id``.

        ``context``: 0 none, c (1..C) inside the co-occurring context of class c, 255
        where the class mask ignores. ``part``: :data:`PART_LABEL` on an object's
        discriminative part, :data:`BODY_LABEL` on its body, 0 elsewhere, 255 where the
        class mask ignores. FileNotFoundError names a missing file (only the synthetic
        benchmark writes these maps; see :meth:`has_failure_maps`).
        """
        maps = []
        for name in FAILURE_MAP_DIRS:
            path = self.root / name / f"{image_id}.png"
            if not path.is_file():
                raise FileNotFoundError(
                    f"failure-mode map {path} does not exist (the synthetic generator writes "
                    f"{' and '.join(FAILURE_MAP_DIRS)}/; regenerate the dataset)"
                )
            maps.append(load_label_png(path))
        return maps[0], maps[1]

    def image_labels(self, image_id: str, num_classes: int, source: str = "auto") -> np.ndarray:
        """Image-level multi-hot labels, ``(num_classes,)`` float32.

        ``source``: ``"xml"`` reads ``Annotations/<id>.xml``; ``"mask"`` takes
        the classes present in the ground-truth mask; ``"auto"`` uses the XML
        when it exists, else the mask. The WSSS literature uses the XML; on VOC
        the two disagree for 2 of the 2,913 train/val ids.
        """
        if source not in LABEL_SOURCES:
            raise ValueError(f"label source must be one of {LABEL_SOURCES}; got {source!r}")
        xml = self.annotation_path(image_id)
        if source == "xml" or (source == "auto" and xml.is_file()):
            names = VOC_CLASSES if self.class_names is None else tuple(self.class_names)
            if len(names) != num_classes:
                raise ValueError(
                    f"cannot read labels from {xml}: {len(names)} class names for "
                    f"num_classes={num_classes}; pass class_names to the layout"
                )
            return labels_from_annotation_xml(xml, names)
        return labels_from_mask(self.load_mask(image_id), num_classes)


# --------------------------------------------------------------------------- dataset


class VOCSegmentation:
    """Images, masks and image-level labels of one split, as numpy arrays.

    Each item is ``{"id", "image" (HxWx3 uint8), "mask" (HxW uint8),
    "labels" ((num_classes,) float32)}``, passed through ``transform`` if
    given. Labels for the whole split are computed on first use and cached;
    read :attr:`labels` before starting data-loader workers so they share it.
    """

    def __init__(
        self,
        layout: VOCLayout,
        split: str,
        num_classes: int = 20,
        label_source: str = "auto",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}; got {label_source!r}")
        self.layout = layout
        self.split = split
        self.num_classes = num_classes
        self.label_source = label_source
        self.transform = transform
        self.ids = layout.split_ids(split)
        if not self.ids:
            raise ValueError(f"split {split!r} is empty: {layout.split_file(split)} lists no ids")
        self._labels: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """``(len(self), num_classes)`` float32 image-level labels, in id order."""
        if self._labels is None:
            self._labels = np.stack(
                [self.layout.image_labels(i, self.num_classes, self.label_source) for i in self.ids]
            )
        return self._labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = self.layout.load_image(image_id)
        mask = self.layout.load_mask(image_id)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{image_id}: image {self.layout.image_path(image_id)} is {image.shape[:2]} but "
                f"mask {self.layout.mask_path(image_id)} is {mask.shape}"
            )
        sample = {"id": image_id, "image": image, "mask": mask, "labels": self.labels[index].copy()}
        if self.transform is not None:
            sample = self.transform(sample)
        return sample
