"""PASCAL VOC colour palette and label PNG I/O.

Label maps are stored as palette ("P" mode) PNGs: pixel values are class indices
(0 background, 1..C foreground, 255 ignore) and the palette only colours them.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from wsss.io import atomic_path

IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map as a flat ``[r, g, b, ...]`` list (768 ints).

    Colour of index i: the bits of i spread over the high bits of r, g, b, as
    in the VOC development kit's ``labelcolormap``.
    """
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an HxW integer label map (values 0..255) as a VOC palette PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D, got shape {label.shape}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"label map for {path} has values outside 0..255")
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as an HxW uint8 array of class indices.

    Palette PNGs give their indices directly; single-channel (``L``) PNGs such as
    the SBD ``SegmentationClassAug`` masks give their grey values. RGB label
    images are rejected: their colours would have to be mapped back to indices.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"label PNG {path} has mode {image.mode!r}; expected a palette (P) or "
                    "single-channel (L) PNG of class indices"
                )
            return np.array(image, dtype=np.uint8)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot read label PNG {path}: {err}") from err
