"""The VOC-layout reader, on the real VOC samples in the shared data folder and on tmp trees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.palette import load_label_png, save_label_png
from wsss.data.voc import (
    VOC_CLASSES,
    VOCLayout,
    VOCSegmentation,
    labels_from_annotation_xml,
    labels_from_mask,
    official_voc_ids,
    read_id_list,
)

SHARED_DATA = Path(
    os.environ.get("WSSS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
VOC_SAMPLE = SHARED_DATA / "voc_sample"
VOC2012 = VOC_SAMPLE / "VOCdevkit" / "VOC2012"
VOC_MASKS = SHARED_DATA / "voc_masks"

# The classes of the sample images, from shared/data/README.md.
SAMPLE_CLASSES = {
    "2007_000032": {"aeroplane", "person"},
    "2007_000033": {"aeroplane"},
    "2011_000003": {"bottle", "person"},
    "2011_000006": {"chair", "person", "sofa"},
    "2011_000025": {"bus", "car"},
}


def _names(labels: np.ndarray) -> set[str]:
    return {VOC_CLASSES[i] for i in np.flatnonzero(labels)}


def _need(path: Path) -> None:
    if not path.is_dir():
        pytest.skip(f"real data {path} absent; set WSSS_SHARED_DATA to the folder holding it")


def _write_tree(root: Path, ids: list[str], image_suffix: str = ".png", size=(6, 8)) -> None:
    """A tiny layout like the synthetic benchmark's: class i+1 fills the right half of image i."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for n, image_id in enumerate(ids):
        image = np.full((*size, 3), 40 * n, dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}{image_suffix}")
        mask = np.zeros(size, dtype=np.uint8)
        mask[:, size[1] // 2 :] = n + 1
        mask[0, 0] = 255
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


# --------------------------------------------------------------------------- voc_sample


@pytest.mark.parametrize(
    "where", ["voc_sample", "voc_sample/VOCdevkit", "voc_sample/VOCdevkit/VOC2012"]
)
def test_locate_from_each_level(where):
    _need(VOC2012)
    layout = VOCLayout.locate(SHARED_DATA / where)
    assert layout.root == VOC2012
    assert layout.mask_dir == "SegmentationClassAug"
    assert (
        VOCLayout.locate(SHARED_DATA / where, "SegmentationClass").mask_dir == "SegmentationClass"
    )


@pytest.mark.parametrize("mask_dir", ["SegmentationClass", "SegmentationClassAug"])
def test_sample_labels_images_and_masks(mask_dir):
    _need(VOC2012)
    layout = VOCLayout.locate(VOC_SAMPLE, mask_dir)
    assert sorted(layout.split_ids("trainval")) == sorted(SAMPLE_CLASSES)
    for image_id, classes in SAMPLE_CLASSES.items():
        assert layout.mask_path(image_id).parent.name == mask_dir
        labels = layout.image_labels(image_id, 20)  # no Annotations/: "auto" reads the mask
        assert labels.dtype == np.float32 and labels.shape == (20,)
        assert _names(labels) == classes, image_id
        assert _names(layout.image_labels(image_id, 20, source="mask")) == classes
        image, mask = layout.load_image(image_id), layout.load_mask(image_id)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        assert 255 in mask  # VOC masks carry ignore borders


def test_sample_dataset_items():
    _need(VOC2012)
    dataset = VOCSegmentation(VOCLayout.locate(VOC_SAMPLE), "train")
    assert len(dataset) == 4
    assert dataset.labels.shape == (4, 20)
    for index, image_id in enumerate(dataset.ids):
        sample = dataset[index]
        assert set(sample) == {"id", "image", "mask", "labels"}
        assert sample["id"] == image_id
        assert sample["image"].shape[:2] == sample["mask"].shape
        assert sample["labels"].dtype == np.float32
        assert _names(sample["labels"]) == SAMPLE_CLASSES[image_id]
    val = VOCSegmentation(
        VOCLayout.locate(VOC_SAMPLE), "val", transform=lambda s: {**s, "seen": True}
    )
    assert val[0]["id"] == "2007_000033" and val[0]["seen"]


# --------------------------------------------------------------------------- all real masks


@pytest.fixture(scope="module")
def real_mask_labels() -> dict[str, np.ndarray]:
    _need(VOC_MASKS)
    folder = VOC_MASKS / "SegmentationClassAug"
    ids = read_id_list(VOC_MASKS / "ImageSets" / "train.txt")
    ids += read_id_list(VOC_MASKS / "ImageSets" / "val.txt")
    return {i: labels_from_mask(load_label_png(folder / f"{i}.png"), 20) for i in ids}


def test_real_masks_all_have_labels(real_mask_labels):
    assert len(real_mask_labels) == 2913
    empty = [i for i, labels in real_mask_labels.items() if not labels.any()]
    assert not empty
    for image_id, classes in SAMPLE_CLASSES.items():
        assert _names(real_mask_labels[image_id]) == classes


def test_real_train_class_frequency(real_mask_labels):
    counts = np.sum([real_mask_labels[i] for i in official_voc_ids("train")], axis=0)
    assert VOC_CLASSES[int(np.argmax(counts))] == "person"
    assert counts.min() >= 50  # every class is well represented in VOC train
    assert 1.0 < counts.sum() / 1464 < 2.5  # VOC images hold about 1.5 classes each


# --------------------------------------------------------------------------- packaged lists


def test_packaged_official_lists():
    train, val, train_aug = (official_voc_ids(s) for s in ("train", "val", "train_aug"))
    assert (len(train), len(val), len(train_aug)) == (1464, 1449, 10582)
    assert len(set(train)) == 1464 and len(set(val)) == 1449 and len(set(train_aug)) == 10582
    assert not set(train) & set(val)
    assert set(train) <= set(train_aug)
    assert not set(val) & set(train_aug)
    with pytest.raises(ValueError, match="train, val, train_aug"):
        official_voc_ids("trainval")


def test_packaged_lists_match_shared_copies():
    _need(VOC_MASKS)
    for split in ("train", "val", "train_aug"):
        assert official_voc_ids(split) == read_id_list(VOC_MASKS / "ImageSets" / f"{split}.txt")


def test_split_ids_falls_back_to_packaged_list_only_for_voc_trees(tmp_path):
    first = official_voc_ids("train")[0]
    _write_tree(tmp_path / "voc", [first], image_suffix=".jpg")
    (tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt").unlink()
    voc = VOCLayout.locate(tmp_path / "voc")
    assert voc.split_ids("train") == official_voc_ids("train")
    with pytest.raises(FileNotFoundError, match=r"trainval\.txt"):
        voc.split_ids("trainval")
    # A non-VOC tree without val.txt must not silently get the VOC val ids.
    _write_tree(tmp_path / "synthetic", ["s0"])
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        VOCLayout.locate(tmp_path / "synthetic").split_ids("val")


# --------------------------------------------------------------------------- labels


def test_labels_from_mask():
    mask = np.array([[0, 3, 255], [20, 3, 0]], dtype=np.uint8)
    labels = labels_from_mask(mask, 20)
    assert labels.dtype == np.float32 and labels.shape == (20,)
    assert np.flatnonzero(labels).tolist() == [2, 19]
    assert not labels_from_mask(np.array([[0, 255]], dtype=np.uint8), 3).any()
    assert np.flatnonzero(labels_from_mask(mask.astype(np.int64), 20)).tolist() == [2, 19]
    with pytest.raises(ValueError, match=r"\[20\]"):
        labels_from_mask(mask, 5)


def test_labels_from_annotation_xml(tmp_path):
    xml = tmp_path / "x.xml"
    xml.write_text(
        "<annotation><filename>x.jpg</filename>"
        "<object><name>dog</name><difficult>1</difficult></object>"
        "<object><name> person </name></object>"
        "<object><name>dog</name></object></annotation>"
    )
    labels = labels_from_annotation_xml(xml, VOC_CLASSES)
    assert labels.dtype == np.float32 and _names(labels) == {"dog", "person"}
    xml.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(ValueError, match=r"x\.xml.*'unicorn'"):
        labels_from_annotation_xml(xml, VOC_CLASSES)
    xml.write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"x\.xml"):
        labels_from_annotation_xml(xml, VOC_CLASSES)


def test_image_labels_prefers_xml_when_present(tmp_path):
    _write_tree(tmp_path, ["a", "b"])
    layout = VOCLayout.locate(tmp_path, class_names=("one", "two", "three"))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>three</name></object></annotation>"
    )
    assert np.flatnonzero(layout.image_labels("a", 3)).tolist() == [2]  # auto -> xml
    assert np.flatnonzero(layout.image_labels("a", 3, "mask")).tolist() == [0]
    assert np.flatnonzero(layout.image_labels("b", 3)).tolist() == [1]  # no xml -> mask
    with pytest.raises(FileNotFoundError, match=r"b\.xml"):
        layout.image_labels("b", 3, "xml")
    with pytest.raises(ValueError, match="label source"):
        layout.image_labels("a", 3, "both")


# --------------------------------------------------------------------------- synthetic-style tree


def test_png_images_and_segmentation_class_only(tmp_path):
    _write_tree(tmp_path, ["s0", "s1", "s2"])
    layout = VOCLayout.locate(tmp_path)
    assert layout.mask_dir == "SegmentationClass"
    assert layout.image_path("s1").suffix == ".png"
    dataset = VOCSegmentation(layout, "train", num_classes=3)
    assert dataset.labels.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    sample = dataset[1]
    assert sample["image"].shape == (6, 8, 3) and sample["mask"].shape == (6, 8)
    assert (sample["image"] == 40).all()


def test_empty_split_names_the_list(tmp_path):
    _write_tree(tmp_path, ["s0"])
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"Segmentation/val\.txt"):
        VOCSegmentation(VOCLayout.locate(tmp_path), "val", num_classes=1)


def test_read_id_list(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("a\r\n\n  b  \nc")
    assert read_id_list(path) == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_id_list(tmp_path / "missing.txt")
    path.write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n")
    with pytest.raises(ValueError, match="ids.txt:1"):
        read_id_list(path)


# --------------------------------------------------------------------------- errors


def test_locate_empty_dir_explains(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        VOCLayout.locate(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for expected in (
        "JPEGImages/",
        "SegmentationClass",
        "SegmentationClassAug/",
        "ImageSets/Segmentation/",
    ):
        assert expected in message
    with pytest.raises(ValueError, match="mask_dir"):
        VOCLayout.locate(tmp_path, mask_dir="Masks")


def test_locate_with_missing_requested_mask_dir(tmp_path):
    _write_tree(tmp_path, ["s0"])
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug/"):
        VOCLayout.locate(tmp_path, mask_dir="SegmentationClassAug")


def test_missing_and_corrupt_files(tmp_path):
    _write_tree(tmp_path, ["s0", "s1"], image_suffix=".jpg")
    layout = VOCLayout.locate(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/nope\.jpg"):
        layout.load_image("nope")
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass/nope\.png"):
        layout.load_mask("nope")

    (tmp_path / "JPEGImages" / "s0.jpg").write_bytes(b"\x00 definitely not a jpeg \xff" * 10)
    with pytest.raises(ValueError, match=r"JPEGImages/s0\.jpg"):
        layout.load_image("s0")
    good = (tmp_path / "JPEGImages" / "s1.jpg").read_bytes()
    (tmp_path / "JPEGImages" / "s1.jpg").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"JPEGImages/s1\.jpg"):
        layout.load_image("s1")

    (tmp_path / "SegmentationClass" / "s0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"SegmentationClass/s0\.png"):
        layout.load_mask("s0")
    with pytest.raises(ValueError, match=r"SegmentationClass/s0\.png"):
        VOCSegmentation(layout, "train", num_classes=2).labels  # noqa: B018


def test_image_mask_shape_mismatch(tmp_path):
    _write_tree(tmp_path, ["s0"])
    save_label_png(tmp_path / "SegmentationClass" / "s0.png", np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="s0"):
        VOCSegmentation(VOCLayout.locate(tmp_path), "train", num_classes=1)[0]


def test_layout_reads_masks_without_images():
    """A directly built layout needs no JPEGImages/ to derive labels from masks."""
    _need(VOC_MASKS)
    layout = VOCLayout(VOC_MASKS)
    assert layout.resolved_mask_dir == "SegmentationClassAug"
    for image_id, classes in SAMPLE_CLASSES.items():
        assert _names(layout.image_labels(image_id, 20)) == classes


def test_failure_mode_maps_are_optional_and_a_missing_one_is_named(tmp_path):
    _write_tree(tmp_path, ["a"])
    layout = VOCLayout.locate(tmp_path)
    assert not layout.has_failure_maps()  # VOC ships none
    context = np.zeros((6, 8), np.uint8)
    context[:, :2] = 1
    save_label_png(tmp_path / "SegmentationContext" / "a.png", context)
    assert not layout.has_failure_maps()  # both folders are needed
    (tmp_path / "SegmentationPart").mkdir()
    assert layout.has_failure_maps()
    with pytest.raises(FileNotFoundError, match=r"SegmentationPart/a\.png does not exist"):
        layout.load_failure_maps("a")
    part = np.zeros((6, 8), np.uint8)
    part[:, 4:] = 2
    save_label_png(tmp_path / "SegmentationPart" / "a.png", part)
    got_context, got_part = layout.load_failure_maps("a")
    assert np.array_equal(got_context, context) and np.array_equal(got_part, part)


def test_an_id_list_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "train_aug.txt"
    path.write_bytes("\ufeffa\r\nb\r\n".encode())
    assert read_id_list(path) == ["a", "b"]
    path.write_bytes(b"a\n\xff\xfeb\n")
    with pytest.raises(ValueError, match=r"train_aug.txt: not UTF-8"):
        read_id_list(path)


def test_an_id_listed_twice_is_refused_naming_the_file_and_lines(tmp_path):
    path = tmp_path / "train_aug.txt"
    path.write_text("a\nb\nc\na\n")
    with pytest.raises(
        ValueError, match=r"train_aug.txt: 1 id\(s\) listed more than once: 'a' on lines 1, 4"
    ):
        read_id_list(path)
