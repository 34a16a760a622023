"""MS COCO instance annotations -> the VOC-style layout the rest of the pipeline reads.

COCO ships instance annotations (``instances_{train,val}2014.json``: polygons,
and RLE masks for crowd regions); WSSS methods need semantic class-index masks
and image-level labels. :func:`convert_coco` rasterises the annotations once
with pycocotools and writes::

    <root>/
      JPEGImages/<id>.jpg                  links to (or copies of) the COCO images
      SegmentationClass/<id>.png           palette PNGs: 0 background, 1..80 the
                                           classes, 255 ignore (only with crowd: ignore)
      ImageSets/Segmentation/<split>.txt   one id per line, sorted by COCO image id
      class_names.txt                      line i = name of class index i (0: background)
      dataset.json                         manifest: class names, the category-id mapping,
                                           the sources, the settings, counts

``<id>`` is the image file's stem (``COCO_train2014_000000000009`` for COCO
2014), so the id lists match those of the official WSSS repositories.

Conventions, following the conversion the WSSS literature points to (methods.md
section 1.1: VOC-style PNGs made from the instance annotations with the coco2voc
tool, as ToCo's README says):

- **Class indices.** COCO category ids (1..90 with gaps) map to contiguous
  indices 1..80 in increasing category-id order (person = 1, toothbrush = 80),
  the order of the repositories' 80-dimensional label vectors (coco2voc itself
  writes the raw ids).
- **Crowd regions** (``iscrowd: 1``, an RLE mask over a group of objects) are
  rasterised like any instance and labelled with their category (``crowd:
  class``, the default and the literature's choice: coco2voc does not look at
  ``iscrowd``). ``crowd: ignore`` instead marks crowd pixels 255 (ignored in
  training and scoring) wherever no individual instance covers them.
- **Overlapping instances.** Where annotations overlap, the one with the
  smaller annotated ``area`` wins (so small objects are not buried under large
  ones, as in coco2voc); equal areas are broken by the lower annotation id, so
  the result does not depend on the order of the JSON file.
- **Image-level labels** are the classes present in the written mask (the
  reader derives them; COCO has no per-image label file): an instance entirely
  covered by smaller ones, or too thin to cover a pixel, gives no label.
- **Empty images.** Images with no foreground pixel are left out of the split
  lists (``keep_empty: false``, as the ClusterCAM lists, which hold the images
  with at least one object: 82,081 of 82,783 train and 40,137 of 40,504 val).
- **Malformed segmentations.** A polygon with fewer than 6 coordinates (under
  3 points) or an odd number of them, an empty polygon list and a ``null``
  segmentation contribute no pixels; the other polygons of the same
  annotation are kept (the filter of Detectron2's COCO loader; pycocotools
  would crash on them, or read a 4-number polygon as a box). Each is logged
  with its annotation and image ids and counted per split in the manifest
  (``invalid_segmentations``, ``invalid_polygons``,
  ``annotations_without_pixels``). An image left without foreground by them
  follows the empty-image rule. Any other segmentation pycocotools cannot
  rasterise (a malformed RLE, a mask of another size) stops the conversion
  with an error naming the annotation id and the image file; once the file is
  fixed, a rerun resumes from the masks already written.

Annotation files and image folders are given per split, never guessed from
names: the shared sample uses 2017 names and a swapped folder pairing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.data.kinds import DatasetKind, register_kind
from wsss.data.palette import IGNORE_INDEX, load_label_png, save_label_png
from wsss.io import read_json, write_json, write_text

log = logging.getLogger("wsss")

FORMAT_VERSION = 1
LINK_MODES: tuple[str, ...] = ("symlink", "hardlink", "copy")
CROWD_MODES: tuple[str, ...] = ("class", "ignore")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".png")  # what wsss.data.voc.VOCLayout reads
MASK_DIR = "SegmentationClass"
MANIFEST = "dataset.json"
IN_PROGRESS = ".conversion-in-progress.json"  # settings of an unfinished conversion (resume)
OVERLAP_RULE = "smaller annotated area wins; equal areas: lower annotation id wins"
MIN_POLYGON_COORDS = 6  # 3 points: the smallest polygon that encloses an area
INVALID_SEGMENTATION_RULE = (
    "polygons with fewer than 6 coordinates or an odd number of them, empty polygon lists "
    "and null segmentations contribute no pixels; the annotation's other polygons are kept"
)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class CocoSplitSource:
    """One output split: its name in the layout, its annotation file and image folder."""

    name: str
    annotations: Path
    images: Path


@dataclass(frozen=True)
class CocoConversion:
    """What to convert and how (the ``source`` block of a ``kind: coco`` dataset)."""

    splits: tuple[CocoSplitSource, ...]
    link: str = "symlink"
    crowd: str = "class"
    keep_empty: bool = False

    def __post_init__(self) -> None:
        if not self.splits:
            raise ValueError("COCO conversion: no splits given")
        names = [s.name for s in self.splits]
        if len(set(names)) != len(names):
            raise ValueError(f"COCO conversion: split names repeat: {names}")
        if self.link not in LINK_MODES:
            raise ValueError(f"link must be one of {', '.join(LINK_MODES)}; got {self.link!r}")
        if self.crowd not in CROWD_MODES:
            raise ValueError(f"crowd must be one of {', '.join(CROWD_MODES)}; got {self.crowd!r}")

    @classmethod
    def from_source(cls, source: Mapping[str, Any], where: str = "source") -> CocoConversion:
        """Build from a dataset's ``source`` block.

        ``{"root": <optional folder>, "splits": {<split>: {"annotations": <json>,
        "images": <folder>}}, "link": ..., "crowd": ..., "keep_empty": ...}``;
        relative paths are taken relative to ``root`` (or the working directory).
        """
        known = {"root", "splits", "link", "crowd", "keep_empty"}
        unknown = set(source) - known
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        splits = source.get("splits")
        if not isinstance(splits, Mapping) or not splits:
            raise ValueError(
                f"{where}.splits: expected {{<split>: {{annotations: <json file>, "
                f"images: <image folder>}}}}, got {splits!r}"
            )
        base = Path(source.get("root") or ".").expanduser()
        parsed = []
        for name, spec in splits.items():
            if not isinstance(spec, Mapping) or set(spec) != {"annotations", "images"}:
                raise ValueError(
                    f"{where}.splits.{name}: expected exactly the keys annotations and images, "
                    f"got {spec!r}"
                )
            parsed.append(
                CocoSplitSource(
                    str(name),
                    base / Path(spec["annotations"]).expanduser(),
                    base / Path(spec["images"]).expanduser(),
                )
            )
        return cls(
            tuple(parsed),
            link=source.get("link", "symlink"),
            crowd=source.get("crowd", "class"),
            keep_empty=bool(source.get("keep_empty", False)),
        )

    def missing_inputs(self) -> list[str]:
        """Human-readable problems with the raw inputs (empty when all are present)."""
        problems = []
        for split in self.splits:
            if not split.annotations.is_file():
                problems.append(
                    f"split {split.name!r}: annotation file {split.annotations} does not exist "
                    "(expected a COCO instances_*.json)"
                )
            if not split.images.is_dir():
                problems.append(
                    f"split {split.name!r}: image folder {split.images} does not exist "
                    "(expected the folder holding that annotation file's images)"
                )
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded in the manifest (absolute paths)."""
        return {
            "splits": {
                s.name: {
                    "annotations": str(s.annotations.resolve()),
                    "images": str(s.images.resolve()),
                }
                for s in self.splits
            },
            "link": self.link,
            "crowd": self.crowd,
            "keep_empty": self.keep_empty,
        }


def dataset_conversion(dataset: Mapping[str, Any]) -> CocoConversion:
    """The conversion a ``kind: coco`` dataset block of ``params.yaml`` asks for."""
    name = dataset.get("name", "<dataset>")
    if dataset.get("kind") != "coco":
        raise ValueError(f"datasets.{name}: kind is {dataset.get('kind')!r}, not coco")
    if "source" not in dataset:
        raise ValueError(
            f"datasets.{name}.source: missing; a coco dataset names its raw annotation files "
            "and image folders there (see docs/real-data.md)"
        )
    return CocoConversion.from_source(dataset["source"], where=f"datasets.{name}.source")


# --------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class Category:
    index: int  # contiguous class index, 1..K (0 is background)
    coco_id: int
    name: str
    supercategory: str


def category_mapping(categories: Iterable[Mapping[str, Any]]) -> list[Category]:
    """COCO ``categories`` -> contiguous class indices 1..K in increasing category-id order."""
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    ids = [int(c["id"]) for c in ordered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"COCO categories repeat an id: {ids}")
    if len(ordered) >= IGNORE_INDEX:
        raise ValueError(
            f"{len(ordered)} categories do not fit uint8 masks with {IGNORE_INDEX} as ignore"
        )
    return [
        Category(i, int(c["id"]), str(c["name"]), str(c.get("supercategory", "")))
        for i, c in enumerate(ordered, start=1)
    ]


# --------------------------------------------------------------------------- masks


def semantic_mask(
    annotations: Sequence[Mapping[str, Any]],
    instance_masks: Sequence[np.ndarray],
    height: int,
    width: int,
    class_index: Mapping[int, int],
    crowd: str = "class",
) -> np.ndarray:
    """Paint one image's instances into an HxW uint8 class-index mask.

    ``instance_masks[i]`` is the binary mask of ``annotations[i]`` (pycocotools'
    ``annToMask``); ``class_index`` maps COCO category ids to 1..K. Overlaps:
    the smaller annotated ``area`` wins, ties go to the lower annotation id.
    ``crowd="ignore"``: crowd regions become 255 where no individual instance
    lies; ``"class"``: they are painted like any instance.
    """
    if crowd not in CROWD_MODES:
        raise ValueError(f"crowd must be one of {', '.join(CROWD_MODES)}; got {crowd!r}")
    if len(annotations) != len(instance_masks):
        raise ValueError("semantic_mask: one instance mask per annotation is needed")
    mask = np.zeros((height, width), dtype=np.uint8)
    order = sorted(
        range(len(annotations)),
        key=lambda i: (float(annotations[i]["area"]), int(annotations[i]["id"])),
    )
    crowd_pixels = np.zeros((height, width), dtype=bool)
    # Paint from the largest down, so that the winner of each pixel is painted last.
    for i in reversed(order):
        ann, pixels = annotations[i], instance_masks[i].astype(bool)
        if pixels.shape != (height, width):
            raise ValueError(
                f"annotation {ann['id']}: mask is {pixels.shape}, image is {(height, width)}"
            )
        if crowd == "ignore" and ann.get("iscrowd", 0):
            crowd_pixels |= pixels
            continue
        mask[pixels] = class_index[int(ann["category_id"])]
    if crowd == "ignore":
        mask[crowd_pixels & (mask == 0)] = IGNORE_INDEX
    return mask


def usable_segmentation(annotation: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """The part of an annotation's ``segmentation`` to rasterise, and what was dropped.

    Returns ``(segmentation, problems)``. ``segmentation`` is None when nothing is
    left to rasterise: a missing or ``null`` segmentation, an empty polygon list,
    or a list whose polygons are all invalid. A polygon (a list of x, y
    coordinates) is invalid with fewer than ``MIN_POLYGON_COORDS`` (6) coordinates
    or an odd number of them; the valid polygons of the same list are kept. An
    RLE mask (a dict), or anything else, is passed on unchanged: what cannot be
    rasterised fails in :func:`rasterise_segmentation`. ``problems``: one phrase
    per dropped part (empty when nothing was dropped).
    """
    segmentation = annotation.get("segmentation")
    if segmentation is None:
        return None, ["null segmentation"]
    if not isinstance(segmentation, list):
        return segmentation, []
    if not segmentation:
        return None, ["empty segmentation list"]
    kept, problems = [], []
    for index, polygon in enumerate(segmentation):
        if isinstance(polygon, list | tuple) and (
            len(polygon) < MIN_POLYGON_COORDS or len(polygon) % 2
        ):
            problems.append(f"polygon {index} has {len(polygon)} coordinates")
        else:
            kept.append(polygon)
    return (kept or None), problems


def rasterise_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """An HxW uint8 0/1 mask from polygons (list of coordinate lists) or an RLE dict.

    The arithmetic is pycocotools' (``annToRLE`` then ``decode``); the input is
    expected to have passed :func:`usable_segmentation`. Raises ValueError for a
    segmentation that is neither, an uncompressed RLE whose counts do not add up
    to its size, or a mask whose size is not ``height`` x ``width``; pycocotools'
    own errors on malformed input pass through (the caller names the annotation).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, Mapping) and {"counts", "size"} <= set(segmentation):
        counts, size = segmentation["counts"], segmentation["size"]
        if isinstance(counts, list):
            # pycocotools decodes counts that overrun the mask without complaint
            if len(size) != 2 or sum(counts) != int(size[0]) * int(size[1]):
                raise ValueError(
                    f"uncompressed RLE counts add up to {sum(counts)}, not to its size {size}"
                )
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(
            "segmentation is neither a list of polygons nor an RLE dict with counts and size "
            f"(got {type(segmentation).__name__})"
        )
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"the mask is {mask.shape[0]}x{mask.shape[1]}, the image {height}x{width}")
    return mask


def invalid_segmentations(coco: Any, annotations_file: Path | str) -> dict[str, int]:
    """Count and log the annotations :func:`usable_segmentation` trims, for the manifest.

    Returns ``{"invalid_segmentations": annotations with a dropped part,
    "invalid_polygons": polygons dropped, "annotations_without_pixels": annotations
    left with nothing to rasterise}``; logs one warning per such annotation with
    its annotation id and image id.
    """
    affected = polygons = without_pixels = 0
    for ann_id in sorted(coco.anns):
        annotation = coco.anns[ann_id]
        segmentation, problems = usable_segmentation(annotation)
        if not problems:
            continue
        affected += 1
        polygons += sum(p.startswith("polygon") for p in problems)
        without_pixels += segmentation is None
        log.warning(
            "%s: annotation %s (image id %s): %s; %s",
            annotations_file,
            ann_id,
            annotation.get("image_id"),
            ", ".join(problems),
            "it contributes no pixels" if segmentation is None else "its other polygons are kept",
        )
    return {
        "invalid_segmentations": affected,
        "invalid_polygons": polygons,
        "annotations_without_pixels": without_pixels,
    }


# --------------------------------------------------------------------------- conversion


def _load_coco(path: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError as err:  # a declared dependency; say which one when it is absent
        raise ImportError("converting COCO needs pycocotools (pip install pycocotools)") from err
    log.info("reading %s", path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # COCO() prints its progress to stdout
        try:
            coco = COCO(str(path))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a COCO annotation file: {err}") from err
    if not {"images", "annotations", "categories"} <= set(coco.dataset):
        raise ValueError(
            f"{path} is not a COCO instances file (needs images, annotations, categories)"
        )
    return coco


def _place_image(source: Path, target: Path, mode: str) -> None:
    """Make ``target`` the image ``source`` (a link, or a copy), replacing what is there."""
    if target.is_symlink() or target.exists():
        if mode == "symlink" and target.is_symlink() and Path(os.readlink(target)) == source:
            return
        if mode == "hardlink" and target.exists() and os.path.samefile(target, source):
            return
        target.unlink()
    if mode == "symlink":
        target.symlink_to(source)
    elif mode == "hardlink":
        try:
            os.link(source, target)
        except OSError as err:
            raise OSError(
                f"cannot hard-link {source} to {target} ({err}); use link: symlink or copy"
            ) from err
    else:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)


def _check_root(root: Path, settings: dict[str, Any]) -> str:
    """``"done"``, ``"resume"`` or ``"fresh"``; raises when ``root`` holds something else."""
    if not root.exists():
        return "fresh"
    if not root.is_dir():
        raise ValueError(f"COCO output root {root} exists and is not a directory")
    manifest = root / MANIFEST
    if manifest.is_file():
        stored = read_json(manifest)
        if stored.get("format_version") == FORMAT_VERSION and stored.get("settings") == settings:
            return "done"
        raise ValueError(
            f"COCO output root {root} holds a conversion with other settings or sources "
            f"(see {manifest}); delete it or choose another root"
        )
    marker = root / IN_PROGRESS
    if marker.is_file():
        if read_json(marker) == {"format_version": FORMAT_VERSION, "settings": settings}:
            return "resume"
        raise ValueError(
            f"COCO output root {root} holds an unfinished conversion with other settings "
            f"(see {marker}); delete it or choose another root"
        )
    if any(root.iterdir()):
        raise ValueError(
            f"COCO output root {root} exists, is not empty and holds no {MANIFEST}; "
            "refusing to write into it"
        )
    return "fresh"


def convert_coco(
    conversion: CocoConversion, root: str | os.PathLike, progress: bool = True
) -> dict[str, Any]:
    """Convert COCO instance annotations into the VOC-style layout at ``root``; return the manifest.

    Idempotent: a ``root`` already converted with the same settings is left
    as it is; an interrupted conversion resumes (masks are written atomically,
    so those present are complete); a ``root`` holding anything else raises.
    """
    from wsss.runtime import progress as progress_bar

    root = Path(root).expanduser()
    missing = conversion.missing_inputs()
    settings = conversion.to_dict()
    state = _check_root(root, settings)
    if state == "done":
        log.info("%s already holds this COCO conversion", root)
        return read_json(root / MANIFEST)
    if missing:
        raise FileNotFoundError("COCO conversion inputs missing:\n  " + "\n  ".join(missing))
    cocos = {split.name: _load_coco(split.annotations) for split in conversion.splits}
    categories = _common_categories(cocos)
    _check_images_exist(
        conversion, cocos
    )  # before writing anything: a wrong pairing leaves no trace
    class_index = {c.coco_id: c.index for c in categories}
    num_classes = len(categories)

    images_dir, masks_dir = root / "JPEGImages", root / MASK_DIR
    sets_dir = root / "ImageSets" / "Segmentation"
    for folder in (images_dir, masks_dir, sets_dir):
        folder.mkdir(parents=True, exist_ok=True)
    write_json(root / IN_PROGRESS, {"format_version": FORMAT_VERSION, "settings": settings})

    seen: dict[str, str] = {}  # id -> split, to refuse the same file stem in two splits
    stats: dict[str, Any] = {}
    total = sum(len(coco.imgs) for coco in cocos.values())
    with progress_bar(total=total, desc=f"COCO -> {root}", unit="img", disable=not progress) as bar:
        for split in conversion.splits:
            coco = cocos[split.name]
            # Counted from the annotations, not while rasterising, so that a resumed
            # run (which reads the masks already written) reports the same numbers.
            invalid = invalid_segmentations(coco, split.annotations)
            ids, skipped = [], 0
            images_per_class = np.zeros(num_classes + 1, dtype=np.int64)
            pixels_per_class = np.zeros(256, dtype=np.int64)
            for image_id in sorted(coco.imgs):
                info = coco.imgs[image_id]
                source = (split.images / info["file_name"]).absolute()
                name, suffix = Path(info["file_name"]).stem, Path(info["file_name"]).suffix.lower()
                if suffix not in IMAGE_SUFFIXES:
                    raise ValueError(
                        f"{split.annotations}: image {info['file_name']} is not a .jpg or .png"
                    )
                if name in seen:
                    raise ValueError(
                        f"image id {name!r} occurs in splits {seen[name]!r} and {split.name!r}; "
                        "the layout needs unique file names across splits"
                    )
                seen[name] = split.name
                mask_path = masks_dir / f"{name}.png"
                if state == "resume" and mask_path.is_file():
                    mask = load_label_png(mask_path)
                else:
                    mask = _image_mask(coco, info, source, class_index, conversion.crowd)
                counts = np.bincount(mask.ravel(), minlength=256)
                present = np.flatnonzero(counts[1 : num_classes + 1]) + 1
                if present.size == 0 and not conversion.keep_empty:
                    skipped += 1
                    bar.update()
                    continue
                if not mask_path.is_file() or state != "resume":
                    save_label_png(mask_path, mask)
                _place_image(source, images_dir / f"{name}{suffix}", conversion.link)
                ids.append(name)
                images_per_class[present] += 1
                pixels_per_class += counts
                bar.update()
            write_text(sets_dir / f"{split.name}.txt", "".join(f"{i}\n" for i in ids))
            stats[split.name] = {
                "images": len(ids),
                "skipped_empty": skipped,
                "annotations": len(coco.anns),
                "crowd_annotations": sum(1 for a in coco.anns.values() if a.get("iscrowd", 0)),
                **invalid,
                "images_per_class": images_per_class[1:].tolist(),
                "pixels_per_class": pixels_per_class[1 : num_classes + 1].tolist(),
                "background_pixels": int(pixels_per_class[0]),
                "ignore_pixels": int(pixels_per_class[IGNORE_INDEX]),
            }
            log.info(
                "%s: %d images written, %d without foreground left out",
                split.name,
                len(ids),
                skipped,
            )

    class_names = [c.name for c in categories]
    write_text(root / "class_names.txt", "".join(f"{n}\n" for n in ["background", *class_names]))
    manifest = {
        "format_version": FORMAT_VERSION,
        "converter": "wsss.data.coco",
        "class_names": class_names,
        "num_classes": num_classes,
        "categories": [
            {
                "index": c.index,
                "coco_id": c.coco_id,
                "name": c.name,
                "supercategory": c.supercategory,
            }
            for c in categories
        ],
        "settings": settings,
        "overlap_rule": OVERLAP_RULE,
        "invalid_segmentation_rule": INVALID_SEGMENTATION_RULE,
        "ignore_index": IGNORE_INDEX,
        "splits": stats,
    }
    write_json(root / MANIFEST, manifest)  # last: its presence means the conversion is complete
    (root / IN_PROGRESS).unlink(missing_ok=True)
    return manifest


def _check_images_exist(conversion: CocoConversion, cocos: Mapping[str, Any]) -> None:
    for split in conversion.splits:
        infos = cocos[split.name].imgs.values()
        missing = [i["file_name"] for i in infos if not (split.images / i["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"split {split.name!r}: {len(missing)} of {len(infos)} images of "
                f"{split.annotations} are not in {split.images} (first: {missing[0]}); is that "
                "the image folder that goes with this annotation file?"
            )


def _common_categories(cocos: Mapping[str, Any]) -> list[Category]:
    mappings = {name: category_mapping(coco.dataset["categories"]) for name, coco in cocos.items()}
    first_name, first = next(iter(mappings.items()))
    for name, mapping in mappings.items():
        if [(c.coco_id, c.name) for c in mapping] != [(c.coco_id, c.name) for c in first]:
            raise ValueError(
                f"the annotation files of splits {first_name!r} and {name!r} list different "
                "categories; one class mapping must serve all splits"
            )
    return first


def _image_mask(
    coco: Any, info: Mapping[str, Any], source: Path, class_index: Mapping[int, int], crowd: str
) -> np.ndarray:
    if not source.is_file():
        raise FileNotFoundError(
            f"image {source} (image id {info['id']}) does not exist; is the images folder "
            "the one that goes with this annotation file?"
        )
    height, width = int(info["height"]), int(info["width"])
    try:
        with Image.open(source) as image:  # the header only: checks the pairing cheaply
            size = image.size
    except OSError as err:
        raise ValueError(f"cannot read image {source}: {err}") from err
    if size != (width, height):
        raise ValueError(
            f"image {source} is {size[0]}x{size[1]} but its annotation says {width}x{height}; "
            "is the images folder the one that goes with this annotation file?"
        )
    annotations = coco.imgToAnns.get(info["id"], [])
    unknown = {a["category_id"] for a in annotations} - set(class_index)
    if unknown:
        raise ValueError(f"image id {info['id']}: annotations use unknown category ids {unknown}")
    kept, instance_masks = [], []
    for annotation in annotations:
        segmentation, _ = usable_segmentation(annotation)  # counted and logged per split
        if segmentation is None:
            continue
        try:
            instance_masks.append(rasterise_segmentation(segmentation, height, width))
        except Exception as err:  # pycocotools raises bare Exception, TypeError, IndexError, ...
            raise ValueError(
                f"annotation {annotation.get('id')} (image id {info['id']}, {source}): cannot "
                f"rasterise its segmentation: {type(err).__name__}: {err}. Fix or remove it in "
                "the annotation file and rerun: the conversion resumes from the masks written"
            ) from err
        kept.append(annotation)
    return semantic_mask(kept, instance_masks, height, width, class_index, crowd)


# --------------------------------------------------------------------------- reading


def converted_class_names(root: str | os.PathLike) -> list[str]:
    """The class names (index 1..K) of a converted layout, from its manifest."""
    manifest = Path(root) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest} is missing: {Path(root)} is not a finished COCO conversion; run "
            "`wsss convert-coco` (or the convert_data rule) first"
        )
    data = read_json(manifest)
    if data.get("converter") != "wsss.data.coco":
        raise ValueError(f"{manifest} was not written by the COCO converter")
    return list(data["class_names"])


# --------------------------------------------------------------------------- the dataset kind


@register_kind
class CocoKind(DatasetKind):
    """``kind: coco``: the ``convert-coco`` stage (:func:`convert_coco`) writes the VOC-style
    layout at ``root`` from the raw files under ``source``, once; the class names are the
    converted layout's (its manifest)."""

    name = "coco"
    conversion = "convert-coco"

    def class_names(self, config: dict[str, Any], layout: Any) -> list[str]:
        return converted_class_names(config["root"])

    def open_layout(self, config: dict[str, Any]) -> tuple[Any, list[str]]:
        # The class names first: a missing conversion gets its own message, not the
        # layout's "no VOC-layout dataset".
        class_names = converted_class_names(config["root"])
        layout, _ = super().open_layout(config)
        return layout, class_names

    def check_inputs(self, name: str, spec: dict[str, Any]) -> list[str]:
        """The raw files, unless the root already holds the conversion."""
        if (Path(spec["root"]).expanduser() / MANIFEST).is_file():
            return []
        try:
            problems = dataset_conversion({**spec, "name": name}).missing_inputs()
        except ValueError as err:
            return [str(err)]
        if problems:
            return [
                f"datasets.{name}.source: {spec['root']} holds no converted COCO layout, and "
                "its raw inputs are missing:\n    " + "\n    ".join(problems)
            ]
        return []
