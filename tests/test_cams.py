import numpy as np
import pytest
import torch

from wsss.cam_store import dequantize, quantize
from wsss.methods import CAM_REFINERS, TRAINING_METHODS
from wsss.methods.cam_inference import CamSettings, cams_for_batch
from wsss.models import build_model
from wsss.models.attention import class_to_patch, patch_affinity, propagate, select_blocks


def _attention_stack():
    # 2 classes + 4 patches (2x2 grid), 1 head, 3 blocks; block b has value b+1
    # everywhere except a recognisable class->patch pattern.
    blocks = []
    for b in range(3):
        a = torch.full((1, 1, 6, 6), float(b + 1))
        a[0, 0, 0, 2:] = torch.tensor([1.0, 2.0, 3.0, 4.0]) * (b + 1)
        blocks.append(a)
    return blocks


def test_select_blocks():
    assert select_blocks(4, "all") == [0, 1, 2, 3]
    assert select_blocks(4, 3) == [1, 2, 3]
    assert select_blocks(4, [0, -1]) == [0, 3]
    with pytest.raises(ValueError):
        select_blocks(4, 5)
    with pytest.raises(ValueError):
        select_blocks(4, [7])


def test_class_to_patch_sums_last_blocks_by_hand():
    maps = class_to_patch(_attention_stack(), num_classes=2, grid=(2, 2), layers=2, reduce="sum")
    # class 0 row, blocks 2 and 3 (values x2 and x3): [1,2,3,4] * 5
    assert maps.shape == (1, 2, 2, 2)
    assert torch.equal(maps[0, 0], torch.tensor([[5.0, 10.0], [15.0, 20.0]]))
    # class 1 row is constant b+1: 2 + 3
    assert torch.equal(maps[0, 1], torch.full((2, 2), 5.0))
    mean = class_to_patch(_attention_stack(), 2, (2, 2), layers="all", reduce="mean")
    assert torch.equal(mean[0, 0], torch.tensor([[2.0, 4.0], [6.0, 8.0]]))


def test_patch_affinity_and_propagate_by_hand():
    affinity = patch_affinity(_attention_stack(), num_classes=2, layers="all", reduce="sum")
    assert affinity.shape == (1, 4, 4)
    assert torch.equal(affinity, torch.full((1, 4, 4), 6.0))
    cam = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    p = torch.tensor([[[0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]])
    out = propagate(cam, p)
    # gather: out(i) = sum_j P_ij cam(j): rows 0 and 3 see patch 0
    assert torch.equal(out, torch.tensor([[[[0.5, 0.0], [0.0, 1.0]]]]))


def test_quantize_roundtrip():
    x = np.array([0.0, 0.5, 1.0, 1.2, -0.1, 0.2])
    q = quantize(x)
    assert q.dtype == np.uint8
    assert q.tolist() == [0, 128, 255, 255, 0, 51]
    assert np.abs(dequantize(q[:3]) - x[:3]).max() <= 0.5 / 255 + 1e-7


@pytest.fixture
def trained_like(tiny_model_config):
    model = build_model(tiny_model_config, num_classes=3).eval()
    method = TRAINING_METHODS.get("mctformer_v2")()
    return model, method


@pytest.mark.parametrize("refiner_name", ["none", "affinity"])
def test_extraction_invariants(trained_like, refiner_name):
    model, method = trained_like
    refiner = CAM_REFINERS.get(refiner_name)()
    images = torch.randint(
        0, 256, (3, 3, 28, 32), dtype=torch.uint8
    )  # height padded to a patch multiple
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    settings = CamSettings.from_dict(
        {
            "scales": [1.0, 0.5],
            "flip": True,
            "batch_size": 8,
            "class_layers": 2,
            "class_reduce": "sum",
            "fusion": "fused",
            "affinity_layers": "all",
            "affinity_reduce": "sum",
        }
    )
    cams = cams_for_batch(model, method, refiner, images, labels, settings)
    assert cams.shape == (3, 3, 28, 32)
    assert cams.min() >= 0 and cams.max() <= 1
    off = labels == 0
    assert cams[off].abs().max() == 0  # non-GT classes are zeroed
    on_max = cams.amax(dim=(2, 3))[labels > 0]
    assert torch.allclose(on_max, torch.ones_like(on_max), atol=1e-4)  # per-class min-max
    # With flip on, the CAM of a mirrored image is the mirrored CAM.
    flipped = cams_for_batch(model, method, refiner, images.flip(-1), labels, settings)
    assert torch.allclose(flipped, cams.flip(-1), atol=1e-4)


def test_extraction_is_batch_independent(trained_like):
    model, method = trained_like
    refiner = CAM_REFINERS.get("none")()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.ones(4, 3)
    settings = CamSettings.from_dict(
        {
            "scales": [1.0],
            "flip": False,
            "batch_size": 8,
            "class_layers": 3,
            "class_reduce": "sum",
            "fusion": "fused",
            "affinity_layers": "all",
            "affinity_reduce": "sum",
        }
    )
    together = cams_for_batch(model, method, refiner, images, labels, settings)
    alone = torch.cat(
        [
            cams_for_batch(model, method, refiner, images[i : i + 1], labels[:1], settings)
            for i in range(4)
        ]
    )
    assert torch.allclose(together, alone, atol=1e-5)


class _ConstantCam:
    """A stub method whose patch-grid CAM is ``value`` everywhere (``nan_class``: NaN for
    that class only), so the extraction's bilinear upsampling and scale sum see a flat map."""

    def __init__(self, value: float, nan_class: int | None = None, num_classes: int = 3) -> None:
        self.value, self.nan_class, self.num_classes = value, nan_class, num_classes

    def forward(self, model, images, epoch):
        return images

    def cam(self, images, recipe):
        batch, _, height, width = images.shape
        cam = torch.full((batch, self.num_classes, height // 8, width // 8), self.value)
        if self.nan_class is not None:
            cam[:, self.nan_class] = float("nan")
        return cam


_STUB_MODEL = type("StubModel", (), {"patch_size": 8})()


def _stub_settings(scales):
    return CamSettings.from_dict({"scales": scales, "flip": True, "batch_size": 2})


@pytest.mark.parametrize("size", [(32, 48), (37, 53), (64, 64)])
@pytest.mark.parametrize("scales", [[1.0], [0.5, 1.0, 1.5]])
def test_a_constant_cam_extracts_to_zeros(size, scales):
    images = torch.zeros(2, 3, *size, dtype=torch.uint8)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    cams = cams_for_batch(
        _STUB_MODEL,
        _ConstantCam(0.7),
        CAM_REFINERS.get("none")(),
        images,
        labels,
        _stub_settings(scales),
    )
    assert cams.shape == (2, 3, *size)
    assert torch.equal(cams, torch.zeros_like(cams))


def test_a_non_finite_cam_names_the_image_and_the_class():
    images = torch.zeros(2, 3, 32, 48, dtype=torch.uint8)
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    refiner, settings = CAM_REFINERS.get("none")(), _stub_settings([1.0, 0.5])
    with pytest.raises(ValueError, match=r"image img_b, class square \(label 2\)"):
        cams_for_batch(
            _STUB_MODEL,
            _ConstantCam(0.7, nan_class=1),
            refiner,
            images,
            labels,
            settings,
            image_ids=["img_a", "img_b"],
            class_names=["disc", "square", "ring"],
        )
    with pytest.raises(ValueError, match=r"image batch item 1, class 2 holds NaN"):
        cams_for_batch(_STUB_MODEL, _ConstantCam(0.7, 1), refiner, images, labels, settings)
    # A NaN in the map of a class no image has is never used: no error, zeros.
    labels[:, 1] = 0
    cams = cams_for_batch(_STUB_MODEL, _ConstantCam(0.7, 1), refiner, images, labels, settings)
    assert not cams.isnan().any() and cams[:, 1].abs().max() == 0


def test_the_cams_stage_names_the_image_and_class_of_a_non_finite_cam(tmp_path, monkeypatch):
    from conftest import tiny_synthetic_dataset

    import wsss.methods.cam_extraction as stage
    from wsss.data.datasets import open_dataset

    config = tiny_synthetic_dataset(tmp_path / "data", num_train=3, num_val=1, image_size=32)
    dataset = open_dataset(config)
    labels = dataset.layout.image_labels("train_00000", dataset.num_classes)
    c = int(np.flatnonzero(labels)[0])  # the first class of the first image
    stub = _ConstantCam(0.7, nan_class=c, num_classes=dataset.num_classes)
    monkeypatch.setattr(stage, "load_trained", lambda path, device: (_STUB_MODEL, stub, {}))
    job = {
        "dataset": config,
        "refiner": {"name": "none", "params": {}},
        "cam": {"scales": [1.0], "flip": False, "batch_size": 2},
    }
    name = dataset.class_names[c]
    with pytest.raises(ValueError, match=rf"image train_00000, class {name} \(label {c + 1}\)"):
        stage.extract_cams(job, "model.pt", "train", tmp_path / "cams.npz", progress=False)
    assert not (tmp_path / "cams.npz").exists()


def _tiny_trained(tmp_path, tiny_model_config, method_name="mctformer_v2"):
    method = TRAINING_METHODS.get(method_name)()
    model = method.build_model(tiny_model_config, 6)
    torch.save(
        {
            "config": {"method": {"name": method_name, "params": {}}, "model": tiny_model_config},
            "class_names": [str(i) for i in range(6)],
            "model": model.state_dict(),
        },
        tmp_path / "model.pt",
    )
    return tmp_path / "model.pt"


_RECIPE = {
    "scales": [1.0, 0.5],
    "flip": True,
    "batch_size": 3,
    "class_layers": 2,
    "class_reduce": "sum",
    "fusion": "fused",
    "affinity_layers": "all",
    "affinity_reduce": "sum",
}


def test_sharded_extraction_reads_as_the_unsharded_split(tmp_path, tiny_model_config):
    """Three shards of a 10-image split, indexed, hold the unsharded run's CAMs; a shard
    job refuses a split that changed after its plan."""
    from conftest import tiny_synthetic_dataset

    from wsss.cam_store import CamReader, plan_shards, write_shard_index
    from wsss.data.datasets import open_dataset
    from wsss.methods.cam_extraction import extract_cams

    dataset = tiny_synthetic_dataset(tmp_path / "data", num_train=10, num_val=2, image_size=32)
    model_path = _tiny_trained(tmp_path, tiny_model_config)
    cam = {**_RECIPE, "scales": [1.0]}
    config = {"dataset": dataset, "cam": cam, "refiner": {"name": "none", "params": {}}}
    extract_cams(config, model_path, "train", tmp_path / "train.npz", progress=False)
    ids = open_dataset(dataset).layout.split_ids("train")
    plan = plan_shards(ids, 4)
    assert plan["shards"] == 3
    shards = [tmp_path / "train.shards" / f"{i}.npz" for i in range(3)]
    for i, path in enumerate(shards):
        info = extract_cams(config, model_path, "train", path, progress=False, shard=(i, plan))
        assert info["images"] == [4, 4, 2][i]
    write_shard_index(tmp_path / "train.shards.json", shards, images=len(ids))
    whole, sharded = CamReader(tmp_path / "train.npz"), CamReader(tmp_path / "train.shards.json")
    assert whole.ids == sharded.ids == sorted(ids)
    for image_id in ids:
        a, b = whole.get(image_id), sharded.get(image_id)
        assert np.array_equal(a.classes, b.classes) and np.array_equal(a.cams, b.cams)
    changed = plan_shards(ids[:-1], 4)
    with pytest.raises(
        ValueError, match=r"\(10 images\) is not the image list its shard plan was made from \(9"
    ):
        extract_cams(config, model_path, "train", tmp_path / "x.npz", shard=(0, changed))
    with pytest.raises(ValueError, match="shard 3 does not exist"):
        extract_cams(config, model_path, "train", tmp_path / "x.npz", shard=(3, plan))


def test_one_job_writes_each_variant_bitwise_as_its_own_job(tmp_path, tiny_model_config):
    """Four refiners (and a recipe override) of one model from one forward pass per scale:
    every CAM file holds what extracting that variant alone gives, byte for byte; a variant
    whose scales differ gets its own pass and the same guarantee."""
    from conftest import tiny_synthetic_dataset

    from wsss.cam_store import CamReader
    from wsss.methods.cam_extraction import extract_cam_variants, extract_cams

    dataset = tiny_synthetic_dataset(tmp_path / "data", num_train=7, num_val=1, image_size=32)
    model_path = _tiny_trained(tmp_path, tiny_model_config)
    variants = {
        "none": {"cam": _RECIPE, "refiner": {"name": "none", "params": {}}},
        "patchcam_x_attention": {
            "cam": {**_RECIPE, "fusion": "patchcam"},
            "refiner": {"name": "cam_x_attention", "params": {"layers": "all"}},
        },
        "affinity": {"cam": _RECIPE, "refiner": {"name": "affinity", "params": {}}},
        "adcam": {"cam": _RECIPE, "refiner": {"name": "adcam", "params": {}}},
        "one_scale": {
            "cam": {**_RECIPE, "scales": [1.0]},
            "refiner": {"name": "none", "params": {}},
        },
    }
    jobs = {name: (cfg, tmp_path / "together" / f"{name}.npz") for name, cfg in variants.items()}
    info = extract_cam_variants(dataset, jobs, model_path, "train", progress=False)
    assert info["passes"] == 2 and info["variants"] == list(variants)
    for name, cfg in variants.items():
        alone = tmp_path / "alone" / f"{name}.npz"
        extract_cams({"dataset": dataset, **cfg}, model_path, "train", alone, progress=False)
        a, b = CamReader(jobs[name][1]), CamReader(alone)
        assert a.ids == b.ids and len(a.ids) == 7
        for image_id in a.ids:
            x, y = a.get(image_id), b.get(image_id)
            assert np.array_equal(x.classes, y.classes) and np.array_equal(x.cams, y.cams), name
    # the refiners really differ (the test would pass vacuously on equal maps)
    none, affinity = CamReader(jobs["none"][1]), CamReader(jobs["affinity"][1])
    assert any(not np.array_equal(none.get(i).cams, affinity.get(i).cams) for i in none.ids)


def test_variants_with_outputs_pairs_each_variant_with_one_file():
    from wsss.methods.cam_extraction import variants_with_outputs

    config = {"dataset": {"kind": "x"}, "variants": {"a": {"cam": 1}, "b": {"cam": 2}}}
    dataset, jobs = variants_with_outputs(config, ["b=B.npz", "a=A.npz"])
    assert dataset == {"kind": "x"}
    assert {k: (c["cam"], str(p)) for k, (c, p) in jobs.items()} == {
        "a": (1, "A.npz"),
        "b": (2, "B.npz"),
    }
    with pytest.raises(ValueError, match=r"no --out NAME=FILE for the variants \['b'\]"):
        variants_with_outputs(config, ["a=A.npz"])
    with pytest.raises(ValueError, match=r"'c' is not one of \['a', 'b'\]"):
        variants_with_outputs(config, ["a=A.npz", "c=C.npz"])
    with pytest.raises(ValueError, match="expected NAME=FILE"):
        variants_with_outputs(config, ["A.npz"])
    single = {"dataset": {}, "cam": 1, "refiner": 2}
    assert str(variants_with_outputs(single, ["C.npz"])[1]["cams"][1]) == "C.npz"
    with pytest.raises(ValueError, match="one-variant CAM config takes one --out FILE"):
        variants_with_outputs(single, ["a=C.npz"])


def test_variants_of_one_pass_must_share_scales_and_flip():
    from wsss.methods.cam_inference import cams_for_batch_variants

    refiner = CAM_REFINERS.get("none")({})
    a = CamSettings.from_dict(_RECIPE)
    b = CamSettings.from_dict({**_RECIPE, "flip": False})
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="same scales and flip"):
        cams_for_batch_variants(None, None, [(refiner, a), (refiner, b)], images, None)
