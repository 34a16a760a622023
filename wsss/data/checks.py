"""Up-front checks of a dataset's splits, run once by ``prepare-data`` before any training.

Each check refuses the dataset with a ValueError that names the file, the image id and the
line of the id list (``<list>.txt:<line>``) before any job trains on it:

1. **Seg split seen by training** (:func:`check_split_overlap`): an id of ``train_split``
   that is also in ``seg_split``. The classifier and the segmenter would train on images
   the segmenter is then scored on, while the table says the seg split is seen by no
   earlier stage. SBD-derived ``train_aug`` lists that keep VOC val images are the known
   case. ``eval_split`` inside ``train_split`` (VOC train in train_aug) is the literature's
   protocol and stays allowed; an ``eval_split`` that overlaps ``seg_split`` is not
   checked (it is harmless with a fixed ``pseudo_labels.bg_threshold``).
2. **Repeated ids**: an id listed twice in one list is refused where the list is read
   (:func:`wsss.data.voc.read_id_list`, which names the file and the lines), i.e. by
   :func:`wsss.data.datasets.prepare_dataset` before these checks run.
3. **Images that do not decode completely**: every listed image is decoded in full
   (``Image.load()``) with Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` off, so a truncated
   JPEG or PNG raises instead of being padded with grey. (A PNG that lacks only its
   trailing IEND chunk decodes to every pixel and is accepted.)
4. **Image modes that do not convert to RGB faithfully** (:func:`image_problem`). The
   pipeline reads every image as ``Image.convert("RGB")``, as the official MCTformer /
   AReAM / ClusterCAM loaders do. Accepted (:data:`RGB_MODES`): RGB and RGBX (identity), L
   and 1 (grey replicated), P (palette lookup), YCbCr (a defined colour transform) and CMYK
   (Pillow's formula without an ICC profile: the pixels the official loaders feed the
   model, so the papers' inputs are reproduced even if a colour-managed viewer shows
   slightly different colours). Images with an alpha channel (RGBA, LA, PA, or a palette /
   grey / RGB image with a ``transparency`` entry) are accepted only when every pixel is
   opaque: converting drops the alpha, and under transparent pixels the stored colours
   are arbitrary (often black), not the picture. Refused: I, I;16*, F (16/32-bit or float
   grey: the conversion clips values above 255 instead of scaling, a 16-bit photo turns
   white) and any other mode (LAB, HSV, ...: no faithful conversion without colour
   management).
5. **Masks** (:func:`mask_problem`), for the ids whose masks a stage reads: every id of
   ``eval_split`` and ``seg_split`` (scored against them), and the ``train_split`` ids whose
   image-level labels come from the mask (``label_source: mask``, or ``auto`` without an
   annotation XML). A mask must exist, decode completely, be a palette (P) or
   single-channel (L) PNG of class indices in 0..C or 255 (ignore), and have its image's
   size.

Decoding is the expensive part, so it is done once per file content: for each checked file
the manifest records what decoding found (:func:`check_dataset`: ``checked.files``, keyed by
the path relative to the root, with the file's BLAKE2b content hash). A rerun hashes each
file and decodes only those whose hash is not recorded (a changed or new file); the checks
themselves are then applied to the recorded facts, so a stricter rule never needs a
decode. The record holds no timestamps: it is the same on every machine for the same files.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from wsss.data.datasets import OpenedDataset, open_dataset
from wsss.data.palette import IGNORE_INDEX
from wsss.data.voc import OFFICIAL_SPLITS, RESTORE_ADVICE, official_voc_ids, read_id_lines

# Bump when what decoding records (the facts of a file) changes: older records are ignored.
FACTS_VERSION = 1

RGB_MODES: tuple[str, ...] = ("RGB", "RGBX", "L", "1", "P", "YCbCr", "CMYK")
"""Image modes whose ``convert("RGB")`` shows the picture as stored (see the module doc)."""
ALPHA_MODES: tuple[str, ...] = ("RGBA", "LA", "PA")
"""Modes with an alpha channel: accepted only when every pixel is opaque."""
MASK_MODES: tuple[str, ...] = ("P", "L")
SPLIT_KEYS: tuple[str, ...] = ("train_split", "eval_split", "seg_split")

# At most this many problems are listed in one error (the count says how many there are).
SHOWN = 20


class DataCheckError(ValueError):
    """The dataset is refused; the message lists each problem with its file, id and list line."""


# --------------------------------------------------------------------------- id lists


def list_lines(dataset: OpenedDataset, split: str) -> tuple[str, dict[str, int]]:
    """``(list, {id: line})`` of ``split``: the list file (or the packaged official VOC list
    it falls back to, :meth:`wsss.data.voc.VOCLayout.split_ids`) and each id's 1-based line."""
    path = dataset.layout.split_file(split)
    if not path.is_file() and split in OFFICIAL_SPLITS:
        return f"wsss/resources/voc/{split}.txt (packaged)", {
            image_id: n for n, image_id in enumerate(official_voc_ids(split), start=1)
        }
    return str(path), read_id_lines(path)


def _splits(config: dict[str, Any]) -> dict[str, str]:
    """``{key: split}`` of the split keys the dataset block sets."""
    return {key: config[key] for key in SPLIT_KEYS if config.get(key)}


# --------------------------------------------------------------------------- overlap


def check_split_overlap(dataset: OpenedDataset, splits: dict[str, str]) -> None:
    """Refuse a ``train_split`` that shares ids with ``seg_split`` (check 1 of the module doc).

    DataCheckError names the shared ids with their line in both lists. Nothing to check
    when either key is unset or both name the same list (refused too: every id shared).
    """
    train, seg = splits.get("train_split"), splits.get("seg_split")
    if train is None or seg is None:
        return
    train_list, train_lines = list_lines(dataset, train)
    seg_list, seg_lines = list_lines(dataset, seg)
    shared = [i for i in seg_lines if i in train_lines]
    if not shared:
        return
    shown = "\n  ".join(
        f"{i!r}: {train_list}:{train_lines[i]} and {seg_list}:{seg_lines[i]}"
        for i in shared[:SHOWN]
    )
    more = f"\n  ... and {len(shared) - SHOWN} more" if len(shared) > SHOWN else ""
    raise DataCheckError(
        f"datasets.{dataset.name}: train_split {train!r} lists {len(shared)} image(s) of "
        f"seg_split {seg!r}, the split the segmenter is scored on:\n  {shown}{more}\n"
        f"the classifier and the segmenter would train on images the segmenter is then "
        f"scored on; remove them from {train_list} (the official VOC train_aug excludes every "
        "val image; lists derived from SBD often do not)"
    )


# --------------------------------------------------------------------------- decoding


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(data: bytes) -> dict[str, Any]:
    """What decoding an image file finds: ``{"mode", "size": [w, h]}``, plus ``"min_alpha"``
    (0..255) for an image with an alpha channel or a transparency entry. Raises what Pillow
    raises for a file it cannot decode completely (OSError, SyntaxError, ValueError, ...)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        facts: dict[str, Any] = {"mode": image.mode, "size": list(image.size)}
        if image.mode in ALPHA_MODES or (image.mode in RGB_MODES and "transparency" in image.info):
            alpha = image.convert("RGBA").getchannel("A")
            facts["min_alpha"] = int(alpha.getextrema()[0])
    return facts


def decode_mask(data: bytes) -> dict[str, Any]:
    """What decoding a mask PNG finds: ``{"mode", "size": [w, h]}`` and, for a P or L mask,
    ``"values"``: the sorted pixel values present. Raises as :func:`decode_image`."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        facts: dict[str, Any] = {"mode": image.mode, "size": list(image.size)}
        if image.mode in MASK_MODES:
            counts = np.bincount(np.asarray(image, dtype=np.uint8).ravel(), minlength=256)
            facts["values"] = np.flatnonzero(counts).tolist()
    return facts


def _examine(path: Path, kind: str, recorded: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """``(record, decoded)`` of one file: its content hash and what decoding it found
    (``recorded`` reused, and ``decoded`` False, when the hash matches), or
    ``{"error": ...}`` when it cannot be read or decoded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"error": "does not exist"}, False
    except OSError as err:
        return {"error": f"cannot be read ({err})"}, False
    digest = _digest(data)
    if recorded is not None and recorded.get("blake2b") == digest:
        return recorded, False
    try:
        facts = decode_image(data) if kind == "image" else decode_mask(data)
    except Exception as err:  # any decoder failure means the same: the file is unusable
        return {"error": f"cannot be decoded completely ({type(err).__name__}: {err})"}, True
    return {"blake2b": digest, **facts}, True


# --------------------------------------------------------------------------- judging


def image_problem(facts: dict[str, Any]) -> str | None:
    """Why an image with these decoded ``facts`` cannot be used, or None (checks 3-4)."""
    if "error" in facts:
        return facts["error"]
    mode = facts["mode"]
    if mode in ALPHA_MODES or "min_alpha" in facts:
        if facts.get("min_alpha", 255) < 255:
            return (
                f"has transparent pixels (mode {mode}, alpha down to {facts['min_alpha']}); "
                "converting to RGB drops the alpha and shows the arbitrary colours stored "
                "under them: save it as an RGB JPEG/PNG composited as intended"
            )
        return None
    if mode in RGB_MODES:
        return None
    why = (
        "high-bit-depth or float grey, which converting to 8-bit RGB clips rather than scales"
        if mode in ("I", "F") or mode.startswith("I;")
        else "no faithful conversion to RGB without colour management"
    )
    return (
        f"has image mode {mode} ({why}); accepted: {', '.join(RGB_MODES)} and "
        f"{', '.join(ALPHA_MODES)} without transparent pixels: convert it to 8-bit RGB"
    )


def mask_problem(
    facts: dict[str, Any], num_classes: int, image_size: list[int] | None
) -> str | None:
    """Why a mask with these decoded ``facts`` cannot be used, or None (check 5)."""
    if "error" in facts:
        return facts["error"]
    if facts["mode"] not in MASK_MODES:
        return (
            f"has mode {facts['mode']}; expected a palette (P) or single-channel (L) PNG of "
            "class indices"
        )
    bad = [v for v in facts["values"] if v > num_classes and v != IGNORE_INDEX]
    if bad:
        return f"holds class values {bad} outside 0..{num_classes} ({IGNORE_INDEX} ignore excepted)"
    if image_size is not None and list(facts["size"]) != list(image_size):
        w, h = facts["size"]
        return f"is {w}x{h} pixels but its image is {image_size[0]}x{image_size[1]}"
    return None


# --------------------------------------------------------------------------- the dataset


def _mask_from_labels(dataset: OpenedDataset, image_id: str) -> bool:
    """Whether the image-level labels of ``image_id`` are read from its mask
    (:meth:`wsss.data.voc.VOCLayout.image_labels`)."""
    source = dataset.label_source()
    if source == "mask":
        return True
    return source == "auto" and not dataset.layout.annotation_path(image_id).is_file()


def _map(function, items: list, threads: int, desc: str, progress: bool) -> list:
    """``[function(item) ...]`` over a pool of ``threads`` threads (Pillow, hashlib and file
    reads release the GIL), in order, with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(
        total=len(items),
        desc=desc,
        unit="file",
        disable=not progress,
        # as wsss.runtime.progress (not imported: it pulls in torch): in a log, every 10 s
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    )
    results = []
    block = 256 * max(1, threads)  # bounds the pending futures (COCO: 244k files)
    with bar, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(items), block):
            for result in pool.map(function, items[start : start + block]):
                results.append(result)
                bar.update()
    return results


def check_dataset(
    config: dict[str, Any],
    previous: dict[str, Any] | None = None,
    threads: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the checks of the module doc on the splits ``config`` sets; return the record for
    the manifest's ``checked`` key: ``{"version": FACTS_VERSION, "files": {path relative to
    the root: {"blake2b": hex, "mode", "size": [w, h], ...}}}``.

    ``previous``: the ``checked`` record of an earlier run (any other version is ignored);
    a file whose content hash it records is not decoded again. ``threads``: the size of the
    decoding pool. Raises DataCheckError listing every problem found (the first
    :data:`SHOWN`), each with its file, image id and list line.
    """
    dataset = open_dataset(config)
    splits = _splits(config)
    check_split_overlap(dataset, splits)
    layout = dataset.layout

    # Each id once, with where it is listed; which of its files to check.
    where: dict[str, list[str]] = {}
    needs_mask: dict[str, bool] = {}
    for key, split in splits.items():
        origin, lines = list_lines(dataset, split)
        for image_id in layout.split_ids(split):
            where.setdefault(image_id, []).append(f"{origin}:{lines[image_id]}")
            wanted = key != "train_split" or _mask_from_labels(dataset, image_id)
            needs_mask[image_id] = needs_mask.get(image_id, False) or wanted
    jobs: list[tuple[str, str, Path]] = []
    for image_id in where:
        jobs.append((image_id, "image", layout.image_path(image_id)))
        if needs_mask[image_id]:
            jobs.append((image_id, "mask", layout.mask_path(image_id)))

    root = layout.root
    recorded = {}
    if previous and previous.get("version") == FACTS_VERSION:
        recorded = previous.get("files", {})

    def relative(path: Path) -> str:
        return path.relative_to(root).as_posix()

    def examine(job: tuple[str, str, Path]) -> tuple[dict[str, Any], bool]:
        _, kind, path = job
        return _examine(path, kind, recorded.get(relative(path)))

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, not decode grey
    try:
        found = _map(examine, jobs, threads, f"checking {dataset.name}", progress)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved

    files: dict[str, dict[str, Any]] = {}
    sizes: dict[str, list[int] | None] = {}
    problems: list[str] = []
    for (image_id, kind, path), (facts, _) in zip(jobs, found, strict=True):
        if kind == "image":
            problem = image_problem(facts)
            sizes[image_id] = facts.get("size")
        else:
            problem = mask_problem(facts, dataset.num_classes, sizes.get(image_id))
        if problem is None:
            files[relative(path)] = facts
        else:
            problems.append(
                f"{path} ({kind} of id {image_id!r}, listed at {', '.join(where[image_id])}): "
                f"{problem}"
            )
    if problems:
        shown = "\n  ".join(problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise DataCheckError(
            f"datasets.{dataset.name}: {len(problems)} file(s) of the splits in use "
            f"({', '.join(f'{k} {v!r}' for k, v in splits.items())}) cannot be used:\n  "
            f"{shown}{more}\nno job has trained on this dataset yet; {RESTORE_ADVICE}, or "
            "remove the ids from the lists, then rerun"
        )
    reused = sum(1 for _, decoded in found if not decoded)
    print(
        f"{dataset.name}: {len(jobs)} image and mask file(s) checked, {len(jobs) - reused} "
        f"decoded, {reused} unchanged since the recorded check",
        file=sys.stderr,
    )
    return {"version": FACTS_VERSION, "files": files}


def recorded_checks(manifest: str | os.PathLike) -> dict[str, Any] | None:
    """The ``checked`` record of a manifest (or of the copy ``prepare-data --cache`` keeps),
    or None (no file, not JSON, no record)."""
    import json

    try:
        record = json.loads(Path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    checked = record.get("checked") if isinstance(record, dict) else None
    return checked if isinstance(checked, dict) else None
