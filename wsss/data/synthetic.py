"""The embedded synthetic WSSS benchmark: a deterministic generator writing the VOC layout.

Plain coloured shapes are too easy: a classifier trained on them yields CAMs
that cover the whole object and nothing else, so every method scores the same.
Each image here is therefore built to show the failure modes WSSS methods are
meant to fix, each one behind a knob of :class:`SyntheticConfig`:

- **co-occurrence** (false positives): an object usually sits on a rectangle of
  a class-specific texture (stripes of one orientation/period, a checker, a dot
  grid, tinted towards the class colour), its *context*. The context is
  labelled background, but it predicts the class, so the classifier uses it
  and CAMs leak into it. Contexts sometimes
  appear without their object so that they are correlated with the label but
  not identical to it.
- **under-activation** (false negatives): an object is a small *part* in a
  class-specific colour plus a large *body* whose colour comes from a palette
  shared by all classes. The part is the cheapest evidence, so CAMs fire on it
  and miss the body.
- **size variety**: objects from about two patches to half the image side.

Determinism: every image is drawn from its own generator seeded by
``(seed, split index, image index)``, so an image does not depend on how many
others are generated and the same config writes byte-identical files.
This module deliberately has no torch dependency. Knobs: ``docs/synthetic.md``.
"""

from __future__ import annotations

import colorsys
import filecmp
import json
import logging
import math
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from PIL import Image

from wsss.data.kinds import DatasetKind, register_kind
from wsss.data.palette import IGNORE_INDEX, save_label_png
from wsss.data.voc import BODY_LABEL, CONTEXT_DIR, PART_DIR, PART_LABEL, VOCLayout
from wsss.io import NoSpaceError, read_json, write_error, write_json, write_text

log = logging.getLogger("wsss")

FORMAT_VERSION = 1
INSTANCE_DIR = "SegmentationObject"  # per-object maps, VOC's folder name and convention
SPLITS = ("train", "val")  # the index of a split here is part of every image's seed
# Every label-map folder a complete dataset holds; a root missing one is regenerated.
MAP_DIRS = ("SegmentationClass", INSTANCE_DIR, CONTEXT_DIR, PART_DIR)

# Fixed rendering constants. They are not knobs because changing them changes
# what the benchmark is rather than how hard it is; the docs list them.
MAX_VISIBLE_LOSS = 0.5  # later objects may hide (or band-ignore) at most half of an earlier one
PLACEMENT_TRIES = 20  # re-draws of an object's position before it is dropped
MIN_OBJECT_PIXELS = 4.0  # smallest object size (pixels) that every shape renders
CONTEXT_OFFSET = 0.3  # context centre offset from the object centre, in object sizes
CONTEXT_CONTRAST = 45.0  # +- grey levels of the two texture tones around the background
PART_SATURATION, PART_VALUE = 0.9, 0.95  # part colours: saturated, evenly spaced hues

# Body colours shared by all classes; ``body_colours`` takes the first k. The
# first two are a light and a dark neutral so bodies always stand out from the
# mid-grey background without carrying any hue a part colour could be mistaken for.
BODY_PALETTE: tuple[tuple[int, int, int], ...] = (
    (212, 208, 198),
    (48, 48, 58),
    (150, 108, 72),
    (84, 116, 150),
    (176, 172, 112),
    (122, 84, 112),
    (92, 138, 102),
    (198, 150, 160),
)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator (documented in ``docs/synthetic.md``).

    The defaults make a benchmark that a 4-block ViT trained from scratch on CPU
    classifies well while its CAMs show both context leakage and part-only
    activation, i.e. one on which WSSS methods can differ.
    """

    seed: int = 0
    image_size: int = 64
    num_train: int = 600
    num_val: int = 200
    num_classes: int = 6
    min_objects: int = 1
    max_objects: int = 3
    min_object_frac: float = 0.2
    max_object_frac: float = 0.5
    context_prob: float = 0.8
    context_alone_prob: float = 0.05
    context_scale: float = 2.0
    context_tint: float = 0.3
    part_frac: float = 0.25
    body_colours: int = 2
    colour_jitter: float = 0.08
    ignore_border: int = 1
    noise: float = 0.05

    def __post_init__(self) -> None:
        self._validate()
        # Normalise numeric types (YAML gives 1 for 1.0, numpy gives np.int64) so
        # equal configs serialise, and compare, identically.
        for f in fields(self):
            cast = float if f.type == "float" else int
            object.__setattr__(self, f.name, cast(getattr(self, f.name)))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SyntheticConfig:
        """Build from a ``params.yaml`` ``generator:`` block; missing keys take their defaults.

        Raises ValueError naming the offending key for an unknown key or a bad value,
        so a typo in ``params.yaml`` fails before any data is written.
        """
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"synthetic generator: unknown key(s) {unknown}; known keys: {', '.join(known)}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _validate(self) -> None:
        int_ranges = {
            "seed": (0, None),
            "image_size": (16, None),
            "num_train": (1, None),
            "num_val": (0, None),
            "num_classes": (1, IGNORE_INDEX - 1),
            "min_objects": (1, None),
            "max_objects": (1, None),
            "body_colours": (1, len(BODY_PALETTE)),
            "ignore_border": (0, None),
        }
        for key, (low, high) in int_ranges.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{key}: must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in {low}..{high}"
                raise ValueError(f"{key}: must be {bound}, got {value}")
        # (low, high, low inclusive): fractions in (0, 1], probabilities in [0, 1].
        float_ranges = {
            "min_object_frac": (0.0, 1.0, False),
            "max_object_frac": (0.0, 1.0, False),
            "part_frac": (0.0, 1.0, False),
            "context_prob": (0.0, 1.0, True),
            "context_alone_prob": (0.0, 1.0, True),
            "context_scale": (1.0, 4.0, True),
            "context_tint": (0.0, 1.0, True),
            "colour_jitter": (0.0, 0.5, True),
            "noise": (0.0, 0.5, True),
        }
        for key, (low, high, closed) in float_ranges.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{key}: must be a number, got {value!r}")
            if (
                not math.isfinite(value)
                or value > high
                or value < low
                or (value == low and not closed)
            ):
                interval = f"{'[' if closed else '('}{low}, {high}]"
                raise ValueError(f"{key}: must be in {interval}, got {value}")
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects: must be <= max_objects ({self.max_objects}), got {self.min_objects}"
            )
        if self.min_object_frac * self.image_size < MIN_OBJECT_PIXELS:
            raise ValueError(
                f"min_object_frac: objects of {self.min_object_frac} x {self.image_size} px are "
                f"too small to draw; need at least {MIN_OBJECT_PIXELS} px"
            )
        if self.min_object_frac > self.max_object_frac:
            raise ValueError(
                f"min_object_frac: must be <= max_object_frac ({self.max_object_frac}), "
                f"got {self.min_object_frac}"
            )


# --------------------------------------------------------------------------- classes

# A shape is an indicator on unit coordinates (u, v), v pointing down, whose
# un-rotated extent is [-1, 1] in u; ``max_rotation`` (degrees) is the per-object
# rotation jitter: small for shapes that would otherwise turn into one another
# (a square rotated 45 degrees is the diamond), none for the rotation-invariant ones.
ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Shape:
    name: str
    inside: ShapeFn
    max_rotation: float


def _box(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v))


SHAPES: tuple[_Shape, ...] = (
    _Shape("disc", lambda u, v: u * u + v * v <= 1.0, 0.0),
    _Shape("square", lambda u, v: _box(u, v) <= 0.9, 15.0),
    _Shape("triangle", lambda u, v: (v <= 0.87) & (np.abs(u) <= (v + 0.87) / 1.74), 15.0),
    _Shape("ring", lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3), 0.0),
    _Shape(
        "cross",
        lambda u, v: (_box(u, v) <= 1.0) & ((np.abs(u) <= 0.35) | (np.abs(v) <= 0.35)),
        15.0,
    ),
    _Shape("diamond", lambda u, v: np.abs(u) + np.abs(v) <= 1.0, 15.0),
    _Shape("ellipse", lambda u, v: u * u + 4.0 * v * v <= 1.0, 180.0),
    _Shape("semicircle", lambda u, v: (v <= 0.5) & (u * u + (v - 0.5) ** 2 <= 1.0), 15.0),
    _Shape("corner", lambda u, v: (_box(u, v) <= 0.9) & ~((u > -0.15) & (v < 0.15)), 15.0),
    _Shape("frame", lambda u, v: (_box(u, v) <= 0.9) & (_box(u, v) >= 0.5), 15.0),
)


@dataclass(frozen=True)
class _Texture:
    """A two-tone pattern: stripes (angle, period) or a checker / dot grid (cell)."""

    kind: Literal["stripes", "checker", "dots"]
    angle: float = 0.0  # degrees; stripes only
    period: float = 4.0  # pixels


TEXTURES: tuple[_Texture, ...] = (
    _Texture("stripes", 0.0, 4.0),
    _Texture("stripes", 90.0, 4.0),
    _Texture("stripes", 45.0, 4.0),
    _Texture("stripes", 135.0, 4.0),
    _Texture("checker", period=6.0),
    _Texture("dots", period=5.0),
    _Texture("stripes", 0.0, 8.0),
    _Texture("stripes", 90.0, 8.0),
)


def class_names(num_classes: int) -> list[str]:
    """Readable class names: the shape names, with a cycle number once the shapes run out."""
    names = []
    for c in range(num_classes):
        cycle, shape = divmod(c, len(SHAPES))
        names.append(SHAPES[shape].name + (str(cycle + 1) if cycle else ""))
    return names


def _class_shape(c: int) -> _Shape:
    return SHAPES[c % len(SHAPES)]


def _class_texture(c: int) -> _Texture:
    # Past the base list, change the period so contexts stay class-specific.
    cycle, index = divmod(c, len(TEXTURES))
    base = TEXTURES[index]
    return _Texture(base.kind, base.angle, base.period + 1.5 * cycle)


def part_colour(c: int, num_classes: int) -> np.ndarray:
    """The class-specific part colour: evenly spaced saturated hues, RGB floats 0..255."""
    r, g, b = colorsys.hsv_to_rgb(c / num_classes, PART_SATURATION, PART_VALUE)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def describe_classes(num_classes: int) -> list[dict[str, Any]]:
    """What identifies each class (shape, part colour, context texture), for the manifest."""
    out = []
    for c, name in enumerate(class_names(num_classes)):
        texture = _class_texture(c)
        context = (
            f"stripes {texture.angle:g} deg, period {texture.period:g} px"
            if texture.kind == "stripes"
            else f"{texture.kind}, period {texture.period:g} px"
        )
        colour = [int(round(v)) for v in part_colour(c, num_classes)]
        out.append(
            {"name": name, "shape": _class_shape(c).name, "part_colour": colour, "context": context}
        )
    return out


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class ObjectInfo:
    """One drawn object, for tests and debugging (pixel counts on the unoccluded mask)."""

    class_index: int  # 0-based; the mask value is class_index + 1
    size: float  # nominal size in pixels (un-rotated extent)
    centre: tuple[float, float]  # (x, y) in pixels
    has_context: bool
    area: int  # pixels of the full, unoccluded object
    part_area: int  # of which part pixels
    extent: int  # larger side of the unoccluded object's bounding box
    visible: int  # pixels of the object still visible in the final image
    labelled: int  # visible pixels outside the ignore band: those carrying its class in the mask


@dataclass(frozen=True)
class SampleDebug:
    """What :func:`generate_sample` drew, beyond the image and the mask.

    ``instance_map``: 0 background, k = index of the object in ``objects`` + 1.
    ``part_map``: visible pixels of the objects' discriminative parts.
    ``context_map``: visible context-texture pixels, as class index + 1 (0: none).
    ``alone_contexts``: classes whose context was drawn without their object.
    """

    instance_map: np.ndarray
    part_map: np.ndarray
    context_map: np.ndarray
    objects: tuple[ObjectInfo, ...]
    alone_contexts: tuple[int, ...]


@dataclass
class _Placed:
    class_index: int
    size: float
    cx: float
    cy: float
    mask: np.ndarray
    part: np.ndarray
    context: bool = False


def _shape_mask(
    shape: _Shape, size: float, cx: float, cy: float, angle: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = (xs - cx) / (size / 2), (ys - cy) / (size / 2)
    return shape.inside(cos * dx + sin * dy, -sin * dx + cos * dy)


def _part_of(
    mask: np.ndarray,
    frac: float,
    cx: float,
    cy: float,
    angle: float,
    xs: np.ndarray,
    ys: np.ndarray,
) -> np.ndarray:
    """The cap of ``mask`` furthest along a direction, holding ``round(frac * area)`` pixels.

    A cap rather than a random blob because it reads as a "head" on a "body",
    and exact counting (stable sort, not a threshold) keeps the fraction exact.
    """
    index = np.flatnonzero(mask)
    keep = max(1, round(frac * index.size))
    proj = (xs.ravel()[index] - cx) * math.cos(angle) + (ys.ravel()[index] - cy) * math.sin(angle)
    part = np.zeros(mask.size, dtype=bool)
    part[index[np.argsort(-proj, kind="stable")[:keep]]] = True
    return part.reshape(mask.shape)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # Log-uniform so small and large objects are equally common in ratio terms.
    return float(math.exp(rng.uniform(math.log(low), math.log(high)))) if high > low else low


def _texture(
    texture: _Texture, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A boolean two-tone pattern over the whole image, with a random phase."""
    px, py = rng.uniform(0, texture.period, size=2)
    x, y = xs + px, ys + py
    if texture.kind == "stripes":
        theta = math.radians(texture.angle)
        t = x * math.sin(theta) + y * math.cos(theta)  # angle 0: horizontal stripes
        return np.mod(t, texture.period) < texture.period / 2
    if texture.kind == "checker":
        half = texture.period / 2
        return (np.floor(x / half) + np.floor(y / half)) % 2 == 0
    return (np.mod(x, texture.period) < 2) & (np.mod(y, texture.period) < 2)


def _place_objects(
    config: SyntheticConfig, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray
) -> list[_Placed]:
    """Draw the objects in paint order; later ones may occlude earlier ones, within limits."""
    side = config.image_size
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    placed: list[_Placed] = []
    owner = np.zeros((side, side), dtype=np.int16)  # index + 1 of the labelled object
    for _ in range(count):
        c = int(rng.integers(config.num_classes))
        shape = _class_shape(c)
        size = _log_uniform(rng, config.min_object_frac * side, config.max_object_frac * side)
        for _try in range(PLACEMENT_TRIES):
            cx, cy = rng.uniform(size / 2, side - size / 2, size=2)
            angle = math.radians(rng.uniform(-shape.max_rotation, shape.max_rotation))
            mask = _shape_mask(shape, size, cx, cy, angle, xs, ys)
            if not mask.any():
                continue
            # Keep at least half of every earlier object labelled (visible and outside
            # the ignore band the new one brings), so occlusion never erases a label.
            hidden = _dilate(mask, config.ignore_border)
            ok = all(
                np.count_nonzero((owner == k + 1) & ~hidden)
                >= (1 - MAX_VISIBLE_LOSS) * p.mask.sum()
                for k, p in enumerate(placed)
            )
            if ok:
                part_dir = rng.uniform(0, 2 * math.pi)
                part = _part_of(mask, config.part_frac, cx, cy, part_dir, xs, ys)
                placed.append(_Placed(c, size, float(cx), float(cy), mask, part))
                owner[hidden] = 0
                owner[mask] = len(placed)
                break
    if not placed:  # unreachable with MIN_OBJECT_PIXELS; WSSS needs a label on every image
        raise RuntimeError("synthetic generator: no object could be drawn")
    return placed


def _offsets(radius: int) -> list[tuple[int, int]]:
    """The non-zero offsets of a pixel disc of ``radius`` (4-neighbourhood for 1)."""
    return [
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy or dx) and dy * dy + dx * dx <= radius * radius
    ]


def _shifted(array: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """``array`` moved so that out[y, x] = array[y + dy, x + dx] (zero outside)."""
    h, w = array.shape
    padded = np.pad(array, pad)
    return padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for dy, dx in _offsets(radius):
        out |= _shifted(mask, dy, dx, radius)
    return out


def _ignore_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of the outline of an object painted above them, VOC-style.

    ``instances`` numbers objects in paint order (0 background). A pixel is
    ignored when an object painted later than it lies within a disc of radius
    ``width``: the band falls outside every object's outline, on the background
    or on the object it occludes (touching instances of one class included, as
    VOC outlines every instance). The topmost object thus keeps all its pixels,
    so the band can never remove an image's last label.
    """
    band = np.zeros(instances.shape, dtype=bool)
    for dy, dx in _offsets(width):
        band |= _shifted(instances, dy, dx, width) > instances
    return band


@overload
def generate_sample(
    config: SyntheticConfig, rng: np.random.Generator, *, debug: Literal[False] = False
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def generate_sample(
    config: SyntheticConfig, rng: np.random.Generator, *, debug: Literal[True]
) -> tuple[np.ndarray, np.ndarray, SampleDebug]: ...
def generate_sample(
    config: SyntheticConfig, rng: np.random.Generator, *, debug: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, SampleDebug]:
    """Draw one image and its mask: ``(H x W x 3 uint8, H x W uint8)``.

    Mask values: 0 background (contexts included), c + 1 for class c, 255 for the
    ignore band. With ``debug=True`` a :class:`SampleDebug` is returned too, so
    tests can check that each knob does what it says.
    """
    side = config.image_size
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    placed = _place_objects(config, rng, xs, ys)
    present = {p.class_index for p in placed}

    # Background: a dull per-image colour with a gentle linear gradient, so that
    # neither an absolute grey level nor a flat region identifies the background.
    base = rng.uniform(95, 160) + rng.uniform(-12, 12, size=3)
    g_angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - side / 2) * math.cos(g_angle) + (ys - side / 2) * math.sin(g_angle)) / side
    image = base[None, None, :] + (rng.uniform(0, 30) * ramp)[..., None]
    image = image.astype(np.float32)

    # Contexts: one per object with probability context_prob, plus one for each
    # absent class with probability context_alone_prob. Larger ones are painted
    # first so a small context is not buried under a big one.
    contexts: list[tuple[int, float, float, float]] = []  # (class, size, cx, cy)
    for p in placed:
        p.context = bool(rng.random() < config.context_prob)
        if p.context:
            off = rng.uniform(-CONTEXT_OFFSET, CONTEXT_OFFSET, size=2) * p.size
            contexts.append((p.class_index, p.size, p.cx + off[0], p.cy + off[1]))
    alone = []
    for c in range(config.num_classes):
        if c not in present and rng.random() < config.context_alone_prob:
            size = _log_uniform(rng, config.min_object_frac * side, config.max_object_frac * side)
            cx, cy = rng.uniform(0, side, size=2)
            contexts.append((c, size, float(cx), float(cy)))
            alone.append(c)
    context_map = np.zeros((side, side), dtype=np.int16)
    dark, light = base - CONTEXT_CONTRAST, base + CONTEXT_CONTRAST
    for c, size, cx, cy in sorted(contexts, key=lambda t: -t[1]):
        half_w, half_h = config.context_scale * size / 2 * rng.uniform(0.85, 1.15, size=2)
        region = (np.abs(xs - cx) <= half_w) & (np.abs(ys - cy) <= half_h)
        on = _texture(_class_texture(c), xs, ys, rng)
        tint = config.context_tint * part_colour(c, config.num_classes)
        keep = 1.0 - config.context_tint
        image[region] = np.where(on[region][:, None], keep * light + tint, keep * dark + tint)
        context_map[region] = c + 1

    # Objects in paint order: a jittered shared body colour, a jittered class part colour.
    instances = np.zeros((side, side), dtype=np.int16)
    part_map = np.zeros((side, side), dtype=bool)
    jitter = config.colour_jitter * 255.0
    for k, p in enumerate(placed):
        body = np.array(BODY_PALETTE[int(rng.integers(config.body_colours))], dtype=np.float32)
        body = body + rng.uniform(-jitter, jitter, size=3)
        part = part_colour(p.class_index, config.num_classes) + rng.uniform(-jitter, jitter, size=3)
        image[p.mask] = body
        image[p.part] = part
        instances[p.mask] = k + 1
        part_map[p.mask] = p.part[p.mask]
    context_map[instances != 0] = 0

    image += rng.normal(0.0, config.noise * 255.0, size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    classes = np.array([0] + [p.class_index + 1 for p in placed], dtype=np.uint8)
    mask = classes[instances]
    mask[_ignore_band(instances, config.ignore_border)] = IGNORE_INDEX
    if not debug:
        return image, mask

    objects = []
    for k, p in enumerate(placed):
        rows, cols = np.nonzero(p.mask)
        objects.append(
            ObjectInfo(
                class_index=p.class_index,
                size=p.size,
                centre=(p.cx, p.cy),
                has_context=p.context,
                area=int(p.mask.sum()),
                part_area=int(p.part.sum()),
                extent=int(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1),
                visible=int(np.count_nonzero(instances == k + 1)),
                labelled=int(np.count_nonzero((instances == k + 1) & (mask != IGNORE_INDEX))),
            )
        )
    info = SampleDebug(instances, part_map, context_map, tuple(objects), tuple(alone))
    return image, mask, info


def instance_label_map(info: SampleDebug, mask: np.ndarray) -> np.ndarray:
    """The VOC ``SegmentationObject`` map of a sample: H x W uint8.

    0 background (contexts included), k for the k-th object in paint order
    (``info.objects[k - 1]``, class ``mask`` value), 255 wherever the class mask
    is 255 (the ignore band), as VOC marks object outlines in both maps.
    Raises ValueError past 254 objects (the value 255 is reserved).
    """
    if len(info.objects) >= IGNORE_INDEX:
        raise ValueError(
            f"{len(info.objects)} objects in one image; a SegmentationObject PNG holds at most "
            f"{IGNORE_INDEX - 1} (lower max_objects)"
        )
    out = info.instance_map.astype(np.uint8)
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out


def context_label_map(info: SampleDebug, mask: np.ndarray) -> np.ndarray:
    """The ``SegmentationContext`` map of a sample: H x W uint8.

    c (1..C) on the visible pixels of a class-c context texture (the mask labels them
    background), 0 elsewhere, 255 wherever the class mask is 255. A context drawn
    without its object (``context_alone_prob``) is included; where contexts overlap,
    the one painted last (the smaller) is recorded, as it is the one visible.
    """
    out = info.context_map.astype(np.uint8)
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out


def part_label_map(info: SampleDebug, mask: np.ndarray) -> np.ndarray:
    """The ``SegmentationPart`` map of a sample: H x W uint8.

    ``PART_LABEL`` (1) on the visible pixels of an object's discriminative part (the
    class-coloured cap), ``BODY_LABEL`` (2) on the rest of its visible pixels, 0
    elsewhere, 255 wherever the class mask is 255. The object's class is the class
    mask's value at the same pixel.
    """
    out = np.zeros(mask.shape, np.uint8)
    out[info.instance_map != 0] = BODY_LABEL
    out[info.part_map] = PART_LABEL
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out


def sample_rng(config: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([config.seed, SPLITS.index(split), index])


# --------------------------------------------------------------------------- writing


def _manifest_matches(manifest: dict[str, Any], config: SyntheticConfig) -> list[str]:
    """The config keys (or "format_version") on which an existing dataset differs."""
    if manifest.get("format_version") != FORMAT_VERSION:
        return ["format_version"]
    stored = manifest.get("config", {})
    wanted = json.loads(json.dumps(config.to_dict()))
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))


def _check_existing(root: Path, config: SyntheticConfig) -> bool:
    """True if ``root`` already holds this dataset; False if it is free to write."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"synthetic dataset root {root} exists and is not a directory")
    manifest = root / "dataset.json"
    if manifest.is_file():
        differs = _manifest_matches(read_json(manifest), config)
        if not differs:
            return True
        raise ValueError(
            f"synthetic dataset root {root} holds a dataset generated with a different config "
            f"(differs in: {', '.join(differs)}); delete it or choose another root"
        )
    if any(root.iterdir()):
        raise ValueError(
            f"synthetic dataset root {root} exists, is not empty and has no dataset.json; "
            "refusing to overwrite it"
        )
    return False


def _missing_maps(root: Path) -> list[str]:
    """The label-map folders of :data:`MAP_DIRS` that ``root`` lacks."""
    return [name for name in MAP_DIRS if not (root / name).is_dir()]


def write_dataset(config: SyntheticConfig, root: str | os.PathLike, progress: bool = True) -> Path:
    """Write the benchmark in the VOC layout under ``root`` and return ``root``.

    Layout: ``JPEGImages/<id>.png`` (lossless PNG; the folder keeps its VOC
    name), ``SegmentationClass/<id>.png`` (palette PNG),
    ``SegmentationObject/<id>.png`` (palette PNG of object indices, see
    :func:`instance_label_map`), the failure-mode maps
    ``SegmentationContext/<id>.png`` and ``SegmentationPart/<id>.png`` (palette
    PNGs, see :func:`context_label_map` and :func:`part_label_map`),
    ``ImageSets/Segmentation/{train,val}.txt`` and ``dataset.json``.

    Atomic: everything goes into a temporary sibling directory that is renamed
    onto ``root`` at the end, so an interrupted run leaves no partial dataset
    (at worst a hidden ``.<name>.tmp-*`` sibling). A ``root`` already holding this
    config is returned untouched; one holding another config raises ValueError.
    A ``root`` holding this config but written before some label-map folder
    existed (one of :data:`MAP_DIRS` is missing) is regenerated, with a warning:
    it is moved to a hidden ``.<name>.stale-*`` sibling, written again (every file
    it had comes back byte-identical) and the stale copy is deleted; if writing
    fails, the stale copy is moved back.
    """
    root = Path(root)
    stale = None
    if _check_existing(root, config):
        missing = _missing_maps(root)
        if not missing:
            return root
        log.warning(
            "synthetic dataset %s lacks %s (written by an older generator); regenerating it",
            root,
            ", ".join(f"{name}/" for name in missing),
        )
        stale = root.parent / f".{root.name}.stale-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(root, stale)
        except FileNotFoundError:
            stale = None  # another process moved it first; write as for a new root
    root.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which forces mode 0700) so the dataset gets the umask's permissions.
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _write_into(config, tmp, root, progress)
        if root.exists():
            root.rmdir()  # checked empty above; rename cannot replace a non-empty one
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished the same dataset first: theirs is as good as ours.
            if _check_existing(root, config) and not _missing_maps(root):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None and not root.exists():
            os.rename(stale, root)
            stale = None
        raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return root


def _write_into(config: SyntheticConfig, out: Path, root: Path, progress: bool) -> None:
    from tqdm import tqdm

    images, masks = out / "JPEGImages", out / "SegmentationClass"
    instances = out / INSTANCE_DIR
    contexts, parts = out / CONTEXT_DIR, out / PART_DIR
    sets = out / "ImageSets" / "Segmentation"
    for folder in (images, masks, instances, contexts, parts, sets):
        folder.mkdir(parents=True)
    counts = {"train": config.num_train, "val": config.num_val}
    class_counts = {split: [0] * config.num_classes for split in SPLITS}
    # Same policy as wsss.runtime.progress (not imported: it pulls in torch): in a
    # rule's log file, redraw every 10 s rather than on every image.
    bar = tqdm(
        total=sum(counts.values()),
        desc=f"synthetic -> {root}",
        unit="img",
        disable=not progress,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,
    )
    with bar:
        for split in SPLITS:
            ids = []
            for index in range(counts[split]):
                image_id = f"{split}_{index:05d}"
                # debug=True draws exactly what the plain call draws (same image and mask);
                # it only also returns the instance, part and context maps.
                image, mask, info = generate_sample(
                    config, sample_rng(config, split, index), debug=True
                )
                Image.fromarray(image).save(images / f"{image_id}.png", format="PNG")
                save_label_png(masks / f"{image_id}.png", mask)
                save_label_png(instances / f"{image_id}.png", instance_label_map(info, mask))
                save_label_png(contexts / f"{image_id}.png", context_label_map(info, mask))
                save_label_png(parts / f"{image_id}.png", part_label_map(info, mask))
                for value in np.unique(mask):
                    if 0 < value < IGNORE_INDEX:
                        class_counts[split][int(value) - 1] += 1
                ids.append(image_id)
                bar.update()
            write_text(sets / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    write_json(
        out / "dataset.json",
        {
            "format_version": FORMAT_VERSION,
            "generator": "wsss.data.synthetic",
            "class_names": class_names(config.num_classes),
            "classes": describe_classes(config.num_classes),
            "num_classes": config.num_classes,
            "config": config.to_dict(),
            "splits": counts,
            "images_per_class": class_counts,
            "image_ext": ".png",
            "ignore_index": IGNORE_INDEX,
        },
    )


# ---------------------------------------------------------------- the dataset kind


@register_kind
class SyntheticKind(DatasetKind):
    """``kind: synthetic``: the pipeline generates the layout from the ``generator`` block
    (:class:`SyntheticConfig`) at ``root``, and regenerates files a root lost."""

    name = "synthetic"
    generated = True
    own_keys = ("generator",)

    def class_names(self, config: dict[str, Any], layout: VOCLayout) -> list[str]:
        manifest = Path(layout.root) / "dataset.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"datasets.{config.get('name', self.name)}: {manifest} is missing; run "
                "`wsss prepare-data` (or the prepare_data rule) to generate the synthetic benchmark"
            )
        return list(read_json(manifest, what="dataset manifest")["class_names"])

    def prepare(self, config: dict[str, Any], progress: bool = True) -> None:
        try:
            _prepare(config, progress)
        except OSError as err:
            translated = _generation_error(err, config)
            if translated is None or translated is err:
                raise
            raise translated from err

    def check_block(self, name: str, spec: dict[str, Any]) -> list[str]:
        """The ``generator`` block builds a :class:`SyntheticConfig` (unknown keys and bad
        values named)."""
        if "generator" not in spec:
            return []
        try:
            SyntheticConfig.from_dict(spec["generator"])
        except (ValueError, TypeError) as err:
            message = str(err).removeprefix("synthetic generator: ")
            return [f"datasets.{name}.generator: {message}"]
        return []

    def check_inputs(self, name: str, spec: dict[str, Any]) -> list[str]:
        return []  # generated by the prepare_data job

    def dataset_files(self, dataset: Any, splits: Any) -> dict[str, int]:
        """Every file under the root: the generator wrote them all."""
        root = dataset.layout.root
        files = [p for p in sorted(root.rglob("*")) if p.is_file()]
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in files}

    def restore(
        self, config: dict[str, Any], root: Path, problems: dict[str, str], manifest: Path
    ) -> list[str]:
        """Missing or resized files regenerated byte for byte (:func:`repair_synthetic`)."""
        generator = SyntheticConfig.from_dict(config.get("generator", {}))
        return repair_synthetic(generator, root, replace=set(problems))


def _prepare(config: dict[str, Any], progress: bool) -> None:
    """Generate the synthetic root, or complete one that lost files (see :func:`repair_synthetic`)."""
    generator = SyntheticConfig.from_dict(config.get("generator", {}))
    root = Path(config["root"])
    if root.is_dir() and any(root.iterdir()):
        if not (root / "dataset.json").is_file():
            # Ours if its files are what this config generates (dataset.json lost);
            # repair_synthetic refuses a folder holding anything else.
            repair_synthetic(generator, root, replace=set(), progress=progress)
            return
        write_dataset(generator, root, progress=progress)  # raises on another config
        if _missing_layout_files(root):
            repair_synthetic(generator, root, replace=set(), progress=progress)
        return
    write_dataset(generator, root, progress=progress)


def _missing_layout_files(root: Path) -> list[Path]:
    """Split lists, images and masks a generated root's ``dataset.json`` promises but lacks."""
    manifest = json.loads((root / "dataset.json").read_text())
    try:
        layout = VOCLayout.locate(root)
    except FileNotFoundError:  # JPEGImages/ or the mask folder itself is gone
        layout = None
    missing = []
    for split in manifest.get("splits", {}):
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if layout is None or not split_file.is_file():
            missing.append(split_file)
            continue
        for image_id in layout.split_ids(split):
            for path in (layout.image_path(image_id), layout.mask_path(image_id)):
                if not path.is_file():
                    missing.append(path)
    return missing


def repair_synthetic(
    generator: SyntheticConfig, root: Path, replace: set[str], progress: bool = False
) -> list[str]:
    """Complete a generated ``root`` from a fresh generation of the same config.

    The generator is deterministic, so the fresh copy (a hidden sibling, removed at the
    end) must equal every file the root still holds: a file that differs and is not in
    ``replace`` (paths the caller knows are damaged) means the root holds something else,
    and ValueError names it without touching anything. Missing files, and those in
    ``replace``, are then moved in one by one (``os.replace``: atomic per file). Returns
    the relative paths restored.
    """
    root = Path(root)
    fresh = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        write_dataset(generator, fresh, progress=progress)
        generated = {
            p.relative_to(fresh).as_posix(): p for p in sorted(fresh.rglob("*")) if p.is_file()
        }
        present = [n for n in generated if (root / n).is_file()]
        differing = [
            n
            for n in present
            if n not in replace and not filecmp.cmp(root / n, generated[n], shallow=False)
        ]
        if differing or (present == [] and root.exists() and any(root.iterdir())):
            what = (
                f"{root / differing[0]} differs from what this generator config writes"
                if differing
                else "none of its files is one this generator config writes"
            )
            raise ValueError(
                f"synthetic dataset root {root} is incomplete and {what}; refusing to "
                "overwrite it: delete it (the pipeline regenerates it) or choose another root"
            )
        restored = [n for n in generated if n in replace or not (root / n).is_file()]
        for name in restored:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(generated[name], root / name)
        return restored
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


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
