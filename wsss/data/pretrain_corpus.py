"""A generic synthetic corpus for pretraining the embedded benchmark's ViT.

On real data every method starts from an ImageNet-pretrained ViT; this corpus
plays ImageNet's part for the synthetic benchmark (``wsss.data.synthetic``).
It is deliberately *disjoint* from the benchmark, so that pretraining cannot
teach the benchmark's classes:

- **shapes**: star, hexagon, crescent, arrow, bowtie, trapezoid, heart,
  chevron -- none of the benchmark's ten shapes;
- **fills**: solid, linear gradient, radial gradient, speckle, split, outline --
  none of the benchmark's context textures (stripes, checker, dots);
- **parts** (``part_prob`` > 0; off by default): an object may carry 1 to
  ``max_parts`` parts on its body, each a region of the body (the side of a random
  chord, or a blob around a random point of the body) painted in its own colour
  and fill, as real objects have parts of different colours and textures on one
  body. The instance map keeps the whole object (body and parts) as one instance.
  The benchmark's part (one saturated, class-coloured cap per object) is not
  reproduced: parts here have random colours, fills and places;
- **colours**: random per object, so colour carries no class (the benchmark
  ties a part colour to each class);
- **seeds**: image i of corpus seed s is drawn from
  ``SeedSequence([s, i], spawn_key=(CORPUS_SPAWN_KEY,))``; the benchmark's
  seeds carry no spawn key, so no corpus image shares a random stream with a
  benchmark image whatever the two seeds are.

A class is a (shape, fill) pair: 8 x 6 = 48 classes. Each image holds 1 to
``max_objects`` objects of random size, position and rotation on a background
of a random colour, a gentle gradient and small clutter marks of random
colours (labelled background), plus pixel noise. Every object keeps at least
``1 - MAX_HIDDEN`` of its pixels visible.

The corpus lives in memory (20,000 images of 64 px: about 330 MB with the
instance maps) as a :class:`Corpus`; :func:`save_corpus` / :func:`load_corpus`
store it as one ``.npz``. Per-image generation is deterministic and
independent of the corpus size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

CORPUS_SPAWN_KEY = 0x5072_6554  # "PreT": keeps corpus streams apart from the benchmark's
MAX_HIDDEN = 0.4  # a later object may hide at most this share of an earlier one
PLACEMENT_TRIES = 20
CLUTTER_RANGE = (2, 8)  # clutter marks per image
NO_OBJECT = -1  # padding of Corpus.object_classes

Indicator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r, theta = np.hypot(u, v), np.arctan2(v, u)
    return r <= 0.62 + 0.38 * np.cos(5 * theta)


def _hexagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= 0.87) & (0.5 * np.abs(v) + 0.87 * np.abs(u) <= 0.87)


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.55)


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = (np.abs(v) <= 0.22) & (u >= -1.0) & (u <= 0.1)
    head = (u >= 0.0) & (u <= 1.0) & (np.abs(v) <= 0.85 * (1.0 - u))
    return shaft | head


def _bowtie(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= np.abs(u) * 0.9 + 0.08) & (np.abs(u) <= 0.95)


def _trapezoid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v) <= 0.6) & (np.abs(u) <= 0.45 + 0.45 * (v + 0.6) / 1.2)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = 1.25 * u, -1.25 * v + 0.25
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def _chevron(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(v - (0.9 * np.abs(u) - 0.45)) <= 0.3) & (np.abs(u) <= 0.95)


SHAPES: tuple[tuple[str, Indicator], ...] = (
    ("star", _star),
    ("hexagon", _hexagon),
    ("crescent", _crescent),
    ("arrow", _arrow),
    ("bowtie", _bowtie),
    ("trapezoid", _trapezoid),
    ("heart", _heart),
    ("chevron", _chevron),
)
FILLS: tuple[str, ...] = ("solid", "gradient", "radial", "speckle", "split", "outline")


def corpus_class_names() -> list[str]:
    """The 48 class names, ``"<shape>/<fill>"``; class index = shape index * 6 + fill index."""
    return [f"{shape}/{fill}" for shape, _ in SHAPES for fill in FILLS]


@dataclass(frozen=True)
class CorpusConfig:
    """Knobs of the pretraining corpus (documented in ``docs/synthetic.md``)."""

    seed: int = 0
    num_images: int = 20000
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    min_object_frac: float = 0.22  # object size (un-rotated extent) / image side
    max_object_frac: float = 0.6
    noise: float = 0.04  # pixel noise std, as a share of 255
    part_prob: float = 0.0  # chance that an object has parts (0: the original corpus, unchanged)
    max_parts: int = 2  # parts per object with parts: 1..max_parts

    def __post_init__(self) -> None:
        checks = {
            "seed": self.seed >= 0,
            "num_images": self.num_images >= 1,
            "image_size": self.image_size >= 16,
            "min_objects": 1 <= self.min_objects <= self.max_objects,
            "max_objects": 1 <= self.max_objects <= 254,
            "min_object_frac": 0.0 < self.min_object_frac <= self.max_object_frac,
            "max_object_frac": self.max_object_frac <= 1.0,
            "noise": 0.0 <= self.noise <= 0.5,
            "part_prob": 0.0 <= self.part_prob <= 1.0,
            "max_parts": self.max_parts >= 1,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ValueError(f"pretraining corpus: invalid {values} (see docs/synthetic.md)")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CorpusConfig:
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"pretraining corpus: unknown key(s) {unknown}; known: {known}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Corpus:
    """The generated corpus, in memory.

    ``images``: N x S x S x 3 uint8. ``instances``: N x S x S uint8, 0
    background, k = k-th object (paint order). ``object_classes``: N x
    max_objects int16, the class of object k at column k - 1, -1 padding.
    ``class_names``: the 48 ``shape/fill`` names.
    """

    images: np.ndarray
    instances: np.ndarray
    object_classes: np.ndarray
    class_names: list[str]
    config: CorpusConfig

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> np.ndarray:
        """N x 48 float32 multi-hot image labels (the classes present)."""
        out = np.zeros((len(self), len(self.class_names)), dtype=np.float32)
        rows, cols = np.nonzero(self.object_classes >= 0)
        out[rows, self.object_classes[rows, cols]] = 1.0
        return out


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of corpus image ``index``: independent of every other image."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, index], spawn_key=(CORPUS_SPAWN_KEY,))
    )


def _colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
    """A random RGB colour (float 0..255), at least 80 levels (Euclidean) from ``away_from``."""
    for _ in range(50):
        colour = rng.uniform(0, 255, size=3)
        if away_from is None or np.linalg.norm(colour - away_from) >= 80.0:
            return colour
    return 255.0 - away_from  # the complement is always far enough


def _fill(
    fill: str, inside: Indicator, u: np.ndarray, v: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Mixing weight of the second colour, in [0, 1], over the object's unit coordinates."""
    if fill == "solid":
        return np.zeros_like(u)
    if fill == "gradient":
        return np.clip((u + 1.0) / 2.0, 0.0, 1.0)
    if fill == "radial":
        return np.clip(np.hypot(u, v), 0.0, 1.0)
    if fill == "speckle":
        return (rng.random(u.shape) < rng.uniform(0.25, 0.45)).astype(np.float64)
    if fill == "split":
        return (v > 0).astype(np.float64)
    if fill == "outline":  # a band along the outline: outside the shape shrunk to 65 %
        return (~inside(u / 0.65, v / 0.65)).astype(np.float64)
    raise ValueError(f"unknown fill {fill!r}")


def _paint_part(
    image: np.ndarray,
    mask: np.ndarray,
    inside: Indicator,
    u: np.ndarray,
    v: np.ndarray,
    body: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Paint one part onto an object's body, in place: a region of ``mask`` (the side of a
    random chord, or a blob around a random body pixel, 10-45 % of the body) in a colour far
    from the body's and a random fill of its own."""
    points = np.flatnonzero(mask)
    if points.size < 4:
        return
    centre = points[int(rng.integers(points.size))]
    cu, cv = u.flat[centre], v.flat[centre]
    if rng.random() < 0.5:  # the far side of a chord through a body pixel
        theta = rng.uniform(0, 2 * math.pi)
        region = (u - cu) * math.cos(theta) + (v - cv) * math.sin(theta) > 0
    else:  # a blob around a body pixel
        region = np.hypot(u - cu, v - cv) <= rng.uniform(0.3, 0.7)
    part = mask & region
    share = part.sum() / mask.sum()
    if not 0.1 <= share <= 0.45:
        return  # too small to see or too large to be a part: no part this time
    first = _colour(rng, away_from=body)
    second = _colour(rng, away_from=first)
    fill = FILLS[int(rng.integers(len(FILLS)))]
    weight = _fill(fill, inside, u, v, rng)[part][:, None]
    image[part] = (1.0 - weight) * first + weight * second


def generate_image(
    config: CorpusConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One corpus image: (S x S x 3 uint8, S x S uint8 instance map, object classes in paint order)."""
    side = config.image_size
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5

    base = rng.uniform(40, 215, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xs - side / 2) * math.cos(angle) + (ys - side / 2) * math.sin(angle)) / side
    image = base[None, None, :] + (rng.uniform(-40, 40) * ramp)[..., None]
    for _ in range(int(rng.integers(CLUTTER_RANGE[0], CLUTTER_RANGE[1] + 1))):
        # Clutter: short bars of random colour, 1-3 px thick, up to 8 px long (background).
        cx, cy = rng.uniform(0, side, size=2)
        theta = rng.uniform(0, math.pi)
        along = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
        across = -(xs - cx) * math.sin(theta) + (ys - cy) * math.cos(theta)
        mark = (np.abs(along) <= rng.uniform(1, 4)) & (np.abs(across) <= rng.uniform(0.5, 1.5))
        image[mark] = _colour(rng)

    instances = np.zeros((side, side), dtype=np.uint8)
    areas: list[int] = []
    classes: list[int] = []
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(count):
        c = int(rng.integers(len(SHAPES) * len(FILLS)))
        _, inside = SHAPES[c // len(FILLS)]
        fill = FILLS[c % len(FILLS)]
        size = side * rng.uniform(config.min_object_frac, config.max_object_frac)
        for _try in range(PLACEMENT_TRIES):
            cx, cy = rng.uniform(size / 2, side - size / 2, size=2)
            rotation = rng.uniform(0, 2 * math.pi)
            cos, sin = math.cos(rotation), math.sin(rotation)
            dx, dy = (xs - cx) / (size / 2), (ys - cy) / (size / 2)
            u, v = cos * dx + sin * dy, -sin * dx + cos * dy
            mask = inside(u, v)
            if not mask.any():
                continue
            if all(
                np.count_nonzero((instances == k + 1) & ~mask) >= (1 - MAX_HIDDEN) * areas[k]
                for k in range(len(areas))
            ):
                break
        else:
            continue  # no room: the image keeps fewer objects
        first = _colour(rng)
        second = _colour(rng, away_from=first)
        weight = _fill(fill, inside, u, v, rng)[mask][:, None]
        image[mask] = (1.0 - weight) * first + weight * second
        # Drawn only when part_prob > 0, so the default corpus keeps its random streams.
        if config.part_prob > 0 and rng.random() < config.part_prob:
            for _part in range(int(rng.integers(1, config.max_parts + 1))):
                _paint_part(image, mask, inside, u, v, first, rng)
        instances[mask] = len(areas) + 1
        areas.append(int(mask.sum()))
        classes.append(c)
    if not classes:  # every object needs a first placement that fits an empty image
        raise RuntimeError("pretraining corpus: no object could be drawn")

    image += rng.normal(0.0, config.noise * 255.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances, classes


def generate_corpus(config: CorpusConfig) -> Corpus:
    """All ``config.num_images`` images (about 0.7 ms each at 64 px on one core)."""
    side, n = config.image_size, config.num_images
    images = np.zeros((n, side, side, 3), dtype=np.uint8)
    instances = np.zeros((n, side, side), dtype=np.uint8)
    object_classes = np.full((n, config.max_objects), NO_OBJECT, dtype=np.int16)
    for index in range(n):
        image, inst, classes = generate_image(config, image_rng(config.seed, index))
        images[index], instances[index] = image, inst
        object_classes[index, : len(classes)] = classes
    return Corpus(images, instances, object_classes, corpus_class_names(), config)


def save_corpus(corpus: Corpus, path: str | os.PathLike) -> Path:
    """Store a corpus as one compressed ``.npz`` (with its config), written atomically."""
    import json

    from wsss.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            images=corpus.images,
            instances=corpus.instances,
            object_classes=corpus.object_classes,
            class_names=np.array(corpus.class_names),
            config=np.array(json.dumps(corpus.config.to_dict())),
        )
    return path


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Read a corpus written by :func:`save_corpus`; ValueError names a missing array."""
    import json

    with np.load(path, allow_pickle=False) as data:
        missing = {"images", "instances", "object_classes", "class_names", "config"} - set(data)
        if missing:
            raise ValueError(f"{path}: not a pretraining corpus, missing {sorted(missing)}")
        config = CorpusConfig.from_dict(json.loads(str(data["config"])))
        return Corpus(
            data["images"],
            data["instances"],
            data["object_classes"],
            [str(name) for name in data["class_names"]],
            config,
        )
