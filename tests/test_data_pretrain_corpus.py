"""The generic pretraining corpus: determinism, disjointness from the benchmark, labels, storage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from wsss.data import synthetic
from wsss.data.pretrain_corpus import (
    FILLS,
    MAX_HIDDEN,
    NO_OBJECT,
    SHAPES,
    CorpusConfig,
    corpus_class_names,
    generate_corpus,
    generate_image,
    image_rng,
    load_corpus,
    save_corpus,
)

SMALL = CorpusConfig(num_images=40)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(SMALL)


def test_deterministic_and_independent_of_size(corpus):
    again = generate_corpus(SMALL)
    np.testing.assert_array_equal(corpus.images, again.images)
    bigger = generate_corpus(replace(SMALL, num_images=60))
    np.testing.assert_array_equal(corpus.images, bigger.images[:40])
    np.testing.assert_array_equal(corpus.instances, bigger.instances[:40])
    other = generate_corpus(replace(SMALL, seed=1))
    assert not np.array_equal(corpus.images, other.images)


def test_disjoint_from_the_benchmark():
    benchmark_shapes = {shape.name for shape in synthetic.SHAPES}
    assert not benchmark_shapes & {name for name, _ in SHAPES}
    benchmark_textures = {texture.kind for texture in synthetic.TEXTURES}
    assert not benchmark_textures & set(FILLS)
    # No corpus stream equals a benchmark stream for the same small seeds and indices.
    for seed in range(3):
        for index in range(3):
            ours = image_rng(seed, index).random(4)
            for split in synthetic.SPLITS:
                theirs = synthetic.sample_rng(
                    synthetic.SyntheticConfig(seed=seed), split, index
                ).random(4)
                assert not np.allclose(ours, theirs)


def test_class_names():
    names = corpus_class_names()
    assert len(names) == len(set(names)) == len(SHAPES) * len(FILLS) == 48
    assert names[0] == "star/solid" and names[7] == "hexagon/gradient"


def test_instances_labels_and_occlusion_limit(corpus):
    assert corpus.images.shape == (40, 64, 64, 3) and corpus.images.dtype == np.uint8
    labels = corpus.labels()
    for i in range(len(corpus)):
        classes = corpus.object_classes[i]
        count = int((classes != NO_OBJECT).sum())
        assert SMALL.min_objects <= count <= SMALL.max_objects
        assert set(np.unique(corpus.instances[i])) <= set(range(count + 1))
        assert set(np.flatnonzero(labels[i])) == {int(c) for c in classes[:count]}
    # Re-draw one image's objects to check the occlusion limit on their full masks.
    config = replace(SMALL, max_objects=6, min_object_frac=0.4, max_object_frac=0.6)
    for index in range(20):
        _, instances, classes = generate_image(config, image_rng(0, index))
        for k in range(1, len(classes) + 1):
            assert np.count_nonzero(instances == k) > 0
    assert MAX_HIDDEN < 1


def test_save_and_load(corpus, tmp_path):
    path = save_corpus(corpus, tmp_path / "corpus.npz")
    loaded = load_corpus(path)
    np.testing.assert_array_equal(loaded.images, corpus.images)
    np.testing.assert_array_equal(loaded.object_classes, corpus.object_classes)
    assert loaded.class_names == corpus.class_names and loaded.config == corpus.config
    np.savez(tmp_path / "other.npz", images=corpus.images)
    with pytest.raises(ValueError, match="missing"):
        load_corpus(tmp_path / "other.npz")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"num_images": 0}, "num_images"),
        ({"min_objects": 4}, "min_objects"),
        ({"noise": 2}, "noise"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        CorpusConfig(**override)
    with pytest.raises(ValueError, match="unknown"):
        CorpusConfig.from_dict({"colour": 1})


def test_parts_repaint_the_body_but_not_the_instance_map():
    """part_prob 1: every one-object image keeps its instance map and its background (no
    noise here), and most get a differently coloured region inside the object."""
    plain = CorpusConfig(num_images=20, min_objects=1, max_objects=1, noise=0.0)
    with_parts = generate_corpus(replace(plain, part_prob=1.0, max_parts=2))
    without = generate_corpus(plain)
    np.testing.assert_array_equal(with_parts.instances, without.instances)
    outside = (without.instances == 0)[..., None]
    np.testing.assert_array_equal(
        np.where(outside, with_parts.images, 0), np.where(outside, without.images, 0)
    )
    changed = [
        bool((with_parts.images[i] != without.images[i])[without.instances[i] > 0].any())
        for i in range(len(without))
    ]
    assert sum(changed) >= 10
    with pytest.raises(ValueError, match="part_prob"):
        CorpusConfig(part_prob=1.5)
