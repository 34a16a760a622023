"""The CAM gallery: image choice, colours, grid geometry, errors; and the HTML report."""

import json
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from wsss.cam_store import CamWriter
from wsss.cli import main
from wsss.data.palette import save_label_png, voc_palette
from wsss.data.voc import VOCLayout
from wsss.report.gallery import (
    CAM_OPACITY,
    GalleryMethod,
    cam_overlay,
    choose_images,
    colour_labels,
    write_gallery,
)

SIZE = 16
CLASS_NAMES = ["disc", "square", "ring"]
PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
# image id -> the classes of its mask: three images with two or more classes.
IMAGE_CLASSES = {
    "img_00": [1],
    "img_01": [1, 2],
    "img_02": [3],
    "img_03": [2],
    "img_04": [1, 2, 3],
    "img_05": [],
    "img_06": [2, 3],
    "img_07": [1],
    "img_08": [3],
    "img_09": [2],
}


def _mask(classes):
    """Each class gets a horizontal band; a 255 border as in VOC."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for n, c in enumerate(classes):
        mask[2 + 4 * n : 5 + 4 * n, 2:14] = c
    mask[0, :] = 255
    return mask


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "toy"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"class_names": CLASS_NAMES}))
    rng = np.random.default_rng(0)
    for image_id, classes in IMAGE_CLASSES.items():
        image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.png")
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", _mask(classes))
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(IMAGE_CLASSES))
    return {"name": "toy", "kind": "synthetic", "root": str(root), "eval_split": "train"}


def _cam_file(path, seed):
    rng = np.random.default_rng(seed)
    with CamWriter(path, num_classes=len(CLASS_NAMES)) as writer:
        for image_id, classes in IMAGE_CLASSES.items():
            cams = rng.integers(0, 256, (len(classes), SIZE, SIZE), dtype=np.uint8)
            writer.add(image_id, np.array(classes), cams)
    return path


def _pseudo_dir(path):
    for image_id, classes in IMAGE_CLASSES.items():
        label = _mask(classes)
        label[-2:, :] = 255  # ignored pixels in the last rows
        save_label_png(path / f"{image_id}.png", label)
    return path


@pytest.fixture
def methods(tmp_path):
    return [
        GalleryMethod(
            f"m{n}",
            f"Method {n}",
            _cam_file(tmp_path / f"m{n}.npz", n),
            _pseudo_dir(tmp_path / "pseudo" / f"m{n}"),
        )
        for n in range(3)
    ]


def _gallery_config(images=3, cell=32):
    return {
        "gallery_images": images,
        "gallery_seed": 0,
        "gallery_min_classes": 2,
        "gallery_cell_px": cell,
    }


def test_choice_is_deterministic_and_prefers_several_classes(dataset):
    layout = VOCLayout.locate(dataset["root"])
    ids = list(IMAGE_CLASSES)
    chosen = choose_images(layout, ids, 3, seed=0, min_classes=2)
    assert chosen == choose_images(layout, ids, 3, seed=0, min_classes=2)
    assert sorted(chosen) == ["img_01", "img_04", "img_06"]  # the only multi-class images
    orders = {tuple(choose_images(layout, ids, 3, seed=s, min_classes=2)) for s in range(8)}
    assert len(orders) > 1  # the seed shuffles them
    # Asking for more than qualify fills up with the images with most classes.
    five = choose_images(layout, ids, 5, seed=0, min_classes=2)
    assert set(five[:3]) == {"img_01", "img_04", "img_06"}
    assert all(len(IMAGE_CLASSES[i]) == 1 for i in five[3:])
    assert len(choose_images(layout, ids, 50, seed=0)) == len(ids)


def test_colours_follow_the_voc_palette_and_ignore_is_white():
    label = np.array([[0, 1], [2, 255]], np.uint8)
    coloured = colour_labels(label)
    assert coloured[0, 0].tolist() == [0, 0, 0]
    assert coloured[0, 1].tolist() == PALETTE[1].tolist() == [128, 0, 0]
    assert coloured[1, 0].tolist() == PALETTE[2].tolist()
    assert coloured[1, 1].tolist() == [255, 255, 255]


def test_cam_overlay_tints_by_the_strongest_class():
    from wsss.cam_store import CamRecord

    image = np.full((2, 2, 3), 100, np.uint8)
    cams = np.zeros((2, 2, 2), np.uint8)
    cams[0, 0, 0] = 255  # class 1 fires fully at (0, 0)
    cams[1, 0, 1] = 255  # class 3 fires fully at (0, 1)
    cams[0, 0, 1] = 100  # weaker class 1 there too
    overlay = cam_overlay(image, CamRecord("x", np.array([1, 3]), cams))
    expected = (1 - CAM_OPACITY) * 100 + CAM_OPACITY * PALETTE[[1, 3]].astype(int)
    assert overlay[0, 0].tolist() == [round(v) for v in expected[0]]
    assert overlay[0, 1].tolist() == [round(v) for v in expected[1]]
    assert overlay[1, 1].tolist() == [100, 100, 100]  # no CAM: the grey image
    with pytest.raises(ValueError, match="CAM of x is"):
        cam_overlay(np.zeros((3, 3, 3), np.uint8), CamRecord("x", np.array([1, 3]), cams))


def test_cam_overlay_is_exact_integer_arithmetic():
    """Issue 28, case 9: the gallery churned by one level in 16-20 pixels between runs with
    identical CAMs (float32 products). The overlay is now exact: hand-computed values,
    rounded half up, the same on every machine."""
    from wsss.cam_store import CamRecord

    # (8, 50, 147): luma 0.299*8 + 0.587*50 + 0.114*147 = 48.5 exactly -> 49 (half up;
    # float32 and np.rint gave 48). (10, 200, 30): 123.81 -> 124.
    image = np.array([[[8, 50, 147], [10, 200, 30]]], np.uint8)
    cams = np.array([[[0, 100]], [[0, 60]]], np.uint8)  # classes 1 and 3; at (0,1) class 1
    overlay = cam_overlay(image, CamRecord("x", np.array([1, 3]), cams))
    assert overlay[0, 0].tolist() == [49, 49, 49]  # q = 0: the grey, untinted
    # (0, 1): a = 4/5 * 100/255 = 80/255; class 1's colour (128, 0, 0) over grey 124:
    # R = (175 * 124 + 80 * 128) / 255 = 125.25 -> 125; G = B = 175 * 124 / 255 = 85.09 -> 85.
    assert overlay[0, 1].tolist() == [125, 85, 85]
    # q = 255 (a = 4/5 exactly) of class 1's R = 128 over grey 1:
    # (1 + 4 * 128) / 5 = 102.6 -> 103; G = B = 1/5 -> 0.
    dark = np.array([[[1, 1, 1]]], np.uint8)
    full = CamRecord("y", np.array([1]), np.full((1, 1, 1), 255, np.uint8))
    assert cam_overlay(dark, full)[0, 0].tolist() == [103, 0, 0]
    assert CAM_OPACITY == Fraction(4, 5)


def _size(path):
    with Image.open(path) as image:
        return image.size


def test_gallery_size_follows_the_grid(dataset, methods, tmp_path):
    cell, gap, group_gap = 32, 4, 14  # GalleryLayout's defaults
    ids = write_gallery(dataset, _gallery_config(3, cell), methods, tmp_path / "g3x3.png")
    assert len(ids) == 3
    w33, h33 = _size(tmp_path / "g3x3.png")
    write_gallery(dataset, _gallery_config(3, cell), methods[:1], tmp_path / "g3x1.png")
    write_gallery(dataset, _gallery_config(2, cell), methods, tmp_path / "g2x3.png")
    w31, h31 = _size(tmp_path / "g3x1.png")
    w23, h23 = _size(tmp_path / "g2x3.png")
    # Each method adds a CAM and a pseudo-label column; each image adds a row.
    assert w33 - w31 == 2 * (group_gap + 2 * cell + gap)
    assert h33 - h23 == cell + gap
    assert w33 >= (2 + 2 * len(methods)) * cell and h33 >= 3 * cell
    # Without pseudo-labels each method has one column.
    bare = [GalleryMethod(m.name, m.label, m.cams) for m in methods]
    write_gallery(dataset, _gallery_config(3, cell), bare, tmp_path / "bare.png")
    assert w33 - _size(tmp_path / "bare.png")[0] == len(methods) * (cell + gap)


def test_gallery_shows_the_ground_truth_and_pseudo_label_colours(dataset, methods, tmp_path):
    from wsss.report.gallery import GalleryLayout

    out = tmp_path / "gallery.png"
    ids = write_gallery(dataset, _gallery_config(1, 32), methods[:1], out)
    picture = np.asarray(Image.open(out).convert("RGB"))
    classes = IMAGE_CLASSES[ids[0]]
    # Find the geometry the same way the writer does: rows and columns are fixed offsets.
    layout = GalleryLayout(1, 1, 2, 32, header_lines=1, legend_lines=1)
    y, scale = layout.row_y(0), 32 // SIZE
    band = (2 + 1) * scale  # the middle row of the first class band of _mask
    gt_pixel = picture[y + band, layout.column_x(1) + 8 * scale]
    pseudo_pixel = picture[y + band, layout.column_x(3) + 8 * scale]
    ignored = picture[y + (SIZE - 1) * scale, layout.column_x(3) + 8 * scale]
    assert gt_pixel.tolist() == PALETTE[classes[0]].tolist()
    assert pseudo_pixel.tolist() == PALETTE[classes[0]].tolist()
    assert ignored.tolist() == [255, 255, 255]


def test_same_params_same_picture(dataset, methods, tmp_path):
    write_gallery(dataset, _gallery_config(), methods, tmp_path / "a.png")
    write_gallery(dataset, _gallery_config(), methods, tmp_path / "b.png")
    a = np.asarray(Image.open(tmp_path / "a.png"))
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b.png")))


def test_missing_inputs_are_named(dataset, methods, tmp_path):
    out = tmp_path / "g.png"
    ids = choose_images(VOCLayout.locate(dataset["root"]), list(IMAGE_CLASSES), 3, 0)
    missing_label = methods[1].pseudo_labels / f"{ids[0]}.png"
    missing_label.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing_label)):
        write_gallery(dataset, _gallery_config(), methods, out)

    gone = tmp_path / "gone.npz"
    with pytest.raises(FileNotFoundError, match=str(gone)):
        write_gallery(dataset, _gallery_config(), [GalleryMethod("x", "X", gone)], out)

    with CamWriter(tmp_path / "partial.npz", num_classes=len(CLASS_NAMES)) as partial:
        partial.add("img_00", np.array([1]), np.zeros((1, SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match=r"partial\.npz has no CAM of image"):
        write_gallery(
            dataset, _gallery_config(), [GalleryMethod("p", "P", tmp_path / "partial.npz")], out
        )
    assert not out.exists()


def test_cli_gallery(dataset, methods, tmp_path):
    config = {
        "dataset": dataset,
        "report": _gallery_config(),
        "methods": [{"name": m.name, "label": m.label} for m in methods],
        "seed": 0,
    }
    out = tmp_path / "gallery" / "toy.png"
    args = ["gallery", "--config", json.dumps(config), "--cams", *(str(m.cams) for m in methods)]
    args += ["--pseudo-labels", *(str(m.pseudo_labels) for m in methods), "--out", str(out)]
    assert main(args) == 0 and out.is_file()
    # One CAM file too few: an error message, not a picture.
    out.unlink()
    assert main([a for a in args if a != str(methods[-1].cams)]) == 1
    assert not out.exists()


@pytest.mark.slow
def test_smoke_run_then_html_report_with_table_figures_and_gallery(tmp_path):
    import yaml
    from test_workflow import _copy_project, _snakemake

    project = _copy_project(tmp_path / "project")
    smoke = str(project / "configs" / "smoke.yaml")
    _snakemake(project, "--configfile", smoke)
    results = project / "results-smoke"  # configs/smoke.yaml: results_dir
    params = yaml.safe_load((project / "params.yaml").read_text())
    methods = yaml.safe_load((project / "configs" / "smoke.yaml").read_text())["grid"]["methods"]
    report = params["report"]
    with Image.open(results / "gallery" / "synthetic.png") as gallery:
        width, height = gallery.size
    cell = report["gallery_cell_px"]
    assert width >= (2 + 2 * len(methods)) * cell and height >= report["gallery_images"] * cell
    for name in (
        "cam_miou.png",
        "threshold_curves.png",
        "per_class_iou.png",
        "failure_modes.png",
        "attention_diagnostics.png",
    ):
        assert (results / "figures" / "synthetic" / name).stat().st_size > 0
    assert "| context FP | part recall | body recall |" in (results / "table.md").read_text()
    assert (results / "plots" / "per_class_iou" / "synthetic.csv").is_file()
    assert "<table>" in (results / "table.html").read_text()

    _snakemake(project, "--configfile", smoke, "--report", "results-smoke/report.html")
    page = (results / "report.html").read_text()
    assert "CAM gallery" in page and "synthetic.png" in page
    assert "cam_miou.png" in page and "table.html" in page and "failure_modes.png" in page
    assert "attention_diagnostics.png" in page and "background-to-object ratio" in page
    # the training curves: in the report, and the DVC plot's CSV (one row per epoch)
    assert "train_curves.png" in page and "Training loss on synthetic" in page
    curves = (results / "plots" / "train_curves" / "synthetic.csv").read_text().splitlines()
    epochs = yaml.safe_load((project / "configs" / "smoke.yaml").read_text())["train"]["epochs"]
    assert curves[0].startswith("dataset,run,seed,epoch,loss")
    assert len(curves) == 1 + epochs  # one trained run (the affinity variant shares it)
