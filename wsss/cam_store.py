"""The CAM artifact: one compressed ``.npz`` per (dataset, method, seed, split).

Format (version 1). CAMs are kept only for each image's ground-truth classes,
at full image resolution, min-max normalised per class and quantised to uint8
(``q = round(255 * cam)``). Arrays:

- ``ids``: image ids (unicode);
- ``shapes``: n x 2 (H, W);
- ``class_offsets``: n + 1 offsets into ``classes`` (labels 1..C, int16);
- ``data``: every image's k x H x W block, flattened and concatenated.

Why: the official repositories write one pickled ``{class: HxW float}`` dict
per image and re-read them all for each threshold. uint8 keeps the threshold
sweep exact to 1/255 (the sweep step is 0.01), is 4x smaller than float32
before deflate, and smooth CAMs deflate well; one file per split means one
open, and the sweep reads it once (see wsss.evaluation.sweep).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsss.io import atomic_path

FORMAT_VERSION = 1


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


@dataclass
class CamWriter:
    """Collects records in memory and writes the artifact atomically on :meth:`save`."""

    num_classes: int
    records: list[CamRecord] = field(default_factory=list)

    def add(self, image_id: str, classes: np.ndarray, cams_q: np.ndarray) -> None:
        classes = np.asarray(classes, dtype=np.int16)
        if cams_q.dtype != np.uint8 or cams_q.ndim != 3 or cams_q.shape[0] != len(classes):
            raise ValueError(
                f"{image_id}: expected uint8 k x H x W CAMs for {len(classes)} classes, got {cams_q.shape} {cams_q.dtype}"
            )
        if len(classes) and (classes.min() < 1 or classes.max() > self.num_classes):
            raise ValueError(
                f"{image_id}: class labels must be in 1..{self.num_classes}, got {classes.tolist()}"
            )
        self.records.append(CamRecord(image_id, classes, cams_q))

    def save(self, path: str | Path) -> None:
        records = sorted(self.records, key=lambda r: r.image_id)
        class_offsets = np.cumsum([0] + [len(r.classes) for r in records]).astype(np.int64)
        classes = np.concatenate([r.classes for r in records]) if records else np.zeros(0, np.int16)
        data = (
            np.concatenate([r.cams.ravel() for r in records]) if records else np.zeros(0, np.uint8)
        )
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f,
                    version=np.array(FORMAT_VERSION),
                    num_classes=np.array(self.num_classes),
                    ids=np.array([r.image_id for r in records], dtype=str),
                    shapes=np.array([r.shape for r in records], dtype=np.int32).reshape(-1, 2),
                    class_offsets=class_offsets,
                    classes=classes.astype(np.int16),
                    data=data,
                )


class CamReader:
    """Reads an artifact written by :class:`CamWriter`; iterates records in id order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"CAM file {self.path} does not exist; run the cams stage first"
            )
        redo = "delete it and rerun the cams stage"
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                version = int(archive["version"])
                if version == FORMAT_VERSION:
                    self.num_classes = int(archive["num_classes"])
                    self.ids = [str(i) for i in archive["ids"]]
                    self.shapes = archive["shapes"]
                    self.class_offsets = archive["class_offsets"]
                    self.classes = archive["classes"]
                    self.data = archive["data"]
        except Exception as err:  # a damaged archive fails in zipfile, zlib or numpy's parsers
            raise ValueError(
                f"{self.path}: not a readable CAM file ({type(err).__name__}: {err}); {redo}"
            ) from err
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: CAM format version {version}, expected {FORMAT_VERSION}; {redo} "
                "with this version of wsss"
            )
        sizes = np.diff(self.class_offsets) * self.shapes[:, 0] * self.shapes[:, 1]
        self.data_offsets = np.concatenate([[0], np.cumsum(sizes)])
        if self.data_offsets[-1] != self.data.size:
            raise ValueError(f"{self.path}: truncated or corrupt CAM data; {redo}")
        self._index = {image_id: n for n, image_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, n: int) -> CamRecord:
        lo, hi = self.class_offsets[n], self.class_offsets[n + 1]
        h, w = self.shapes[n]
        cams = self.data[self.data_offsets[n] : self.data_offsets[n + 1]].reshape(hi - lo, h, w)
        return CamRecord(self.ids[n], self.classes[lo:hi].astype(np.int64), cams)

    def get(self, image_id: str) -> CamRecord:
        try:
            return self.record(self._index[image_id])
        except KeyError:
            raise KeyError(f"{self.path} has no CAM for image {image_id!r}") from None

    def __iter__(self) -> Iterator[CamRecord]:
        for n in range(len(self.ids)):
            yield self.record(n)
