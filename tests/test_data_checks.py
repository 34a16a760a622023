"""Up-front dataset checks (wsss.data.checks), and prepare-data refusing bad data in the workflow."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA
from PIL import Image, ImageFile
from test_workflow import _copy_project, _snakemake

from wsss.data import checks
from wsss.data.checks import DataCheckError, check_dataset, image_problem
from wsss.data.datasets import prepare_dataset
from wsss.data.palette import save_label_png
from wsss.stages import prepare_data

VOC_SAMPLE = SHARED_DATA / "voc_sample" / "VOCdevkit" / "VOC2012"
TRAIN = ["2007_000032", "2011_000003", "2011_000006", "2011_000025"]
VAL = ["2007_000033"]


def _voc(dest: Path, train_aug: list[str] | None = None) -> Path:
    """A writable copy of the shared VOC sample (5 images) with a ``train_aug`` list."""
    if not VOC_SAMPLE.is_dir():
        pytest.skip(f"the shared VOC sample is not at {VOC_SAMPLE}")
    shutil.copytree(VOC_SAMPLE, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    lists = dest / "ImageSets" / "Segmentation"
    lists.joinpath("train_aug.txt").write_text("\n".join(train_aug or TRAIN) + "\n")
    return dest


def _config(root: Path, **keys) -> dict:
    return {
        "kind": "voc",
        "name": "voc",
        "root": str(root),
        "train_split": "train_aug",
        "eval_split": "train",
        "seg_split": "val",
        "mask_dir": "SegmentationClassAug",
        "label_source": "auto",
        **keys,
    }


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_the_sample_passes_and_eval_inside_train_stays_allowed(tmp_path):
    """VOC's protocol: eval_split (train) inside train_split (train_aug), seg_split (val)
    apart. Every image and mask of the three splits is recorded with what decoding found."""
    root = _voc(tmp_path / "voc")
    record = check_dataset(_config(root))
    assert record["version"] == checks.FACTS_VERSION
    assert sorted(record["files"]) == sorted(
        [f"JPEGImages/{i}.jpg" for i in TRAIN + VAL]
        + [f"SegmentationClassAug/{i}.png" for i in TRAIN + VAL]
    )
    image = record["files"]["JPEGImages/2007_000033.jpg"]
    assert image["mode"] == "RGB" and image["size"] == [500, 366] and len(image["blake2b"]) == 32
    assert record["files"]["SegmentationClassAug/2007_000033.png"]["values"] == [0, 1, 255]


def test_a_train_split_that_lists_a_seg_image_is_refused_naming_both_lines(tmp_path):
    root = _voc(tmp_path / "voc", train_aug=[*TRAIN[:2], VAL[0], *TRAIN[2:]])
    lists = root / "ImageSets" / "Segmentation"
    with pytest.raises(DataCheckError) as err:
        check_dataset(_config(root))
    message = str(err.value)
    assert "train_split 'train_aug' lists 1 image(s) of seg_split 'val'" in message
    assert f"'2007_000033': {lists / 'train_aug.txt'}:3 and {lists / 'val.txt'}:1" in message
    assert f"remove them from {lists / 'train_aug.txt'}" in message


@pytest.mark.parametrize(
    "name", ["JPEGImages/2007_000033.jpg", "SegmentationClassAug/2011_000003.png"]
)
def test_a_truncated_image_or_mask_is_refused_even_if_truncated_loading_is_on(tmp_path, name):
    """Truncated files raise although a library (or the user) set Pillow's
    LOAD_TRUNCATED_IMAGES, which would pad them with grey; the flag is restored after."""
    root = _voc(tmp_path / "voc")
    _truncate(root / name)
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(DataCheckError) as err:
            check_dataset(_config(root))
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    message = str(err.value)
    image_id = Path(name).stem
    split = "val" if image_id in VAL else "train_aug"
    line = (VAL if split == "val" else TRAIN).index(image_id) + 1
    assert f"{root / name} (" in message and f"of id {image_id!r}" in message
    assert f"{root / 'ImageSets' / 'Segmentation' / split}.txt:{line}" in message
    assert "cannot be decoded completely" in message and "truncated" in message


def test_a_truncated_png_image_is_refused(tmp_path):
    root = _voc(tmp_path / "voc")
    jpg = root / "JPEGImages" / "2011_000025.jpg"
    with Image.open(jpg) as image:
        image.save(jpg.with_suffix(".png"))
    jpg.unlink()
    _truncate(jpg.with_suffix(".png"), keep=0.8)
    with pytest.raises(DataCheckError, match=r"2011_000025\.png \(image of id '2011_000025'"):
        check_dataset(_config(root))


def _png(tmp_path, array, mode=None, **info):
    path = tmp_path / "x.png"
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **info)
    return checks.decode_image(path.read_bytes())


def test_image_modes(tmp_path):
    rgb = np.full((4, 5, 3), 90, np.uint8)
    assert image_problem(_png(tmp_path, rgb)) is None
    assert image_problem(_png(tmp_path, rgb[..., 0])) is None  # L
    opaque = np.concatenate([rgb, np.full((4, 5, 1), 255, np.uint8)], axis=2)
    assert image_problem(_png(tmp_path, opaque)) is None  # RGBA, alpha carries nothing
    holes = opaque.copy()
    holes[0, 0, 3] = 0
    assert "transparent pixels (mode RGBA, alpha down to 0)" in image_problem(_png(tmp_path, holes))
    grey16 = np.full((4, 5), 40000, np.uint16)
    facts = _png(tmp_path, grey16)
    assert facts["mode"].startswith("I") and "clips rather than scales" in image_problem(facts)
    palette = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5), "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.save(tmp_path / "p.png", transparency=3)
    facts = checks.decode_image((tmp_path / "p.png").read_bytes())
    assert (
        facts["mode"] == "P" and facts["min_alpha"] == 0 and "transparent" in image_problem(facts)
    )
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (5, 4), (10, 20, 30, 0)).save(cmyk)
    assert image_problem(checks.decode_image(cmyk.read_bytes())) is None  # as the official loaders


def test_an_image_mode_it_cannot_convert_is_refused_naming_the_file(tmp_path):
    root = _voc(tmp_path / "voc")
    jpg = root / "JPEGImages" / "2011_000006.jpg"
    with Image.open(jpg) as image:
        rgba = image.convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(jpg.with_suffix(".png"))
    jpg.unlink()
    with pytest.raises(
        DataCheckError,
        match=r"2011_000006\.png \(image of id '2011_000006'.*"
        r"train_aug\.txt:3.*transparent pixels",
    ):
        check_dataset(_config(root))


def test_masks_missing_out_of_range_or_of_another_size_are_refused(tmp_path):
    root = _voc(tmp_path / "voc")
    masks = root / "SegmentationClassAug"
    (masks / "2007_000033.png").unlink()  # a val (seg_split) mask
    save_label_png(masks / "2011_000003.png", np.full((338, 500), 21, np.uint8))
    save_label_png(masks / "2011_000006.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataCheckError) as err:
        check_dataset(_config(root))
    message = str(err.value)
    assert "3 file(s) of the splits in use" in message
    assert f"{masks / '2007_000033.png'} (mask of id '2007_000033'" in message
    assert "val.txt:1): does not exist" in message
    assert "holds class values [21] outside 0..20" in message
    assert "is 10x10 pixels but its image is 500x375" in message


def test_a_train_only_image_labelled_by_its_xml_needs_no_mask(tmp_path):
    root = _voc(tmp_path / "voc")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "2011_000025.xml").write_text(
        "<annotation><object><name>bus</name></object></annotation>"
    )
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(TRAIN[:3]) + "\n")
    (root / "SegmentationClassAug" / "2011_000025.png").unlink()
    record = check_dataset(_config(root))
    assert "SegmentationClassAug/2011_000025.png" not in record["files"]
    with pytest.raises(DataCheckError, match="2011_000025.png .*does not exist"):
        check_dataset(_config(root, label_source="mask"))


def test_a_rerun_decodes_only_changed_files_and_threads_do_not_change_the_record(
    tmp_path, monkeypatch
):
    root = _voc(tmp_path / "voc")
    config = _config(root)
    first = check_dataset(config, threads=1)
    assert check_dataset(config, threads=3) == first

    decoded = []
    for name in ("decode_image", "decode_mask"):
        original = getattr(checks, name)
        monkeypatch.setattr(
            checks, name, lambda data, original=original: decoded.append(1) or original(data)
        )
    assert check_dataset(config, previous=first) == first
    assert decoded == []  # nothing changed: nothing decoded
    with Image.open(root / "JPEGImages" / "2011_000003.jpg") as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            root / "JPEGImages" / "2011_000003.jpg"
        )
    again = check_dataset(config, previous=first)
    assert len(decoded) == 1
    changed = "JPEGImages/2011_000003.jpg"
    assert again["files"][changed]["blake2b"] != first["files"][changed]["blake2b"]
    _truncate(root / "JPEGImages" / "2011_000003.jpg")
    with pytest.raises(DataCheckError, match="2011_000003.jpg"):
        check_dataset(config, previous=again)  # a recorded id whose file changed is checked
    stale = dict(first, version=checks.FACTS_VERSION - 1)
    decoded.clear()
    _voc(tmp_path / "fresh")
    check_dataset(_config(tmp_path / "fresh"), previous=stale)
    assert len(decoded) == len(first["files"])  # another record version: decoded again


def test_the_synthetic_manifest_records_every_image_and_mask_of_its_splits(tmp_path):
    config = {
        "kind": "synthetic",
        "name": "tiny",
        "root": str(tmp_path / "tiny"),
        "train_split": "train",
        "eval_split": "train",
        "seg_split": "val",
        "generator": {"num_train": 5, "num_val": 3, "image_size": 32},
    }
    prepare_dataset(config, progress=False)
    record = check_dataset(config)
    assert len(record["files"]) == 2 * (5 + 3)
    assert record["files"]["JPEGImages/val_00002.png"]["size"] == [32, 32]


# ----------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_prepare_data_refuses_bad_datasets_before_any_job_trains(tmp_path):
    """The smoke preset with four VOC-layout datasets, run up to their manifests (the rule
    every training job waits for), with -k: a train_aug that lists a val image (issue case
    1), a truncated val JPEG (case 2) and an id listed twice are refused by prepare-data,
    naming the file, id and list line, and leave no manifest. The sound copy passes, decoding
    none of the files an earlier check recorded (one Snakemake run)."""
    project = _copy_project(tmp_path / "project")
    data = tmp_path / "data"
    _voc(data / "good")
    _voc(data / "leaky", train_aug=[*TRAIN, VAL[0]])
    _truncate(_voc(data / "truncated") / "JPEGImages" / "2007_000033.jpg")
    _voc(data / "repeated", train_aug=[*TRAIN, TRAIN[1]])
    names = ["good", "leaky", "truncated", "repeated"]
    override = project / "check.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "results_dir": "results-check",
                "grid": {"datasets": names},
                "datasets": {
                    n: {k: v for k, v in _config(data / n).items() if k != "name"} for n in names
                },
            }
        )
    )
    targets = [f"results-check/data/{n}.json" for n in names]
    # The record an earlier check of the sound copy kept (prepare-data --cache): the run
    # decodes none of its files, and writes the same record into the manifest.
    cache = project / "results-check" / "data" / "good.checked.json"
    cache.parent.mkdir(parents=True)
    options = {"out": str(tmp_path / "earlier.json"), "cache": str(cache), "threads": 1}
    config = _config(data / "good", name="good")
    prepare_data.run(argparse.Namespace(config=config, no_progress=True, **options))
    before = json.loads(cache.read_text())["checked"]
    assert len(before["files"]) == 10

    args = ["--configfile", "configs/smoke.yaml", str(override)]
    result = _snakemake(project, *targets, "-k", *args, check=False)
    assert result.returncode != 0
    logs = project / "results-check" / "logs" / "prepare_data"
    log = {n: (logs / f"{n}.log").read_text() for n in names}
    lists = {n: data / n / "ImageSets" / "Segmentation" for n in names}
    assert "train_split 'train_aug' lists 1 image(s) of seg_split 'val'" in log["leaky"]
    assert (
        f"{lists['leaky'] / 'train_aug.txt'}:5 and {lists['leaky'] / 'val.txt'}:1" in log["leaky"]
    )
    truncated = data / "truncated" / "JPEGImages" / "2007_000033.jpg"
    assert (
        f"{truncated} (image of id '2007_000033', listed at {lists['truncated'] / 'val.txt'}:1)"
        in log["truncated"]
    )
    assert "cannot be decoded completely" in log["truncated"]
    assert (
        f"{lists['repeated'] / 'train_aug.txt'}: 1 id(s) listed more than once: "
        "'2011_000003' on lines 2, 5" in log["repeated"]
    )
    for n in ("leaky", "truncated", "repeated"):  # no manifest: the next run checks again
        assert not (project / "results-check" / "data" / f"{n}.json").exists()
    assert "10 image and mask file(s) checked, 0 decoded, 10 unchanged" in log["good"]
    assert json.loads((project / targets[0]).read_text())["checked"] == before
