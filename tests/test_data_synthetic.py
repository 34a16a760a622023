"""The synthetic benchmark: determinism, the VOC layout, the labels and every knob."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from wsss.data.palette import IGNORE_INDEX, load_label_png
from wsss.data.synthetic import (
    SyntheticConfig,
    class_names,
    generate_sample,
    part_colour,
    sample_rng,
    write_dataset,
)

SMALL = SyntheticConfig(num_train=24, num_val=8)


def _samples(config: SyntheticConfig, n: int, split: str = "train"):
    return [generate_sample(config, sample_rng(config, split, i), debug=True) for i in range(n)]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    return write_dataset(SMALL, tmp_path_factory.mktemp("synthetic") / "data", progress=False)


# --------------------------------------------------------------------------- determinism


def test_same_config_writes_byte_identical_files(written, tmp_path):
    again = write_dataset(SMALL, tmp_path / "again", progress=False)
    assert _tree(written) == _tree(again)


def test_other_seed_differs(written, tmp_path):
    other = write_dataset(replace(SMALL, seed=1), tmp_path / "other", progress=False)
    a, b = _tree(written), _tree(other)
    assert a.keys() == b.keys()
    assert a["JPEGImages/train_00000.png"] != b["JPEGImages/train_00000.png"]


def test_sample_depends_only_on_its_child_seed():
    first = generate_sample(SMALL, np.random.default_rng([0, 0, 5]))
    again = generate_sample(SMALL, np.random.default_rng([0, 0, 5]))
    # A bigger dataset does not change image 5: its seed does not depend on the count.
    bigger = generate_sample(replace(SMALL, num_train=500), sample_rng(SMALL, "train", 5))
    for a, b, c in zip(first, again, bigger, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


# --------------------------------------------------------------------------- layout


def test_voc_layout(written):
    sets = written / "ImageSets" / "Segmentation"
    ids = {split: (sets / f"{split}.txt").read_text().split() for split in ("train", "val")}
    assert len(ids["train"]) == SMALL.num_train and len(ids["val"]) == SMALL.num_val
    assert ids["train"][0] == "train_00000" and ids["val"][-1] == f"val_{SMALL.num_val - 1:05d}"
    from PIL import Image

    for image_id in ids["train"] + ids["val"]:
        with Image.open(written / "JPEGImages" / f"{image_id}.png") as image:
            assert image.format == "PNG" and image.mode == "RGB"
            size = image.size
        with Image.open(written / "SegmentationClass" / f"{image_id}.png") as label:
            assert label.mode == "P"
        mask = load_label_png(written / "SegmentationClass" / f"{image_id}.png")
        assert mask.shape == (size[1], size[0]) == (SMALL.image_size,) * 2
        assert set(np.unique(mask)) <= set(range(SMALL.num_classes + 1)) | {IGNORE_INDEX}
    manifest = json.loads((written / "dataset.json").read_text())
    assert manifest["class_names"] == class_names(SMALL.num_classes)
    assert manifest["num_classes"] == SMALL.num_classes
    assert manifest["splits"] == {"train": SMALL.num_train, "val": SMALL.num_val}
    assert SyntheticConfig.from_dict(manifest["config"]) == SMALL
    assert manifest["format_version"] >= 1
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")], (
        "temp dir left behind"
    )


def test_instance_maps_follow_voc_segmentation_object(written):
    """SegmentationObject/<id>.png: 0 background, k = k-th object in paint order, 255 where
    the class mask ignores; each object carries exactly its class in the class mask."""
    for split, count in (("train", SMALL.num_train), ("val", SMALL.num_val)):
        for index in range(count):
            image_id = f"{split}_{index:05d}"
            path = written / "SegmentationObject" / f"{image_id}.png"
            instances = load_label_png(path)
            mask = load_label_png(written / "SegmentationClass" / f"{image_id}.png")
            _, _, info = generate_sample(SMALL, sample_rng(SMALL, split, index), debug=True)
            np.testing.assert_array_equal(instances == IGNORE_INDEX, mask == IGNORE_INDEX)
            np.testing.assert_array_equal(instances == 0, mask == 0)
            for k, obj in enumerate(info.objects, start=1):
                own = instances == k
                assert np.count_nonzero(own) == obj.labelled
                assert set(np.unique(mask[own])) == {obj.class_index + 1}
            labelled = mask != IGNORE_INDEX
            np.testing.assert_array_equal(instances[labelled], info.instance_map[labelled])


def test_failure_mode_maps(written):
    """SegmentationContext/<id>.png: the class (1..C) of the visible context, 0 elsewhere;
    SegmentationPart/<id>.png: 1 part, 2 body, 0 elsewhere; both 255 where the mask is."""
    from wsss.data.voc import VOCLayout

    layout = VOCLayout.locate(written)
    assert layout.has_failure_maps()
    seen_context = seen_part = 0
    for split, count in (("train", SMALL.num_train), ("val", SMALL.num_val)):
        for index in range(count):
            image_id = f"{split}_{index:05d}"
            context, part = layout.load_failure_maps(image_id)
            mask = layout.load_mask(image_id)
            _, _, info = generate_sample(SMALL, sample_rng(SMALL, split, index), debug=True)
            ignored = mask == IGNORE_INDEX
            np.testing.assert_array_equal(context == IGNORE_INDEX, ignored)
            np.testing.assert_array_equal(part == IGNORE_INDEX, ignored)
            np.testing.assert_array_equal(context[~ignored], info.context_map[~ignored])
            np.testing.assert_array_equal(part == 1, info.part_map & ~ignored)
            np.testing.assert_array_equal(
                part == 2, (info.instance_map > 0) & ~info.part_map & ~ignored
            )
            # Contexts are background in the mask; parts and bodies are exactly the objects.
            assert not np.any(mask[(context > 0) & ~ignored])
            np.testing.assert_array_equal((part == 1) | (part == 2), (mask > 0) & ~ignored)
            seen_context += np.count_nonzero((context > 0) & ~ignored)
            seen_part += np.count_nonzero(part == 1)
    assert seen_context > 0 and seen_part > 0


def test_a_root_without_failure_mode_maps_is_regenerated(written, tmp_path, caplog):
    import logging
    import shutil

    old = tmp_path / "old"
    shutil.copytree(written, old)
    shutil.rmtree(old / "SegmentationContext")
    shutil.rmtree(old / "SegmentationPart")
    with caplog.at_level(logging.WARNING, logger="wsss"):
        assert write_dataset(SMALL, old, progress=False) == old
    assert "lacks SegmentationContext/, SegmentationPart/" in caplog.text
    assert _tree(old) == _tree(written)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "stale copy left"


def test_a_failed_regeneration_puts_the_old_root_back(written, tmp_path, monkeypatch):
    import shutil

    import wsss.data.synthetic as synthetic

    old = tmp_path / "old"
    shutil.copytree(written, old)
    shutil.rmtree(old / "SegmentationPart")
    before = _tree(old)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(SMALL, old, progress=False)
    assert _tree(old) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_class_names_are_unique_and_readable():
    assert class_names(6) == ["disc", "square", "triangle", "ring", "cross", "diamond"]
    assert len(set(class_names(25))) == 25


# --------------------------------------------------------------------------- labels


def test_labels_at_defaults():
    config = SyntheticConfig()
    samples = _samples(config, 120)
    labels = [set(np.unique(mask)) - {0, IGNORE_INDEX} for _, mask, _ in samples]
    assert all(labels), "every image needs at least one foreground class"
    assert np.mean([len(s) > 1 for s in labels]) > 0.3
    assert set().union(*labels) == set(range(1, config.num_classes + 1))
    for image, mask, info in samples:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        # Occlusion and the ignore band never take more than half of an object.
        assert all(o.labelled >= 0.5 * o.area for o in info.objects)
        for k, o in enumerate(info.objects):
            assert o.labelled == np.count_nonzero(mask == o.class_index + 1) - sum(
                p.labelled
                for j, p in enumerate(info.objects)
                if j != k and p.class_index == o.class_index
            )
        # Context pixels are background (or the ignore band), never an object.
        assert set(np.unique(mask[info.context_map > 0])) <= {0, IGNORE_INDEX}


def test_ignore_band_surrounds_objects():
    for width in (0, 1, 2):
        config = replace(SMALL, ignore_border=width, max_objects=1)
        _, mask, info = _samples(config, 1)[0]
        band = mask == IGNORE_INDEX
        if width == 0:
            assert not band.any()
            continue
        # The band lies outside the object, touches it, and grows with the width.
        assert not (band & (info.instance_map > 0)).any()
        obj = info.instance_map > 0
        grown = obj.copy()
        for _ in range(width):
            grown[1:] |= grown[:-1].copy()
            grown[:-1] |= grown[1:].copy()
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
        assert band.any() and not (band & ~grown).any()


def test_ignore_band_between_objects_lies_on_the_occluded_side():
    config = replace(SMALL, ignore_border=2, min_objects=3, max_objects=3)
    for _, mask, info in _samples(config, 30):
        top = info.instance_map == len(info.objects)
        assert (
            mask[top] == info.objects[-1].class_index + 1
        ).all()  # the topmost keeps every pixel
        assert all(o.labelled > 0 for o in info.objects)


def test_tiny_images_and_objects_still_get_labels():
    config = replace(
        SMALL, image_size=16, min_object_frac=0.25, max_object_frac=0.4, ignore_border=2
    )
    for _, mask, info in _samples(config, 100):
        assert set(np.unique(mask)) - {0, IGNORE_INDEX}
        assert all(o.labelled > 0 for o in info.objects)


# --------------------------------------------------------------------------- knobs


def test_no_context_when_disabled():
    config = replace(SMALL, context_prob=0.0, context_alone_prob=0.0)
    for _, _, info in _samples(config, 40):
        assert not info.context_map.any()
        assert not any(o.has_context for o in info.objects) and not info.alone_contexts


def test_every_object_gets_its_context():
    config = replace(SMALL, context_prob=1.0, context_alone_prob=0.0)
    for _, _, info in _samples(config, 40):
        assert all(o.has_context for o in info.objects)
        assert set(np.unique(info.context_map)) - {0} <= {o.class_index + 1 for o in info.objects}
    single = replace(config, max_objects=1)
    for _, _, info in _samples(single, 20):
        # Alone in the image, the object's context shows around it.
        assert np.count_nonzero(info.context_map == info.objects[0].class_index + 1) > 0


def test_context_rate_and_alone_rate():
    config = replace(SMALL, context_prob=0.5, context_alone_prob=0.2)
    samples = _samples(config, 300)
    flags = [o.has_context for _, _, info in samples for o in info.objects]
    assert abs(np.mean(flags) - 0.5) < 0.08
    absent = sum(
        config.num_classes - len({o.class_index for o in info.objects}) for _, _, info in samples
    )
    alone = sum(len(info.alone_contexts) for _, _, info in samples)
    assert abs(alone / absent - 0.2) < 0.04
    for _, _, info in samples:
        assert not set(info.alone_contexts) & {o.class_index for o in info.objects}


def test_context_tint():
    plain = replace(SMALL, noise=0.0, context_prob=1.0, max_objects=1)
    full = replace(plain, context_tint=1.0)
    for (image_p, _, info_p), (image_f, _, info_f) in zip(
        _samples(replace(plain, context_tint=0.0), 10), _samples(full, 10), strict=True
    ):
        c = info_f.objects[0].class_index
        ctx = info_f.context_map == c + 1
        # Fully tinted: the texture collapses to the class's part colour.
        expected = np.rint(part_colour(c, full.num_classes)).astype(int)
        assert np.abs(image_f[ctx].astype(int) - expected).max() <= 1
        # Untinted: two grey tones around the background colour, no class hue.
        pixels = image_p[info_p.context_map > 0].astype(int)
        assert (pixels.max(axis=1) - pixels.min(axis=1)).max() <= 24


@pytest.mark.parametrize("part_frac", [0.1, 0.25, 0.6, 1.0])
def test_part_fraction(part_frac):
    config = replace(SMALL, part_frac=part_frac)
    for _, _, info in _samples(config, 15):
        for o in info.objects:
            assert abs(o.part_area / o.area - part_frac) <= 1 / o.area + 1e-9
    # Measured on the visible pixels too (single objects: no occlusion).
    _, _, info = _samples(replace(config, max_objects=1), 1)[0]
    assert abs(info.part_map.sum() / (info.instance_map > 0).sum() - part_frac) < 0.02


def test_part_colour_is_class_specific_and_body_colour_is_shared():
    config = replace(SMALL, noise=0.0, colour_jitter=0.0, max_objects=1, body_colours=2)
    bodies, parts = {}, {}
    for image, _, info in _samples(config, 60):
        c = info.objects[0].class_index
        body = (info.instance_map > 0) & ~info.part_map
        parts.setdefault(c, set()).add(tuple(image[info.part_map][0]))
        bodies.setdefault(c, set()).add(tuple(image[body][0]))
    assert all(len(colours) == 1 for colours in parts.values())
    assert len({next(iter(colours)) for colours in parts.values()}) == len(parts)
    all_bodies = set().union(*bodies.values())
    assert len(all_bodies) == 2  # shared palette
    assert sum(len(colours) == 2 for colours in bodies.values()) >= len(bodies) - 1


def test_object_sizes_span_the_range():
    config = replace(SMALL, min_object_frac=0.15, max_object_frac=0.6)
    objects = [o for _, _, info in _samples(config, 120) for o in info.objects]
    sizes = np.array([o.size for o in objects]) / config.image_size
    assert sizes.min() >= 0.15 - 1e-9 and sizes.max() <= 0.6 + 1e-9
    assert sizes.min() < 0.17 and sizes.max() > 0.55
    extent = np.array([o.extent / o.size for o in objects])
    assert extent.min() > 0.75 and extent.max() < 1.35


def test_object_count_knob():
    config = replace(SMALL, min_objects=2, max_objects=2, min_object_frac=0.15, max_object_frac=0.3)
    counts = [len(info.objects) for _, _, info in _samples(config, 30)]
    assert set(counts) == {2}
    config = replace(SMALL, num_classes=3)
    for _, mask, _ in _samples(config, 30):
        assert set(np.unique(mask)) <= {0, 1, 2, 3, IGNORE_INDEX}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"num_clases": 4}, "num_clases"),
        ({"num_train": -1}, "num_train"),
        ({"max_objects": -2}, "max_objects"),
        ({"part_frac": 0.0}, "part_frac"),
        ({"part_frac": 1.5}, "part_frac"),
        ({"context_prob": -0.1}, "context_prob"),
        ({"min_object_frac": 0.6, "max_object_frac": 0.4}, "min_object_frac"),
        ({"min_objects": 4, "max_objects": 3}, "min_objects"),
        ({"body_colours": 0}, "body_colours"),
        ({"image_size": "64"}, "image_size"),
        ({"image_size": 16, "min_object_frac": 0.1}, "min_object_frac"),
        ({"context_tint": 2.0}, "context_tint"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        SyntheticConfig.from_dict(override)


def test_unknown_key_lists_known_keys():
    with pytest.raises(ValueError, match="known keys: seed, image_size"):
        SyntheticConfig.from_dict({"colour": 1})


def test_from_dict_normalises_numbers():
    config = SyntheticConfig.from_dict({"part_frac": 1, "seed": np.int64(3)})
    assert config == replace(SyntheticConfig(), part_frac=1.0, seed=3)
    assert type(config.part_frac) is float and type(config.seed) is int


def test_existing_root(written, tmp_path):
    before = _tree(written)
    assert write_dataset(SMALL, written, progress=False) == written  # same config: untouched
    assert _tree(written) == before
    with pytest.raises(ValueError, match="different config.*num_val"):
        write_dataset(replace(SMALL, num_val=9), written, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="no dataset.json"):
        write_dataset(SMALL, tmp_path / "junk", progress=False)
    (tmp_path / "empty").mkdir()
    assert (write_dataset(SMALL, tmp_path / "empty", progress=False) / "dataset.json").is_file()
