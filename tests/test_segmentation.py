"""Stage-2 segmentation: the network, the loss, augmentation, multi-scale inference, training."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_synthetic_dataset
from torch import nn

from wsss.data.datasets import open_dataset
from wsss.data.palette import IGNORE_INDEX, save_label_png
from wsss.runtime import set_execution
from wsss.segmentation.data import PseudoLabelDataset
from wsss.segmentation.infer import multiscale_probabilities
from wsss.segmentation.model import Segmenter, SegmenterConfig
from wsss.segmentation.train import (
    SegmentationSettings,
    load_segmenter,
    poly_lr,
    run_segmentation,
    segmentation_loss,
    train_segmenter,
)

TINY_NET = {
    "backbone": "resnet18",
    "pretrained": False,
    "weights": None,
    "out_index": 1,
    "output_stride": None,
    "overrides": {
        "channels": [8, 16, 32, 64],
        "layers": [1, 1, 1, 1],
        "stem_type": "deep",
        "stem_width": 4,
    },
    "head": "aspp",
    "head_channels": 16,
    "dilations": [1, 2],
    "dropout": 0.1,
}


def _net(**changes) -> Segmenter:
    return Segmenter(SegmenterConfig.from_dict({**TINY_NET, **changes}), num_labels=5)


# ---------------------------------------------------------------- the network


def test_local_backbone_weights_load_and_a_missing_file_names_the_key(tmp_path):
    source = _net()
    path = tmp_path / "resnet.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = _net(weights=str(path))
    for name, value in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], value), name
    with pytest.raises(FileNotFoundError, match="segmentation.weights: .*missing.pth"):
        _net(weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("head", ["aspp", "largefov"])
def test_logits_match_non_square_inputs(head):
    model = _net(head=head).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 37, 53))
        assert out.shape == (2, 5, 37, 53)
        assert model(torch.randn(1, 3, 37, 53), size=(20, 30)).shape == (1, 5, 20, 30)
    assert model.stride == 4


def test_backbone_options_reach_timm():
    assert _net(out_index=2).stride == 8
    assert _net(out_index=4).stride == 32
    assert _net(out_index=4, output_stride=8).stride == 8  # DeepLab: dilated last stages
    with torch.no_grad():
        assert _net(out_index=4, output_stride=8)(torch.randn(1, 3, 33, 47)).shape == (1, 5, 33, 47)
    # a null override is dropped, so a preset can remove a key params.yaml sets
    plain = _net(overrides={**TINY_NET["overrides"], "stem_type": None, "stem_width": None})
    assert plain.backbone.conv1.kernel_size == (7, 7)


def test_bad_backbone_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="segmentation.backbone: unknown timm model"):
        _net(backbone="no_such_net")
    with pytest.raises(FileNotFoundError, match="segmentation.weights"):
        _net(weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="segmentation.head"):
        SegmenterConfig.from_dict({**TINY_NET, "head": "fcn"})
    with pytest.raises(ValueError, match="segmentation: unknown key"):
        SegmentationSettings.from_dict({**TINY_NET, "epochz": 3})
    with pytest.raises(ValueError, match="segmentation.crf: unknown CRF setting"):
        SegmentationSettings.from_dict({**TINY_NET, "crf": {"enabled": False, "sigma": 3}})


def test_local_weights_are_loaded(tmp_path):
    source = _net()
    path = tmp_path / "weights.pth"
    # a timm-layout state dict of the (truncated) backbone
    torch.save(source.backbone.state_dict(), path)
    loaded = _net(weights=str(path))
    for (name, a), b in zip(
        source.backbone.state_dict().items(), loaded.backbone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------- loss and schedule


def test_loss_ignores_255():
    logits = torch.randn(2, 5, 4, 6, requires_grad=True)
    labels = torch.randint(0, 5, (2, 4, 6))
    labels[0, :2] = IGNORE_INDEX
    loss = segmentation_loss(logits, labels)
    loss.backward()
    assert logits.grad[0, :, :2].abs().max() == 0  # ignored pixels get no gradient
    assert logits.grad[0, :, 2:].abs().max() > 0
    kept = labels != IGNORE_INDEX
    expected = nn.functional.cross_entropy(logits.detach().permute(0, 2, 3, 1)[kept], labels[kept])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # changing the logits of ignored pixels does not change the loss
    other = logits.detach().clone()
    other[0, :, :2] += 10.0
    assert segmentation_loss(other, labels).item() == pytest.approx(loss.item(), rel=1e-6)
    everything_ignored = torch.full_like(labels, IGNORE_INDEX)
    assert segmentation_loss(logits, everything_ignored).item() == 0.0


def test_poly_schedule():
    assert poly_lr(0.1, 0, 100, 0.9) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100, 0.9) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 100, 100, 0.9) == 0.0


# ---------------------------------------------------------------- multi-scale inference


class _ScaleDependent(nn.Module):
    """Logits that favour class 1 at small inputs and class 2 at large ones."""

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        size = tuple(x.shape[-2:]) if size is None else size
        logits = torch.zeros(x.shape[0], 3, *size)
        logits[:, 1] = 40.0 / x.shape[-1]
        logits[:, 2] = x.shape[-1] / 40.0
        return logits


def test_multiscale_takes_the_elementwise_max_of_softmax():
    x = torch.zeros(1, 3, 20, 40)
    model = _ScaleDependent()
    scales = [0.5, 1.0, 2.0]
    probs = multiscale_probabilities(model, x, scales)
    expected = torch.stack(
        [
            model(torch.zeros(1, 3, int(20 * s), int(40 * s)), size=(20, 40)).softmax(1)
            for s in scales
        ]
    ).amax(0)
    torch.testing.assert_close(probs, expected)
    assert probs.shape == (1, 3, 20, 40)
    # the max of distributions: each class keeps its best scale, so the sum exceeds 1
    assert (probs.sum(1) > 1.0).all()
    with pytest.raises(ValueError, match="at least one scale"):
        multiscale_probabilities(model, x, [])


# ---------------------------------------------------------------- data and training


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A tiny synthetic dataset whose pseudo-labels are its ground truth (trivially learnable)."""
    base = tmp_path_factory.mktemp("seg")
    config = tiny_synthetic_dataset(base / "data", num_train=24, num_val=8, image_size=32)
    dataset = open_dataset(config)
    labels = base / "labels"
    for image_id in dataset.layout.split_ids("train"):
        save_label_png(labels / f"{image_id}.png", dataset.layout.load_mask(image_id))
    return config, labels


def _job(config, epochs=3, **changes):
    seg = {
        **TINY_NET,
        "epochs": epochs,
        "batch_size": 8,
        "crop_size": 32,
        "scale_range": [0.75, 1.25],
        "optimizer": "adamw",
        "lr": 3e-3,
        "head_lr_mult": 10,
        "weight_decay": 1e-4,
        "eval_batch_size": 8,
        **changes,
    }
    return {"dataset": config, "segmentation": seg, "scales": [0.75, 1.0]}


def test_augmentation_is_seeded_and_pads_with_ignore(synthetic):
    config, labels = synthetic
    dataset = open_dataset(config)
    small = PseudoLabelDataset(
        dataset, "train", labels, crop_size=40, scale_range=(0.5, 0.5), seed=3
    )
    image, label = small[0]
    assert image.shape == (3, 40, 40) and label.shape == (40, 40) and label.dtype == torch.int64
    # a 32 px image at half scale is 16 px: the rest of the 40 px crop is padding
    # (bottom rows; a flip only mirrors the columns)
    assert (label[16:] == IGNORE_INDEX).all() and (label[:16] != IGNORE_INDEX).any()
    assert (image[:, 16:] == 0).all()  # the mean colour after normalisation
    again = PseudoLabelDataset(
        dataset, "train", labels, crop_size=40, scale_range=(0.5, 0.5), seed=3
    )
    assert torch.equal(again[0][0], image) and torch.equal(again[0][1], label)
    small.set_epoch(1)
    flips = [torch.equal(small[i][1], again[i][1]) for i in range(len(small))]
    assert not all(flips)  # another epoch draws other crops/flips


def test_missing_pseudo_labels_are_named(synthetic, tmp_path):
    config, _ = synthetic
    dataset = open_dataset(config)
    with pytest.raises(FileNotFoundError, match="run the pseudo_labels stage"):
        PseudoLabelDataset(dataset, "train", tmp_path / "none", crop_size=32)
    (tmp_path / "some").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks the pseudo-labels of 24 train images"):
        PseudoLabelDataset(dataset, "train", tmp_path / "some", crop_size=32)


def test_training_reduces_the_loss_and_is_deterministic(synthetic):
    config, labels = synthetic
    model, history = train_segmenter(_job(config, epochs=6), labels, seed=0, progress=False)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    again, history_again = train_segmenter(_job(config, epochs=6), labels, seed=0, progress=False)
    assert [h["loss"] for h in history] == [h["loss"] for h in history_again]
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    _, other_seed = train_segmenter(_job(config, epochs=6), labels, seed=1, progress=False)
    assert [h["loss"] for h in other_seed] != [h["loss"] for h in history]


def test_sgd_and_frozen_bn_train(synthetic):
    config, labels = synthetic
    job = _job(config, epochs=1, optimizer="sgd", lr=0.01, freeze_bn=True)
    model, history = train_segmenter(job, labels, seed=0, progress=False)
    assert np.isfinite(history[0]["loss"])
    bn = model.backbone.bn1 if hasattr(model.backbone, "bn1") else None
    assert bn is not None and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_run_segmentation_writes_a_loadable_model_and_scores_val(synthetic, tmp_path):
    config, labels = synthetic
    model_path = tmp_path / "segmenter.pt"
    result = run_segmentation(_job(config, epochs=6), labels, 0, model_path, progress=False)
    assert model_path.is_file()
    assert not (tmp_path / "segmenter_checkpoint.pt").exists()
    assert result["split"] == "val" and result["images"] == 8 and result["scales"] == [0.75, 1.0]
    assert 0.0 <= result["miou"] <= 1.0 and result["crf"] is False
    assert result["train"]["epochs"] == 6 and len(result["train"]["history"]) == 6
    json.dumps(result)  # JSON-ready
    loaded = load_segmenter(model_path)
    x = torch.randn(2, 3, 32, 32)
    trained, _ = train_segmenter(_job(config, epochs=6), labels, seed=0, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained.eval()(x))


def test_training_resumes_from_its_checkpoint(synthetic, tmp_path, monkeypatch):
    config, labels = synthetic
    _, full_history = train_segmenter(_job(config, epochs=3), labels, 0, None, False)

    class Interrupted(Exception):
        pass

    saved, original = [], torch.save

    def save_then_stop(obj, path):
        original(obj, path)
        saved.append(obj["epoch"])
        if obj["epoch"] == 2:
            raise Interrupted

    checkpoint = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(torch, "save", save_then_stop)
    with pytest.raises(Interrupted):
        train_segmenter(_job(config, epochs=3), labels, 0, checkpoint, False)
    monkeypatch.setattr(torch, "save", original)
    assert saved == [1, 2] and checkpoint.exists()
    _, history = train_segmenter(_job(config, epochs=3), labels, 0, checkpoint, False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in full_history])
    # a checkpoint of another configuration is not resumed from
    _, other = train_segmenter(_job(config, epochs=3, lr=1e-3), labels, 0, checkpoint, False)
    assert other[0]["loss"] != history[0]["loss"]


def test_crf_at_inference(synthetic):
    pytest.importorskip("pydensecrf.densecrf", reason="the optional pydensecrf2 is not installed")
    from wsss.ops.crf import CrfSettings
    from wsss.segmentation.infer import predict

    model = _net().eval()
    images = torch.randint(0, 256, (2, 3, 24, 40), dtype=torch.uint8)
    plain = predict(model, images, [1.0])
    refined = predict(model, images, [1.0], CrfSettings.segmentation_inference())
    assert plain.shape == refined.shape == (2, 24, 40) and refined.dtype == np.uint8
    assert refined.max() < 5


def test_crf_switch_without_pydensecrf_fails_before_training(synthetic, tmp_path, monkeypatch):
    # None in sys.modules makes "import pydensecrf..." raise ImportError, as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    config, labels = synthetic
    job = _job(config, epochs=1, crf={"enabled": True})
    with pytest.raises(ImportError, match="pydensecrf2"):
        run_segmentation(job, labels, 0, tmp_path / "segmenter.pt", progress=False)
    assert not (tmp_path / "segmenter.pt").exists()


def test_loader_workers_see_the_epoch(synthetic):
    """Augmentation depends on (seed, epoch, image) only: workers must not freeze epoch 0."""
    config, labels = synthetic
    _, in_process = train_segmenter(_job(config, epochs=2), labels, 0, None, False)
    set_execution(workers=1)  # an execution knob (`wsss segment --workers 1`), not a param
    try:
        _, with_workers = train_segmenter(_job(config, epochs=2), labels, 0, None, False)
    finally:
        set_execution()
    assert [h["loss"] for h in with_workers] == pytest.approx([h["loss"] for h in in_process])


def test_a_failed_evaluation_keeps_the_training(synthetic, tmp_path, monkeypatch):
    """The segment job keeps its trained weights until the evaluation succeeds: the rerun
    after a failed evaluation trains no step and gives the result of an unbroken run."""
    import wsss.segmentation.train as seg_train

    config, labels = synthetic
    model_path = tmp_path / "segmenter.pt"
    evaluate = seg_train.evaluate_segmenter

    def broken(*args, **kwargs):
        raise ValueError("val image truncated")

    monkeypatch.setattr(seg_train, "evaluate_segmenter", broken)
    with pytest.raises(ValueError, match="truncated"):
        run_segmentation(_job(config, epochs=2), labels, 0, model_path, progress=False)
    assert (tmp_path / "segmenter_checkpoint.pt").is_file()
    model_path.unlink()  # as Snakemake removes a failed job's outputs

    monkeypatch.setattr(seg_train, "evaluate_segmenter", evaluate)
    steps, loss = [], seg_train.segmentation_loss
    monkeypatch.setattr(seg_train, "segmentation_loss", lambda *a: steps.append(1) or loss(*a))
    result = run_segmentation(_job(config, epochs=2), labels, 0, model_path, progress=False)
    assert steps == [] and not (tmp_path / "segmenter_checkpoint.pt").exists()
    monkeypatch.setattr(seg_train, "segmentation_loss", loss)
    fresh = run_segmentation(_job(config, epochs=2), labels, 0, tmp_path / "b.pt", progress=False)
    assert json.dumps(result, sort_keys=True) == json.dumps(fresh, sort_keys=True)
