"""Dataset manifests: the files a dataset's root holds, checked and repaired."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.datasets import check_files, prepare_dataset, verify_dataset
from wsss.data.palette import save_label_png


@pytest.fixture
def synthetic(tmp_path):
    config = {
        "kind": "synthetic",
        "name": "tiny",
        "root": str(tmp_path / "data" / "tiny"),
        "train_split": "train",
        "eval_split": "train",
        "generator": {"num_train": 5, "num_val": 3, "image_size": 32},
    }
    manifest = prepare_dataset(config, progress=False)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(manifest))
    return config, manifest, path


def _contents(root, files):
    return {name: (root / name).read_bytes() for name in files}


def test_manifest_records_every_generated_file_with_its_size(synthetic):
    config, manifest, _ = synthetic
    files = manifest["files"]
    # 8 images + 8 class masks + 8 x 3 instance / context / part maps + 2 split lists +
    # dataset.json
    assert len(files) == 8 + 8 + 8 * 3 + 2 + 1
    assert files["dataset.json"] > 0 and "ImageSets/Segmentation/val.txt" in files
    root = manifest["root"]
    assert all(size == (Path(root) / n).stat().st_size for n, size in files.items())
    assert check_files(root, files) == {}


@pytest.mark.parametrize(
    "name",
    [
        "JPEGImages/train_00002.png",
        "SegmentationClass/val_00001.png",
        "ImageSets/Segmentation/train.txt",
        "dataset.json",
    ],
)
def test_prepare_data_restores_a_deleted_file_byte_for_byte(synthetic, name):
    config, manifest, _ = synthetic
    root = Path(config["root"])
    before = _contents(root, manifest["files"])
    (root / name).unlink()
    again = prepare_dataset(config, progress=False)
    assert again == manifest
    assert _contents(root, manifest["files"]) == before
    assert [p.name for p in root.parent.iterdir()] == ["tiny"]  # no temporary left beside it


def test_verify_repairs_missing_and_resized_files_from_the_manifest(synthetic):
    config, manifest, path = synthetic
    root = Path(config["root"])
    before = _contents(root, manifest["files"])
    (root / "SegmentationClass" / "train_00000.png").unlink()
    truncated = root / "JPEGImages" / "val_00002.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    restored = verify_dataset(config, path)
    assert restored == ["JPEGImages/val_00002.png", "SegmentationClass/train_00000.png"]
    assert _contents(root, manifest["files"]) == before
    assert verify_dataset(config, path) == []  # intact: nothing to do


def test_a_root_holding_other_files_is_never_overwritten(synthetic):
    config, manifest, _ = synthetic
    root = Path(config["root"])
    image = root / "JPEGImages" / "train_00001.png"
    image.write_bytes(b"\0" * image.stat().st_size)  # same size, other bytes: not ours
    (root / "SegmentationClass" / "train_00004.png").unlink()
    with pytest.raises(ValueError, match=r"train_00001.png differs from what this generator"):
        prepare_dataset(config, progress=False)
    assert image.read_bytes() == b"\0" * image.stat().st_size
    assert not (root / "SegmentationClass" / "train_00004.png").exists()


def test_a_foreign_folder_is_not_taken_for_a_dataset_without_dataset_json(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    config = {"kind": "synthetic", "root": str(root), "train_split": "train", "eval_split": "train"}
    with pytest.raises(ValueError, match="none of its files is one this generator config writes"):
        prepare_dataset(config, progress=False)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "Annotations"):
        (root / folder).mkdir(parents=True)
    ids = ["2007_000001", "2007_000002"]
    for i, image_id in enumerate(ids):
        Image.fromarray(np.full((4, 5, 3), 10 * i, np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg"
        )
        mask = np.zeros((4, 5), np.uint8)
        mask[1:3, 1:3] = 15
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    config = {
        "kind": "voc",
        "name": "voc",
        "root": str(root),
        "train_split": "train",
        "eval_split": "train",
    }
    return config, root


def test_voc_manifest_records_the_read_files_and_names_a_missing_one(voc, tmp_path):
    config, root = voc
    manifest = prepare_dataset(config, progress=False)
    assert sorted(manifest["files"]) == [
        "ImageSets/Segmentation/train.txt",
        "JPEGImages/2007_000001.jpg",
        "JPEGImages/2007_000002.jpg",
        "SegmentationClass/2007_000001.png",
        "SegmentationClass/2007_000002.png",
    ]
    path = tmp_path / "voc.json"
    path.write_text(json.dumps(manifest))
    (root / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        verify_dataset(config, path)
    message = str(err.value)
    assert f"{root / 'SegmentationClass' / '2007_000002.png'}: missing" in message
    assert str(path) in message and "restore them from the original download" in message
    # The stage itself names a missing image (its id and split too).
    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"image .*2007_000001.jpg of id '2007_000001' \(split 'train'\) is missing",
    ):
        prepare_dataset(config, progress=False)


def test_a_manifest_without_files_checks_nothing(voc, tmp_path):
    config, root = voc
    manifest = prepare_dataset(config, progress=False)
    del manifest["files"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(manifest))
    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    assert verify_dataset(config, path) == []
