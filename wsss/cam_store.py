"""The CAM artifact: written image by image, read image by image.

CAMs are kept only for each image's ground-truth classes, at full image
resolution, min-max normalised per class and quantised to uint8
(``q = round(255 * cam)``).

**A CAM file** (format version 2, ``.npz``) is a zip archive whose members are
``.npy`` arrays (``numpy.load`` opens it too):

- ``cams/<image id>.npy``: one per image, its k x H x W uint8 block (deflated);
- ``version``, ``num_classes``;
- ``ids`` (unicode, sorted), ``shapes`` (n x 2: H, W), ``class_offsets``
  (n + 1 offsets into ``classes``) and ``classes`` (labels 1..C, int16): the
  index, written last.

:class:`CamWriter` streams: each :meth:`CamWriter.add` deflates one image into
the archive, so memory holds one image's CAMs and the index (a few dozen bytes
an image), never the split. The archive is written under a temporary name and
renamed when complete. :class:`CamReader` reads the index on opening and one
member per record, so reading is bounded the same way.

**A shard index** (``.json``) names the CAM files of one split cut into shards
(one extraction job each, see ``cam.shard_size``), paths relative to the index::

    {"format": "wsss-cam-shards", "version": 1, "num_classes": C, "images": N,
     "shards": [{"file": "train.shards/0.npz", "images": n0}, ...]}

:class:`CamReader` opens either, so a split's CAMs have one path whether or not
it was sharded.

Version 1 (one ``data`` array for the whole split, loaded whole) is refused
with the command that regenerates it.

Why: the official repositories write one pickled ``{class: HxW float}`` dict
per image and re-read them all for each threshold. uint8 keeps the threshold
sweep exact to 1/255 (the sweep step is 0.01), is 4x smaller than float32
before deflate, and smooth CAMs deflate well; one archive per split (or shard)
keeps the file count low, and the sweep reads it once (wsss.evaluation.sweep).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss.io import atomic_path

FORMAT_VERSION = 2
SHARDS_FORMAT = "wsss-cam-shards"
SHARDS_VERSION = 1
_MEMBER_DIR = "cams/"
# Fixed member timestamps: the same CAMs give the same bytes.
_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_REGENERATE = "delete it and rerun: `make run` (or `snakemake`) extracts it again (rule cams_<run>, `wsss cams`)"


def quantize(cam: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (values outside are clipped)."""
    return np.clip(np.rint(cam * 255.0), 0, 255).astype(np.uint8)


def dequantize(cam_q: np.ndarray) -> np.ndarray:
    return cam_q.astype(np.float32) / 255.0


@dataclass
class CamRecord:
    image_id: str
    classes: np.ndarray  # (k,) labels in 1..C
    cams: np.ndarray  # (k, H, W) uint8

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.cams.shape[1:])  # type: ignore[return-value]


def _member(image_id: str) -> str:
    return f"{_MEMBER_DIR}{image_id}.npy"


def _write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    # force_zip64: the size is not known before streaming; a member may pass 2 GiB.
    with archive.open(info, "w", force_zip64=array.nbytes > 2**30) as f:
        np.lib.format.write_array(f, np.asarray(array, order="C"), allow_pickle=False)


class CamWriter:
    """Streams the CAMs of a split (or shard) into a CAM file at ``path``.

    Use as a context manager (or call :meth:`close`): on a clean exit the index
    is written and the temporary file renamed onto ``path``; after an exception
    the temporary file is removed and ``path`` is left as it was.

    Raises ValueError for a record that is not uint8 k x H x W, whose labels
    are outside 1..``num_classes``, or whose image id was already added.
    """

    def __init__(self, path: str | Path, num_classes: int) -> None:
        self.path = Path(path)
        self.num_classes = int(num_classes)
        self._ids: list[str] = []
        self._classes: list[np.ndarray] = []
        self._shapes: list[tuple[int, int]] = []
        self._seen: set[str] = set()
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._archive = zipfile.ZipFile(tmp, "w", allowZip64=True)
        self._open = True

    def __enter__(self) -> CamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, image_id: str, classes: np.ndarray, cams_q: np.ndarray) -> None:
        """Write one image's CAMs: ``classes`` (k,) labels 1..C, ``cams_q`` k x H x W uint8."""
        if not self._open:
            raise ValueError(f"{self.path}: CAM writer already closed")
        classes = np.asarray(classes, dtype=np.int16)
        if cams_q.dtype != np.uint8 or cams_q.ndim != 3 or cams_q.shape[0] != len(classes):
            raise ValueError(
                f"{image_id}: expected uint8 k x H x W CAMs for {len(classes)} classes, "
                f"got {cams_q.shape} {cams_q.dtype}"
            )
        if len(classes) and (classes.min() < 1 or classes.max() > self.num_classes):
            raise ValueError(
                f"{image_id}: class labels must be in 1..{self.num_classes}, got {classes.tolist()}"
            )
        if image_id in self._seen:
            raise ValueError(f"{self.path}: image {image_id!r} added twice")
        _write_array(self._archive, _member(image_id), cams_q)
        self._seen.add(image_id)
        self._ids.append(image_id)
        self._classes.append(classes)
        self._shapes.append((int(cams_q.shape[1]), int(cams_q.shape[2])))

    def close(self) -> None:
        """Write the index, close the archive and rename it onto ``path``."""
        if not self._open:
            return
        try:
            order = sorted(range(len(self._ids)), key=self._ids.__getitem__)
            counts = [len(self._classes[n]) for n in order]
            index = {
                "version": np.array(FORMAT_VERSION),
                "num_classes": np.array(self.num_classes),
                "ids": np.array([self._ids[n] for n in order], dtype=str),
                "shapes": np.array([self._shapes[n] for n in order], np.int32).reshape(-1, 2),
                "class_offsets": np.cumsum([0, *counts]).astype(np.int64),
                "classes": np.concatenate([self._classes[n] for n in order] or [[]]).astype(
                    np.int16
                ),
            }
            for name, array in index.items():
                _write_array(self._archive, f"{name}.npy", array)
            self._archive.close()
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._stack.close()

    def abort(self) -> None:
        """Drop the temporary file; ``path`` is not touched."""
        if not self._open:
            return
        self._open = False
        with contextlib.suppress(Exception):
            self._archive.close()
        # atomic_path removes its temporary file when an exception leaves its block.
        aborted = RuntimeError("CAM writing aborted")
        self._stack.__exit__(RuntimeError, aborted, None)


class CamFile:
    """One CAM file (format version 2), read lazily: the index on opening, a record per call.

    Raises FileNotFoundError for a missing file and ValueError for a file that
    is not a CAM file of this version (with the command that regenerates it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CAM file {self.path} does not exist; run the cams stage first"
            )
        try:
            self._archive = zipfile.ZipFile(self.path)
            names = set(self._archive.namelist())
            version = int(self._array("version.npy"))
            if version == 1 or "data.npy" in names:
                raise _VersionError(
                    f"{self.path} is a version-1 CAM file (one array for the whole split, "
                    f"read into memory whole), which this version does not read; {_REGENERATE}"
                )
            if version != FORMAT_VERSION:
                raise _VersionError(
                    f"{self.path}: CAM format version {version}, expected {FORMAT_VERSION}; "
                    f"{_REGENERATE}"
                )
            self.num_classes = int(self._array("num_classes.npy"))
            self.ids = [str(i) for i in self._array("ids.npy")]
            self.shapes = self._array("shapes.npy")
            self.class_offsets = self._array("class_offsets.npy")
            self.classes = self._array("classes.npy")
        except _VersionError as err:
            raise ValueError(str(err)) from None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"{self.path}: not a readable CAM file ({err}); {_REGENERATE}"
            ) from err
        n = len(self.ids)
        if self.shapes.shape != (n, 2) or len(self.class_offsets) != n + 1:
            raise ValueError(f"{self.path}: inconsistent CAM index; {_REGENERATE}")
        missing = [i for i in self.ids if _member(i) not in names]
        if missing:
            raise ValueError(
                f"{self.path}: truncated CAM file, no data for {len(missing)} images "
                f"(e.g. {missing[0]!r}); {_REGENERATE}"
            )
        self._index = {image_id: n for n, image_id in enumerate(self.ids)}

    def _array(self, name: str) -> np.ndarray:
        with self._archive.open(name) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def record(self, n: int) -> CamRecord:
        """The ``n``-th record in id order (one member read and inflated)."""
        image_id = self.ids[n]
        lo, hi = self.class_offsets[n], self.class_offsets[n + 1]
        expected = (int(hi - lo), *map(int, self.shapes[n]))
        try:
            cams = self._array(_member(image_id))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(
                f"{self.path}: CAM of {image_id!r} unreadable ({err}); {_REGENERATE}"
            ) from err
        if cams.dtype != np.uint8 or cams.shape != expected:
            raise ValueError(
                f"{self.path}: CAM of {image_id!r} is {cams.shape} {cams.dtype}, its index "
                f"says {expected} uint8; {_REGENERATE}"
            )
        return CamRecord(image_id, self.classes[lo:hi].astype(np.int64), cams)

    def get(self, image_id: str) -> CamRecord:
        try:
            n = self._index[image_id]
        except KeyError:
            raise KeyError(f"{self.path} has no CAM for image {image_id!r}") from None
        return self.record(n)

    def __iter__(self) -> Iterator[CamRecord]:
        for n in range(len(self.ids)):
            yield self.record(n)

    def close(self) -> None:
        self._archive.close()


class _VersionError(Exception):
    pass


class CamReader:
    """The CAMs of a split: one CAM file, or the shards a shard index names.

    ``parts`` are the :class:`CamFile` s (one without sharding). ``ids`` are all
    image ids, sorted; iteration goes part by part, each in id order, reading
    one record at a time. Raises FileNotFoundError / ValueError naming the file
    for a missing or unreadable artifact, shards that disagree on the class
    count, an image in two shards, or image counts that differ from the index.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CAM file {self.path} does not exist; run the cams stage first"
            )
        with open(self.path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # a zip's first local header (a CAM file)
        if is_zip:
            self.parts = [CamFile(self.path)]
        else:
            self.parts = self._open_shards()
        self.num_classes = self.parts[0].num_classes
        owner: dict[str, int] = {}
        for k, part in enumerate(self.parts):
            if part.num_classes != self.num_classes:
                raise ValueError(
                    f"{self.path}: shard {part.path} has {part.num_classes} classes, "
                    f"{self.parts[0].path} has {self.num_classes}"
                )
            for image_id in part.ids:
                if owner.setdefault(image_id, k) != k:
                    raise ValueError(
                        f"{self.path}: image {image_id!r} is in two shards, "
                        f"{self.parts[owner[image_id]].path} and {part.path}"
                    )
        self._owner = owner
        self.ids = sorted(owner)

    def _open_shards(self) -> list[CamFile]:
        try:
            index = json.loads(self.path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{self.path}: neither a CAM file nor a shard index ({err}); {_REGENERATE}"
            ) from None
        if not isinstance(index, dict) or index.get("format") != SHARDS_FORMAT:
            raise ValueError(
                f"{self.path}: neither a CAM file nor a shard index (no format "
                f"{SHARDS_FORMAT!r}); {_REGENERATE}"
            )
        if index.get("version") != SHARDS_VERSION or not index.get("shards"):
            raise ValueError(
                f"{self.path}: shard index version {index.get('version')} with "
                f"{len(index.get('shards') or [])} shards, expected version {SHARDS_VERSION} "
                f"with at least one; {_REGENERATE}"
            )
        parts = []
        for shard in index["shards"]:
            part = CamFile(self.path.parent / shard["file"])
            if len(part) != shard["images"]:
                raise ValueError(
                    f"{self.path}: shard {part.path} holds {len(part)} images, the index says "
                    f"{shard['images']}; {_REGENERATE}"
                )
            parts.append(part)
        total = sum(len(p) for p in parts)
        if total != index.get("images") or parts[0].num_classes != index.get("num_classes"):
            raise ValueError(
                f"{self.path}: shards hold {total} images of {parts[0].num_classes} classes, "
                f"the index says {index.get('images')} of {index.get('num_classes')}"
            )
        return parts

    def __enter__(self) -> CamReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, image_id: str) -> CamRecord:
        try:
            part = self.parts[self._owner[image_id]]
        except KeyError:
            raise KeyError(f"{self.path} has no CAM for image {image_id!r}") from None
        return part.get(image_id)

    def __iter__(self) -> Iterator[CamRecord]:
        for part in self.parts:
            yield from part

    def close(self) -> None:
        for part in self.parts:
            part.close()


def write_shard_index(
    path: str | Path, shards: Sequence[str | Path], images: int | None = None
) -> dict[str, Any]:
    """Write the shard index at ``path`` naming the CAM files ``shards`` (in order).

    The index is opened with :class:`CamReader` before it replaces ``path``, so
    shards that disagree on the class count or share an image, or (with
    ``images``) hold another number of images, raise ValueError and leave no
    index. Returns the index.
    """
    path = Path(path)
    if not shards:
        raise ValueError(f"{path}: no shards to index")
    entries, num_classes = [], None
    for shard in shards:
        part = CamFile(shard)
        num_classes = part.num_classes if num_classes is None else num_classes
        entries.append({"file": _relative(part.path, path.parent), "images": len(part)})
        part.close()
    index = {
        "format": SHARDS_FORMAT,
        "version": SHARDS_VERSION,
        "num_classes": num_classes,
        "images": sum(e["images"] for e in entries),
        "shards": entries,
    }
    if images is not None and index["images"] != images:
        raise ValueError(
            f"{path}: the shards hold {index['images']} images, the split has {images}; "
            f"{_REGENERATE}"
        )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        CamReader(tmp).close()
    return index


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


# ------------------------------------------------------------------ shard plans


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def plan_shards(ids: Sequence[str], shard_size: int) -> dict[str, Any]:
    """How a split of ``ids`` (in split order) is cut: shard ``i`` holds
    ``ids[i * shard_size : (i + 1) * shard_size]``; ``shard_size`` 0 = one shard.

    The plan records the ids' SHA-256 so that a shard job refuses a split that
    changed after the plan was made.
    """
    if shard_size < 0:
        raise ValueError(f"shard_size must be >= 0, got {shard_size}")
    count = 1 if shard_size == 0 else max(1, math.ceil(len(ids) / shard_size))
    return {
        "images": len(ids),
        "shard_size": int(shard_size),
        "shards": count,
        "ids_sha256": _ids_digest(ids),
    }


def read_shard_plan(path: str | Path) -> dict[str, Any]:
    """A plan written from :func:`plan_shards`; ValueError naming the file otherwise."""
    try:
        plan = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"shard plan {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"shard plan {path} is not JSON ({err})") from None
    keys = {"images", "shard_size", "shards", "ids_sha256"}
    if not isinstance(plan, dict) or not keys <= set(plan):
        raise ValueError(f"shard plan {path}: expected the keys {sorted(keys)}")
    return plan


def shard_ids(ids: Sequence[str], index: int, plan: dict[str, Any], what: str) -> list[str]:
    """The ids of shard ``index`` under ``plan``; ValueError if ``ids`` (``what``: which
    split, for the message) are not the ones the plan was made from, or no such shard."""
    if len(ids) != plan["images"] or _ids_digest(ids) != plan["ids_sha256"]:
        raise ValueError(
            f"{what} ({len(ids)} images) is not the image list its shard plan was made from "
            f"({plan['images']} images); rerun the cam_shard_plan job (delete the plan file)"
        )
    if not 0 <= index < plan["shards"]:
        raise ValueError(f"{what}: shard {index} does not exist (plan: {plan['shards']} shards)")
    size = plan["shard_size"] or len(ids)
    return list(ids[index * size : (index + 1) * size])
