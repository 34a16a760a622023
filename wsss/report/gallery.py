"""The CAM gallery of a dataset: the same images for every method, side by side.

One PNG per dataset. Rows are images, chosen deterministically from the
``report`` block of params (a seed and a count; images with several ground-truth
classes first, since they show co-occurrence errors). Columns: the image, its
ground truth, then for every method (one run, e.g. the first seed) the CAM
overlay and that method's pseudo-label. In the overlay each pixel takes the
VOC palette colour of its strongest ground-truth class, blended over a grey
copy of the image with an opacity that grows with that class's CAM value, so one picture shows
both where each class fires and how strongly. Label maps use the VOC palette;
``255`` (ignore) is drawn white. A legend at the bottom names the colours.

The grid is composed pixel by pixel (nearest-neighbour enlargement, so 64 px
images stay crisp at 128 px) and only the text is drawn with a font, which
makes the PNG's size a simple function of the number of images and methods
(see :class:`GalleryLayout`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss.cam_store import CamReader, CamRecord
from wsss.data.datasets import open_dataset
from wsss.data.palette import IGNORE_INDEX, load_label_png, voc_palette
from wsss.data.voc import VOCLayout
from wsss.io import atomic_path

log = logging.getLogger("wsss")

IGNORE_COLOUR = (255, 255, 255)
# Opacity of a pixel whose CAM value is 1, as a fraction: the overlay is integer arithmetic.
CAM_OPACITY = Fraction(4, 5)
# ITU-R BT.601 luma weights in thousandths (0.299, 0.587, 0.114; they sum to 1000).
GREY_WEIGHTS = (299, 587, 114)
FONT_SIZE = 13
LINE_H = 17


@dataclass
class GalleryMethod:
    """One method column group: its CAM artifact and (optionally) its pseudo-label folder."""

    name: str
    label: str
    cams: Path
    pseudo_labels: Path | None = None


# ----------------------------------------------------------------- choosing images


def choose_images(
    layout: VOCLayout, ids: Sequence[str], count: int, seed: int, min_classes: int = 2
) -> list[str]:
    """``count`` image ids, the same for the same (ids, seed): a seeded shuffle, scanned
    for images with at least ``min_classes`` ground-truth classes.

    When fewer than ``count`` images qualify, the remaining rows are the images
    with the most classes (ties in shuffle order). Scanning stops as soon as
    enough images qualify, so a large split costs a few mask reads.
    """
    if count < 1:
        raise ValueError(f"report.gallery_images must be at least 1, got {count}")
    ids = list(ids)
    if not ids:
        raise ValueError("the gallery has no images to choose from (empty split)")
    order = np.random.default_rng(seed).permutation(len(ids))
    chosen: list[str] = []
    scanned: list[tuple[int, int, str]] = []  # (-classes, position, id)
    for position, index in enumerate(order):
        image_id = ids[index]
        mask = layout.load_mask(image_id)
        present = np.unique(mask)
        classes = int(np.count_nonzero((present != 0) & (present != IGNORE_INDEX)))
        if classes >= min_classes:
            chosen.append(image_id)
            if len(chosen) == min(count, len(ids)):
                return chosen
        else:
            scanned.append((-classes, position, image_id))
    scanned.sort()
    return chosen + [image_id for _, _, image_id in scanned[: count - len(chosen)]]


# ----------------------------------------------------------------- colouring


def _palette_array() -> np.ndarray:
    palette = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    palette[IGNORE_INDEX] = IGNORE_COLOUR
    return palette


def colour_labels(label: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 VOC palette colours, ignore (255) white."""
    return _palette_array()[np.asarray(label, dtype=np.uint8)]


def cam_overlay(image: np.ndarray, record: CamRecord) -> np.ndarray:
    """The image in grey, each pixel tinted by its strongest GT class's colour, opacity ~ CAM value.

    ``image``: HxWx3 uint8; ``record.cams``: kxHxW uint8 CAM values ``q`` (value ``q/255``).
    Returns HxWx3 uint8:

    - grey ``g = round((299 R + 587 G + 114 B) / 1000)`` (BT.601 luma);
    - where a class is present, with ``c`` the colour of the class of the largest ``q``
      (first on ties) and ``a = CAM_OPACITY * q / 255``: ``round((1 - a) g + a c)``.

    Rounding is half up. Everything is integer arithmetic, so the same CAMs give the same
    pixels whatever the CPU kernels: the float32 version (a BLAS product for the grey, whose
    summation order and FMA use depend on the kernel, then np.rint) left the committed
    gallery 16-20 pixel values (one level each) off a rerun whose CAMs were identical.

    Raises ValueError when the CAM's size differs from the image's.
    """
    if record.shape != image.shape[:2]:
        raise ValueError(
            f"CAM of {record.image_id} is {record.shape}, the image is {image.shape[:2]}"
        )
    # Over a grey copy of the image, so class colours stand out on colourful photos.
    rgb = np.asarray(image, dtype=np.int64)
    weighted = sum(w * rgb[..., i] for i, w in enumerate(GREY_WEIGHTS))
    grey = _round_div(weighted, sum(GREY_WEIGHTS))
    out = np.repeat(grey[..., None], 3, axis=2)
    if len(record.classes) == 0:
        return out.astype(np.uint8)
    cams = np.asarray(record.cams)  # k x H x W, uint8 (argmax of q = argmax of q / 255)
    strongest = cams.argmax(axis=0)
    q = np.take_along_axis(cams, strongest[None], axis=0)[0].astype(np.int64)[..., None]
    colours = _palette_array()[np.asarray(record.classes, dtype=np.int64)].astype(np.int64)
    # (1 - a) g + a c with a = (num / den) (q / 255), over the common denominator den * 255.
    den = CAM_OPACITY.denominator * 255
    weight = CAM_OPACITY.numerator * q  # a * den, 0..den
    out = _round_div((den - weight) * out + weight * colours[strongest], den)
    return out.astype(np.uint8)


def _round_div(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """``numerator / denominator`` rounded half up, for non-negative integer arrays."""
    return (2 * numerator + denominator) // (2 * denominator)


def _fit(picture: np.ndarray, cell: int, is_label: bool) -> np.ndarray:
    """Scale into a cell x cell square (aspect kept, centred on white).

    Enlarging is nearest neighbour (small images stay crisp); shrinking a
    photo is area-averaged, a label map stays nearest neighbour so it keeps
    its class colours.
    """
    h, w = picture.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale >= 1 or is_label:
        resample = Image.Resampling.NEAREST
    else:
        resample = Image.Resampling.BOX
    resized = np.asarray(Image.fromarray(picture).resize(size, resample))
    canvas = np.full((cell, cell, 3), 255, dtype=np.uint8)
    top, left = (cell - size[1]) // 2, (cell - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = resized
    return canvas


# ----------------------------------------------------------------- layout


def _font() -> ImageFont.FreeTypeFont:
    # matplotlib (a dependency) ships DejaVu Sans; one fixed font keeps the
    # gallery identical across machines.
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"font {path} (shipped with matplotlib) is missing")
    return ImageFont.truetype(str(path), FONT_SIZE)


def _wrap(text: str, width_px: int, font: ImageFont.FreeTypeFont) -> list[str]:
    """Greedy word wrap to ``width_px`` as the font measures it (a long word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width_px:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


@dataclass
class GalleryLayout:
    """Pixel geometry of the gallery.

    Width: ``margin + id_w + 2 * cell + gap`` for the image and ground-truth
    columns, plus ``group_gap + per_method * cell + (per_method - 1) * gap``
    for each method, plus ``margin``. Height: ``margin + header_h + rows * cell
    + (rows - 1) * gap + legend_h + margin``.
    """

    rows: int
    methods: int
    per_method: int  # 2 with pseudo-labels (CAM, pseudo-label), 1 without
    cell: int
    header_lines: int
    legend_lines: int
    margin: int = 8
    gap: int = 4
    group_gap: int = 14
    id_w: int = 100

    @property
    def group_w(self) -> int:
        return self.per_method * self.cell + (self.per_method - 1) * self.gap

    @property
    def header_h(self) -> int:
        # title line, the method labels, the sub-column titles, a little air
        return LINE_H * (1 + self.header_lines + 1) + 6

    @property
    def legend_h(self) -> int:
        return 8 + LINE_H * self.legend_lines

    @property
    def width(self) -> int:
        fixed = self.margin + self.id_w + 2 * self.cell + self.gap + self.margin
        return fixed + self.methods * (self.group_gap + self.group_w)

    @property
    def height(self) -> int:
        grid = self.rows * self.cell + (self.rows - 1) * self.gap
        return self.margin + self.header_h + grid + self.legend_h + self.margin

    def row_y(self, row: int) -> int:
        return self.margin + self.header_h + row * (self.cell + self.gap)

    def column_x(self, column: int) -> int:
        """x of column 0 (image), 1 (ground truth), then method ``m`` sub-column ``s`` at
        ``2 + m * per_method + s``."""
        x0 = self.margin + self.id_w
        if column < 2:
            return x0 + column * (self.cell + self.gap)
        method, sub = divmod(column - 2, self.per_method)
        start = x0 + 2 * self.cell + self.gap + self.group_gap
        return start + method * (self.group_gap + self.group_w) + sub * (self.cell + self.gap)


def _legend_item_w(name: str, font: ImageFont.FreeTypeFont) -> int:
    return 16 + int(np.ceil(font.getlength(name))) + 14  # swatch, name, space


def _legend_lines(
    entries: list[tuple[str, tuple[int, int, int]]], width: int, font: ImageFont.FreeTypeFont
) -> list[list]:
    lines: list[list] = [[]]
    x = 0
    for name, colour in entries:
        item_w = _legend_item_w(name, font)
        if x + item_w > width and lines[-1]:
            lines.append([])
            x = 0
        lines[-1].append((name, colour))
        x += item_w
    return lines


def render_gallery(
    title: str,
    image_ids: list[str],
    images: list[np.ndarray],
    masks: list[np.ndarray],
    method_labels: list[str],
    overlays: list[list[np.ndarray]],
    pseudo_labels: list[list[np.ndarray]] | None,
    class_names: list[str],
    cell: int,
) -> Image.Image:
    """Compose the gallery; ``overlays[m][i]`` is method m's overlay of image i."""
    font = _font()
    per_method = 1 if pseudo_labels is None else 2
    group_w = per_method * cell + (per_method - 1) * 4
    header_lines = max([len(_wrap(label, group_w, font)) for label in method_labels] + [1])
    present = sorted({int(c) for m in masks for c in np.unique(m) if 0 < c < IGNORE_INDEX})
    palette = _palette_array()
    entries = [("background", tuple(int(v) for v in palette[0]))]
    for c in present:
        name = class_names[c - 1] if c - 1 < len(class_names) else str(c)
        entries.append((name, tuple(int(v) for v in palette[c])))
    entries.append(("ignore", IGNORE_COLOUR))
    probe = GalleryLayout(len(images), len(method_labels), per_method, cell, header_lines, 1)
    text_w = probe.width - 2 * probe.margin
    note = _wrap(
        "CAM: each pixel takes the colour of its strongest ground-truth class, "
        "more opaque where that class's CAM is higher.",
        text_w,
        font,
    )
    legend = _legend_lines(entries, text_w, font)
    layout = GalleryLayout(
        len(images), len(method_labels), per_method, cell, header_lines, len(note) + len(legend)
    )

    canvas = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)

    def paste(picture: np.ndarray, row: int, column: int, is_label: bool) -> None:
        y, x = layout.row_y(row), layout.column_x(column)
        canvas[y : y + cell, x : x + cell] = _fit(picture, cell, is_label)

    for row, (image, mask) in enumerate(zip(images, masks, strict=True)):
        paste(image, row, 0, is_label=False)
        paste(colour_labels(mask), row, 1, is_label=True)
        for m in range(len(method_labels)):
            paste(overlays[m][row], row, 2 + m * per_method, is_label=False)
            if pseudo_labels is not None:
                paste(colour_labels(pseudo_labels[m][row]), row, 3 + m * per_method, True)

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    ink = (0, 0, 0)
    # A frame around every cell, in the gap, so white (ignore) regions keep an edge.
    columns = 2 + len(method_labels) * per_method
    for row in range(len(images)):
        for column in range(columns):
            x, y = layout.column_x(column), layout.row_y(row)
            draw.rectangle([x - 1, y - 1, x + cell, y + cell], outline=(190, 190, 190))
    y_title = layout.margin
    draw.text((layout.margin, y_title), title, fill=ink, font=font)
    y_sub = layout.margin + LINE_H * (1 + header_lines) + 2
    for column, text in ((0, "image"), (1, "ground truth")):
        draw.text((layout.column_x(column), y_sub), text, fill=ink, font=font)
    for m, label in enumerate(method_labels):
        x = layout.column_x(2 + m * per_method)
        for line_no, line in enumerate(_wrap(label, layout.group_w, font)):
            draw.text((x, y_title + LINE_H * (1 + line_no)), line, fill=ink, font=font)
        draw.text((x, y_sub), "CAM", fill=ink, font=font)
        if pseudo_labels is not None:
            draw.text((layout.column_x(3 + m * per_method), y_sub), "pseudo-label", ink, font)
        # a thin rule marks where a method's columns start
        x_rule = x - layout.group_gap // 2
        draw.line(
            [(x_rule, layout.row_y(0)), (x_rule, layout.row_y(len(images)) - layout.gap)],
            fill=(200, 200, 200),
        )
    for row, image_id in enumerate(image_ids):
        y = layout.row_y(row) + cell // 2 - LINE_H // 2
        draw.text((layout.margin, y), image_id, fill=ink, font=font)
    y = layout.row_y(len(images)) - layout.gap + 8
    for line in note:
        draw.text((layout.margin, y), line, fill=ink, font=font)
        y += LINE_H
    for line in legend:
        x = layout.margin
        for name, colour in line:
            draw.rectangle([x, y + 2, x + 12, y + 14], fill=colour, outline=(120, 120, 120))
            draw.text((x + 16, y), name, fill=ink, font=font)
            x += _legend_item_w(name, font)
        y += LINE_H
    return picture


# ----------------------------------------------------------------- the whole gallery


def _load_pseudo_label(folder: Path, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    path = folder / f"{image_id}.png"
    if not path.is_file():
        raise FileNotFoundError(
            f"pseudo-label {path} does not exist; run the pseudo_labels stage for this method"
        )
    label = load_label_png(path)
    if label.shape != shape:
        raise ValueError(f"pseudo-label {path} is {label.shape}, its image is {shape}")
    return label


def write_gallery(
    dataset_config: dict[str, Any],
    gallery_config: dict[str, Any],
    methods: Sequence[GalleryMethod],
    out: str | Path,
    seed: int | None = None,
) -> list[str]:
    """Render the gallery of one dataset to ``out`` (PNG); return the chosen image ids.

    ``gallery_config`` is the ``report`` block of params (``gallery_images``,
    ``gallery_seed``, ``gallery_min_classes``, ``gallery_cell_px``). Either every
    method has a pseudo-label folder or none has.
    """
    if not methods:
        raise ValueError("the gallery needs at least one method")
    with_pseudo = [m.pseudo_labels is not None for m in methods]
    if any(with_pseudo) and not all(with_pseudo):
        missing = [m.name for m in methods if m.pseudo_labels is None]
        raise ValueError(f"pseudo-label folders given for some methods but not for {missing}")
    dataset = open_dataset(dataset_config)
    split = dataset_config["eval_split"]
    # The images come from the split, not from the CAM files, so that the same
    # params show the same images whichever methods the grid holds.
    ids = choose_images(
        dataset.layout,
        dataset.layout.split_ids(split),
        int(gallery_config["gallery_images"]),
        int(gallery_config["gallery_seed"]),
        int(gallery_config["gallery_min_classes"]),
    )
    images = [dataset.layout.load_image(i) for i in ids]
    masks = [dataset.layout.load_mask(i) for i in ids]
    for image_id, image, mask in zip(ids, images, masks, strict=True):
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"{image_id}: image {dataset.layout.image_path(image_id)} is {image.shape[:2]}, "
                f"mask {dataset.layout.mask_path(image_id)} is {mask.shape}"
            )
    overlays = []
    for method in methods:  # CAM files are read one record at a time
        reader = CamReader(method.cams)
        if reader.num_classes != dataset.num_classes:
            raise ValueError(
                f"{method.cams} has {reader.num_classes} classes, dataset {dataset.name} "
                f"has {dataset.num_classes}"
            )
        row = []
        for image_id, image in zip(ids, images, strict=True):
            try:
                record = reader.get(image_id)
            except KeyError:
                raise ValueError(
                    f"{method.cams} has no CAM of image {image_id!r} (split {split!r} of "
                    f"{dataset.name}); the gallery needs every method's CAMs of that split"
                ) from None
            try:
                row.append(cam_overlay(image, record))
            except ValueError as err:
                raise ValueError(f"{method.cams}: {err}") from None
        overlays.append(row)
        reader.close()
    pseudo = None
    if all(with_pseudo):
        pseudo = [
            [
                _load_pseudo_label(Path(m.pseudo_labels), i, mask.shape)
                for i, mask in zip(ids, masks, strict=True)
            ]
            for m in methods
        ]
    run = "" if seed is None else f", seed {seed}"
    title = f"{dataset.name}: {split} split{run}"
    picture = render_gallery(
        title,
        ids,
        images,
        masks,
        [m.label for m in methods],
        overlays,
        pseudo,
        dataset.class_names,
        int(gallery_config["gallery_cell_px"]),
    )
    with atomic_path(out) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    log.info("gallery %s: %d images x %d methods", out, len(ids), len(methods))
    return ids
