"""The COCO converter, on the genuine COCO records of the shared sample and on tiny hand-made cases."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from wsss.cli import main
from wsss.config import ParamsError, validate_params
from wsss.data.coco import (
    IN_PROGRESS,
    CocoConversion,
    category_mapping,
    convert_coco,
    semantic_mask,
)
from wsss.data.datasets import open_dataset, prepare_dataset
from wsss.data.palette import IGNORE_INDEX, load_label_png
from wsss.data.voc import VOCSegmentation

pycocotools_coco = pytest.importorskip("pycocotools.coco")

SHARED_DATA = Path(
    os.environ.get("WSSS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
COCO_SAMPLE = SHARED_DATA / "coco_sample"
REPO = Path(__file__).resolve().parents[1]

# The sample's 2017 names; its "train2017" folder holds real val2017 photos and vice
# versa, each annotation file matching its own folder (shared/data/README.md).
SAMPLE_SOURCE = {
    "root": str(COCO_SAMPLE),
    "splits": {
        "train": {
            "annotations": "annotations/instances_train2017.json",
            "images": "images/train2017",
        },
        "val": {"annotations": "annotations/instances_val2017.json", "images": "images/val2017"},
    },
}


def _need_sample() -> None:
    if not COCO_SAMPLE.is_dir():
        pytest.skip(
            f"real data {COCO_SAMPLE} absent; set WSSS_SHARED_DATA to the folder holding it"
        )


def _coco(split: str):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return pycocotools_coco.COCO(
            str(COCO_SAMPLE / SAMPLE_SOURCE["splits"][split]["annotations"])
        )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    _need_sample()
    root = tmp_path_factory.mktemp("coco") / "converted"
    manifest = convert_coco(CocoConversion.from_source(SAMPLE_SOURCE), root, progress=False)
    return root, manifest


# --------------------------------------------------------------------------- mapping


def test_category_mapping_is_contiguous_in_id_order():
    _need_sample()
    categories = json.loads((COCO_SAMPLE / "annotations" / "instances_val2017.json").read_text())[
        "categories"
    ]
    shuffled = list(reversed(categories))
    mapping = category_mapping(shuffled)
    assert [c.index for c in mapping] == list(range(1, 81))
    assert [c.coco_id for c in mapping] == sorted(c["id"] for c in categories)
    by_name = {c.name: c for c in mapping}
    assert (by_name["person"].index, by_name["person"].coco_id) == (1, 1)
    assert (by_name["toothbrush"].index, by_name["toothbrush"].coco_id) == (80, 90)
    # COCO ids have gaps (12, 26, 29, ...): index != id after the first gap.
    assert (by_name["stop sign"].coco_id, by_name["stop sign"].index) == (13, 12)
    with pytest.raises(ValueError, match="repeat an id"):
        category_mapping(categories + categories[:1])


def test_manifest_records_the_mapping(converted):
    root, manifest = converted
    assert manifest["num_classes"] == 80 and len(manifest["class_names"]) == 80
    assert manifest["categories"][0] == {
        "index": 1,
        "coco_id": 1,
        "name": "person",
        "supercategory": "person",
    }
    names = (root / "class_names.txt").read_text().splitlines()
    assert names[0] == "background" and names[1:] == manifest["class_names"]
    assert manifest["settings"]["crowd"] == "class"
    for split in ("train", "val"):  # the genuine records hold no malformed segmentation
        stats = manifest["splits"][split]
        assert stats["invalid_segmentations"] == stats["invalid_polygons"] == 0


# --------------------------------------------------------------------------- masks


def _instance_masks(coco, image_id):
    anns = coco.imgToAnns.get(image_id, [])
    return anns, [coco.annToMask(a).astype(bool) for a in anns]


@pytest.mark.parametrize(
    "split, min_instances, min_categories", [("train", 80, 20), ("val", 20, 3)]
)
def test_pixel_counts_match_pycocotools_for_non_overlapping_instances(
    converted, split, min_instances, min_categories
):
    root, manifest = converted
    coco = _coco(split)
    index = {c["coco_id"]: c["index"] for c in manifest["categories"]}
    isolated_instances = isolated_categories = 0
    for image_id, info in coco.imgs.items():
        anns, masks = _instance_masks(coco, image_id)
        if not anns:
            continue
        mask = load_label_png(root / "SegmentationClass" / f"{Path(info['file_name']).stem}.png")
        assert mask.shape == (info["height"], info["width"])
        counts = np.bincount(mask.ravel(), minlength=256)
        cover = np.sum(masks, axis=0)
        # Every instance that overlaps no other keeps all its pixels, with its class.
        for ann, pixels in zip(anns, masks, strict=True):
            if pixels.any() and not (cover[pixels] > 1).any():
                assert (mask[pixels] == index[ann["category_id"]]).all()
                isolated_instances += 1
        # A category whose instances overlap no instance at all: its pixel count in the
        # converted mask is the sum of pycocotools' annToMask areas of its instances.
        for category in {a["category_id"] for a in anns}:
            own = [m for a, m in zip(anns, masks, strict=True) if a["category_id"] == category]
            union = np.any(own, axis=0)
            if (cover[union] > 1).any():
                continue
            assert counts[index[category]] == sum(int(m.sum()) for m in own)
            isolated_categories += 1
    assert isolated_instances >= min_instances  # the checks were not vacuous
    assert isolated_categories >= min_categories


def test_overlaps_resolve_to_the_smaller_instance_then_lower_id():
    def ann(ann_id, category, area, crowd=0):
        return {"id": ann_id, "category_id": category, "area": area, "iscrowd": crowd}

    big, small = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    big[:4, :4], small[2:6, 2:6] = True, True
    index = {5: 1, 7: 2}
    for order in ([0, 1], [1, 0]):  # the JSON order does not matter
        anns = [ann(10, 5, 16.0), ann(11, 7, 9.0)]  # declared areas, not pixel counts, decide
        masks = [big, small]
        mask = semantic_mask([anns[i] for i in order], [masks[i] for i in order], 6, 6, index)
        assert mask[3, 3] == 2 and mask[0, 0] == 1 and mask[5, 5] == 2 and mask[0, 5] == 0
    tie = semantic_mask([ann(21, 7, 9.0), ann(20, 5, 9.0)], [small, big], 6, 6, index)
    assert tie[3, 3] == 1  # equal areas: the lower annotation id wins

    crowd = [ann(30, 5, 100.0, crowd=1), ann(31, 7, 9.0)]
    as_class = semantic_mask(crowd, [big, small], 6, 6, index, crowd="class")
    ignored = semantic_mask(crowd, [big, small], 6, 6, index, crowd="ignore")
    assert as_class[0, 0] == 1 and ignored[0, 0] == IGNORE_INDEX
    assert ignored[3, 3] == 2  # an instance inside a crowd region keeps its class
    assert ignored[5, 0] == 0


def test_crowd_modes_on_the_sample(converted, tmp_path):
    root, manifest = converted
    ignore_root = tmp_path / "ignore"
    convert_coco(
        CocoConversion.from_source({**SAMPLE_SOURCE, "crowd": "ignore"}),
        ignore_root,
        progress=False,
    )
    coco = _coco("train")
    crowd_anns = [a for a in coco.anns.values() if a["iscrowd"]]
    assert len(crowd_anns) == manifest["splits"]["train"]["crowd_annotations"] == 4
    index = {c["coco_id"]: c["index"] for c in manifest["categories"]}
    for ann in crowd_anns:
        stem = Path(coco.imgs[ann["image_id"]]["file_name"]).stem
        as_class = load_label_png(root / "SegmentationClass" / f"{stem}.png")
        ignored = load_label_png(ignore_root / "SegmentationClass" / f"{stem}.png")
        pixels = coco.annToMask(ann).astype(bool)
        assert (pixels & (as_class == index[ann["category_id"]])).any()  # "class": its label
        others = [
            coco.annToMask(a).astype(bool)
            for a in coco.imgToAnns[ann["image_id"]]
            if not a["iscrowd"]
        ]
        individual = np.any(others, axis=0) if others else np.zeros_like(pixels)
        # "ignore": 255 exactly where the crowd region lies and no individual instance does.
        assert (ignored[pixels & ~individual] == IGNORE_INDEX).all()
        assert (pixels & ~individual).any()
        assert (ignored[individual] != IGNORE_INDEX).all()
        assert (ignored[~pixels] == as_class[~pixels]).all()


# --------------------------------------------------------------------------- layout


def test_split_lists_images_and_empty_images(converted, tmp_path):
    root, manifest = converted
    train = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    coco = _coco("train")
    with_annotations = sorted(i for i in coco.imgs if coco.imgToAnns.get(i))
    assert train == [Path(coco.imgs[i]["file_name"]).stem for i in with_annotations]
    assert len(train) == 30 and len(val) == 6
    assert manifest["splits"]["train"]["skipped_empty"] == 2  # images 58636, 226111: no objects
    assert "000000058636" not in train
    link = root / "JPEGImages" / f"{train[0]}.jpg"
    assert (
        link.is_symlink()
        and link.resolve() == (COCO_SAMPLE / "images" / "train2017" / f"{train[0]}.jpg").resolve()
    )

    kept = convert_coco(
        CocoConversion.from_source({**SAMPLE_SOURCE, "keep_empty": True, "link": "copy"}),
        tmp_path / "kept",
        progress=False,
    )
    assert kept["splits"]["train"]["images"] == 32
    empty = load_label_png(tmp_path / "kept" / "SegmentationClass" / "000000058636.png")
    assert not empty.any()
    assert not (tmp_path / "kept" / "JPEGImages" / "000000058636.jpg").is_symlink()


def test_reader_derives_labels_from_the_converted_masks(converted):
    root, manifest = converted
    dataset = open_dataset({"kind": "coco", "root": str(root), "name": "coco"})
    assert dataset.num_classes == 80 and dataset.class_names[0] == "person"
    index = {c["coco_id"]: c["index"] for c in manifest["categories"]}
    coco = _coco("train")
    by_stem = {Path(info["file_name"]).stem: i for i, info in coco.imgs.items()}
    data = VOCSegmentation(
        dataset.layout, "train", num_classes=80, label_source=dataset.label_source()
    )
    covered_classes = 0
    for n, stem in enumerate(data.ids):
        labels = set(np.flatnonzero(data.labels[n]) + 1)
        anns, masks = _instance_masks(coco, by_stem[stem])
        annotated = {index[a["category_id"]] for a in anns}
        assert labels and labels <= annotated
        mask = data.layout.load_mask(stem)
        for missing in annotated - labels:  # only classes that lost every pixel to others
            covered_classes += 1
            for ann, pixels in zip(anns, masks, strict=True):
                if index[ann["category_id"]] == missing:
                    assert not (mask[pixels] == missing).any()
    item = data[0]
    assert item["image"].shape[:2] == item["mask"].shape
    assert covered_classes <= 3  # almost every annotated class keeps some pixels

    manifest_out = prepare_dataset(
        {
            "kind": "coco",
            "root": str(root),
            "name": "coco",
            "train_split": "train",
            "eval_split": "train",
            "seg_split": "val",
        },
        progress=False,
    )
    assert manifest_out["splits"] == {"train": 30, "val": 6}


# --------------------------------------------------------------------------- robustness


def test_rerun_is_a_no_op_and_other_settings_are_refused(converted):
    root, manifest = converted
    mask = (
        root
        / "SegmentationClass"
        / f"{(root / 'ImageSets/Segmentation/val.txt').read_text().split()[0]}.png"
    )
    before = mask.stat().st_mtime_ns
    assert convert_coco(CocoConversion.from_source(SAMPLE_SOURCE), root, progress=False) == manifest
    assert mask.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings"):
        convert_coco(CocoConversion.from_source({**SAMPLE_SOURCE, "crowd": "ignore"}), root)


def test_interrupted_conversion_resumes(tmp_path):
    _need_sample()
    conversion = CocoConversion.from_source(SAMPLE_SOURCE)
    done = convert_coco(conversion, tmp_path / "a", progress=False)
    # An interrupted run: the marker, some masks, no manifest.
    partial = tmp_path / "b"
    (partial / "SegmentationClass").mkdir(parents=True)
    (partial / IN_PROGRESS).write_text(
        json.dumps({"format_version": 1, "settings": conversion.to_dict()})
    )
    first = (tmp_path / "a" / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    (partial / "SegmentationClass" / f"{first}.png").write_bytes(
        (tmp_path / "a" / "SegmentationClass" / f"{first}.png").read_bytes()
    )
    resumed = convert_coco(conversion, partial, progress=False)
    assert resumed["splits"] == done["splits"]
    assert not (partial / IN_PROGRESS).exists()

    stranger = tmp_path / "c"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to write"):
        convert_coco(conversion, stranger, progress=False)


def test_wrong_image_folder_fails_before_writing(tmp_path):
    _need_sample()
    swapped = copy.deepcopy(SAMPLE_SOURCE)
    swapped["splits"]["train"]["images"] = "images/val2017"
    with pytest.raises(FileNotFoundError, match=r"32 of 32 images .* not in .*val2017"):
        convert_coco(CocoConversion.from_source(swapped), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    missing = CocoConversion.from_source(
        {"splits": {"train": {"annotations": str(tmp_path / "x.json"), "images": str(tmp_path)}}}
    )
    with pytest.raises(FileNotFoundError, match="x.json does not exist"):
        convert_coco(missing, tmp_path / "out")


def test_source_block_is_checked():
    with pytest.raises(ValueError, match="unknown key"):
        CocoConversion.from_source({"splits": {}, "colour": 1})
    with pytest.raises(ValueError, match="splits"):
        CocoConversion.from_source({"splits": {}})
    with pytest.raises(ValueError, match="annotations and images"):
        CocoConversion.from_source({"splits": {"train": {"annotations": "a.json"}}})
    with pytest.raises(ValueError, match="crowd"):
        CocoConversion.from_source(
            {"splits": {"t": {"annotations": "a", "images": "b"}}, "crowd": "x"}
        )


# --------------------------------------------------------------------------- CLI and params


def test_cli_converts_from_a_dataset_block(tmp_path, capsys):
    _need_sample()
    block = {
        "kind": "coco",
        "name": "coco",
        "root": str(tmp_path / "coco"),
        "source": SAMPLE_SOURCE,
    }
    out = tmp_path / "results" / "coco.conversion.json"
    assert (
        main(["convert-coco", "--config", json.dumps(block), "--out", str(out), "--no-progress"])
        == 0
    )
    assert json.loads(out.read_text())["splits"]["val"]["images"] == 6
    # The same from explicit flags, as a user converts by hand.
    train = SAMPLE_SOURCE["splits"]["train"]
    argv = [
        "convert-coco",
        "--root",
        str(tmp_path / "by_hand"),
        "--split",
        "train",
        str(COCO_SAMPLE / train["annotations"]),
        str(COCO_SAMPLE / train["images"]),
        "--no-progress",
    ]
    assert main(argv) == 0
    assert (
        len((tmp_path / "by_hand" / "ImageSets/Segmentation/train.txt").read_text().split()) == 30
    )
    # A root converted by hand from the same files and options is what the rule's
    # conversion finds: nothing is rewritten.
    splits = SAMPLE_SOURCE["splits"]
    by_hand = ["convert-coco", "--root", str(tmp_path / "coco"), "--no-progress"]
    for name in ("train", "val"):
        paths = [str(COCO_SAMPLE / splits[name][k]) for k in ("annotations", "images")]
        by_hand += ["--split", name, *paths]
    stamp = (tmp_path / "coco" / "dataset.json").stat().st_mtime_ns
    assert main(by_hand) == 0
    assert (tmp_path / "coco" / "dataset.json").stat().st_mtime_ns == stamp
    assert main(["convert-coco", "--no-progress"]) == 1
    assert "--root and at least one --split" in capsys.readouterr().err


@pytest.fixture
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _with_coco(params, root, source):
    params["datasets"]["coco"] = {
        "kind": "coco",
        "root": str(root),
        "train_split": "train",
        "eval_split": "train",
        "seg_split": "val",
        "source": source,
    }
    params["grid"]["datasets"] = ["coco"]
    return params


def test_params_check_coco_sources_until_converted(params, tmp_path, converted):
    _need_sample()
    validate_params(_with_coco(params, tmp_path / "not_yet", SAMPLE_SOURCE))
    missing = {
        "root": str(tmp_path / "raw"),
        "splits": {"train": {"annotations": "instances_train2014.json", "images": "train2014"}},
    }
    with pytest.raises(
        ParamsError,
        match=r"(?s)datasets.coco.source: .*not_yet holds no converted COCO layout.*raw/instances_train2014.json does not exist.*raw/train2014 does not exist",
    ):
        validate_params(_with_coco(params, tmp_path / "not_yet", missing))
    root, _ = converted
    validate_params(_with_coco(params, root, missing))  # converted: the raw files are not needed
    params["datasets"]["coco"]["source"]["splits"]["train"]["colour"] = "x"
    with pytest.raises(ParamsError, match="colour"):
        validate_params(params)


def test_jobs_never_see_the_raw_source(params, tmp_path):
    from wsss.config import dataset_config

    params = _with_coco(params, tmp_path, SAMPLE_SOURCE)
    assert "source" not in dataset_config(params, "coco")


def test_image_sizes_are_checked(tmp_path):
    _need_sample()
    images = tmp_path / "images"
    images.mkdir()
    data = json.loads((COCO_SAMPLE / "annotations" / "instances_val2017.json").read_text())
    for info in data["images"]:
        Image.new("RGB", (8, 8)).save(images / info["file_name"])
    conversion = CocoConversion.from_source(
        {
            "splits": {
                "val": {
                    "annotations": str(COCO_SAMPLE / "annotations" / "instances_val2017.json"),
                    "images": str(images),
                }
            }
        }
    )
    with pytest.raises(ValueError, match="is 8x8 but its annotation says"):
        convert_coco(conversion, tmp_path / "out", progress=False)


@pytest.mark.slow
def test_workflow_converts_once_and_runs_on_the_converted_sample(tmp_path):
    """convert_data (convert-coco) -> prepare_data -> train -> cams -> evaluate on the real
    sample, tiny model."""
    _need_sample()
    from test_workflow import _copy_project, _job_counts, _snakemake

    project = _copy_project(tmp_path / "project")
    override = tmp_path / "coco.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "grid": {"datasets": ["coco"], "methods": ["mctformer_v2"], "seeds": [0]},
                "datasets": {
                    "coco": {
                        "kind": "coco",
                        "root": "data/coco",
                        "train_split": "train",
                        "eval_split": "train",
                        "seg_split": "val",
                        "source": SAMPLE_SOURCE,
                    }
                },
                "cam": {"scales": [0.25], "class_layers": 2},  # 640 px photos, 2-block model
            }
        )
    )
    smoke = str(project / "configs" / "smoke.yaml")
    target = "results-smoke/runs/coco/mctformer_v2/seed0/cam_metrics.json"
    _snakemake(project, "--configfile", smoke, str(override), "--", target)
    metrics = json.loads((project / target).read_text())["cam"]
    assert 0.0 <= metrics["miou"] <= 1.0
    converted = json.loads((project / "results-smoke/data/coco.conversion.json").read_text())
    assert converted["num_classes"] == 80 and converted["splits"]["train"]["images"] == 30
    assert (project / "data/coco/SegmentationClass").is_dir()
    again = _snakemake(project, "-n", "--configfile", smoke, str(override), "--", target)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "convert_data" not in _job_counts(again.stdout)


# --------------------------------------------------------------------------- malformed input

# A tiny hand-made COCO file: 16x12 images, two categories (COCO ids 1 and 3 -> 1 and 2).
SQUARE = [2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]  # a 6x6 square, rows and columns 2..7
OTHER = [10.0, 1.0, 14.0, 1.0, 14.0, 5.0, 10.0, 5.0]  # a 4x4 square at columns 10..13


def _ann(ann_id, image_id, segmentation, category=1, area=36.0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "area": area,
        "bbox": [0, 0, 1, 1],
        "iscrowd": 0,
    }


def _synthetic_coco(folder: Path, annotations, n_images=2) -> CocoConversion:
    images = folder / "images"
    images.mkdir(parents=True)
    infos = []
    for image_id in range(1, n_images + 1):
        name = f"{image_id:012d}.jpg"
        Image.new("RGB", (16, 12), (90, 120, 30)).save(images / name)
        infos.append({"id": image_id, "file_name": name, "width": 16, "height": 12})
    data = {
        "images": infos,
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
    }
    (folder / "instances.json").write_text(json.dumps(data))
    return CocoConversion.from_source(
        {
            "splits": {
                "train": {"annotations": str(folder / "instances.json"), "images": str(images)}
            }
        }
    )


def _polygon_mask(polygons) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 12, 16))).astype(
        bool
    )


@pytest.fixture
def wsss_log(caplog):
    """The warnings of the "wsss" logger (which may not propagate after a CLI test)."""
    import logging

    logger = logging.getLogger("wsss")
    logger.addHandler(caplog.handler)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    # caplog's handler also sits on the root logger: a propagating record would be
    # captured twice (whether it propagates depends on which CLI test ran before)
    logger.propagate = False
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    "segmentation, problem",
    [
        ([[3.0, 3.0, 9.0, 9.0]], "polygon 0 has 4 coordinates"),  # 2 points (pycocotools: a box)
        ([], "empty segmentation list"),
        (None, "null segmentation"),
    ],
    ids=["two_point_polygon", "empty_list", "null"],
)
def test_malformed_segmentation_adds_no_pixels_and_is_counted(
    tmp_path, wsss_log, segmentation, problem
):
    conversion = _synthetic_coco(
        tmp_path, [_ann(11, 1, [SQUARE]), _ann(12, 1, segmentation, category=3, area=4.0)]
    )
    manifest = convert_coco(conversion, tmp_path / "out", progress=False)
    mask = load_label_png(tmp_path / "out" / "SegmentationClass" / "000000000001.png")
    # The valid instance is kept exactly as pycocotools draws it; the bad one adds nothing
    # (though smaller, so it would win any pixel it covered).
    assert np.array_equal(mask == 1, _polygon_mask([SQUARE]))
    assert (mask == 1).sum() == 36 and not (mask == 2).any()
    stats = manifest["splits"]["train"]
    assert stats["invalid_segmentations"] == 1 and stats["annotations_without_pixels"] == 1
    assert stats["invalid_polygons"] == (1 if segmentation else 0)
    assert stats["images"] == 1 and stats["images_per_class"] == [1, 0]
    assert "polygons with fewer than 6 coordinates" in manifest["invalid_segmentation_rule"]
    (warning,) = _warnings(wsss_log)
    assert "annotation 12 (image id 1)" in warning and problem in warning
    assert "instances.json" in warning and "contributes no pixels" in warning


def test_invalid_polygons_next_to_valid_ones_keep_the_valid_ones(tmp_path, wsss_log):
    mixed = [SQUARE, [1.0, 1.0, 4.0, 4.0], OTHER, [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0]]
    conversion = _synthetic_coco(tmp_path, [_ann(21, 1, mixed, category=3)])
    manifest = convert_coco(conversion, tmp_path / "out", progress=False)
    mask = load_label_png(tmp_path / "out" / "SegmentationClass" / "000000000001.png")
    assert np.array_equal(mask == 2, _polygon_mask([SQUARE, OTHER]))
    assert (mask == 2).sum() == 36 + 16 and not (mask == 1).any()
    stats = manifest["splits"]["train"]
    assert stats["invalid_segmentations"] == 1 and stats["invalid_polygons"] == 2
    assert stats["annotations_without_pixels"] == 0
    (warning,) = _warnings(wsss_log)
    assert "annotation 21 (image id 1)" in warning
    assert "polygon 1 has 4 coordinates, polygon 3 has 7 coordinates" in warning
    assert "its other polygons are kept" in warning


def test_an_image_left_without_foreground_follows_the_empty_image_rule(tmp_path, wsss_log):
    annotations = [
        _ann(31, 1, [SQUARE]),
        _ann(32, 2, None),
        _ann(33, 2, [[1.0, 1.0, 3.0, 3.0]], category=3),
        _ann(34, 2, []),
    ]
    conversion = _synthetic_coco(tmp_path, annotations)
    manifest = convert_coco(conversion, tmp_path / "out", progress=False)
    stats = manifest["splits"]["train"]
    assert (stats["images"], stats["skipped_empty"]) == (1, 1)
    assert (tmp_path / "out/ImageSets/Segmentation/train.txt").read_text() == "000000000001\n"
    assert stats["invalid_segmentations"] == stats["annotations_without_pixels"] == 3
    assert sorted(w.split(" (image id")[0].split()[-1] for w in _warnings(wsss_log)) == [
        "32",
        "33",
        "34",
    ]

    kept = convert_coco(
        CocoConversion.from_source({**conversion.to_dict(), "keep_empty": True}),
        tmp_path / "kept",
        progress=False,
    )
    assert kept["splits"]["train"]["images"] == 2
    assert not load_label_png(tmp_path / "kept/SegmentationClass/000000000002.png").any()


def _set_segmentation(path: Path, ann_id: int, segmentation) -> None:
    data = json.loads(path.read_text())
    for annotation in data["annotations"]:
        if annotation["id"] == ann_id:
            annotation["segmentation"] = segmentation
    path.write_text(json.dumps(data))


def test_other_rasterisation_failures_name_the_annotation_and_a_rerun_resumes(tmp_path):
    bad_rle = {"size": [12, 16], "counts": [100]}  # adds up to 100 pixels, not 192
    annotations = [_ann(41, 1, [SQUARE]), _ann(42, 2, [OTHER]), _ann(43, 2, bad_rle, area=4.0)]
    conversion = _synthetic_coco(tmp_path, annotations)
    out = tmp_path / "out"
    with pytest.raises(
        ValueError,
        match=r"annotation 43 \(image id 2, .*000000000002\.jpg\): cannot rasterise .*counts "
        r"add up to 100.*rerun",
    ):
        convert_coco(conversion, out, progress=False)
    first = out / "SegmentationClass" / "000000000001.png"
    assert first.is_file() and (out / IN_PROGRESS).is_file() and not (out / "dataset.json").exists()
    written = first.stat().st_mtime_ns

    for segmentation, message in [
        ({"size": [12, 16], "counts": "!!!"}, "Invalid RLE"),  # pycocotools' own error
        ({"size": [6, 16], "counts": [96]}, "the mask is 6x16, the image 12x16"),
        ("not a mask", "neither a list of polygons nor an RLE"),
        ([SQUARE, 5.0], "annotation 43"),  # a number among the polygons
    ]:
        _set_segmentation(tmp_path / "instances.json", 43, segmentation)
        with pytest.raises(ValueError, match=message):
            convert_coco(conversion, out, progress=False)

    # Fixed in place (same file, same settings): the rerun resumes and keeps the first mask.
    all_background = {"size": [12, 16], "counts": [16 * 12]}
    _set_segmentation(tmp_path / "instances.json", 43, all_background)
    manifest = convert_coco(conversion, out, progress=False)
    assert first.stat().st_mtime_ns == written
    assert manifest["splits"]["train"]["images"] == 2
    assert manifest["splits"]["train"]["invalid_segmentations"] == 0
    second = load_label_png(out / "SegmentationClass" / "000000000002.png")
    assert np.array_equal(second == 1, _polygon_mask([OTHER]))
    assert not (out / IN_PROGRESS).exists()
