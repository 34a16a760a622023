"""The attention-diagnostics driver: a checkpoint and a dataset with instance masks in, numbers out."""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from wsss.data.synthetic import SyntheticConfig, write_dataset
from wsss.data.voc import VOCLayout
from wsss.evaluation.attention_report import diagnose_checkpoint, diagnose_model
from wsss.models import build_model

TINY_MODEL = {
    "backbone": "vit_tiny_patch16_224",
    "img_size": 32,
    "pretrained": False,
    "weights": None,
    "drop_path_rate": 0.0,
    "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}
DATA = SyntheticConfig(
    image_size=32, num_train=6, num_val=2, min_object_frac=0.45, max_object_frac=0.7
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(DATA, tmp_path_factory.mktemp("diag") / "data", progress=False)


class UniformAttention(torch.nn.Module):
    """Every token attends equally to every token: all lifts and ratios are 1."""

    def __init__(self, num_classes: int, patch_size: int, depth: int = 3) -> None:
        super().__init__()
        self.num_classes, self.patch_size, self.depth = num_classes, patch_size, depth
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        self.shapes.append(tuple(images.shape))
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        tokens = self.num_classes + h * w
        full = torch.full((images.shape[0], 2, tokens, tokens), 1.0 / tokens)
        return SimpleNamespace(attentions=[full] * self.depth)


def test_uniform_model_gives_ones_and_pads_to_the_patch_grid(dataset):
    layout = VOCLayout.locate(dataset)
    ids = layout.split_ids("train")
    model = UniformAttention(num_classes=6, patch_size=12)
    result = diagnose_model(model, layout, ids, num_classes=6, patch_size=12, batch_size=4)
    assert model.shapes == [(4, 3, 36, 36), (2, 3, 36, 36)]  # 32 px padded to 3 x 12
    assert result["images"] == len(ids) and len(result["blocks"]) == 3
    for entry in [*result["blocks"], result["affinity"]]:
        assert entry["own_object_lift"] == pytest.approx(1.0)
        assert entry["background_to_object_ratio"] == pytest.approx(1.0)
        assert entry["entropy"] == pytest.approx(math.log(9))
        assert entry["own_object_lift_queries"] > 0


def test_checkpoint_round_trip(dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY_MODEL, DATA.num_classes)
    config = {"model": TINY_MODEL, "method": {"name": "mctformer_v2", "params": {}}}
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": config, "class_names": list("abcdef")}, path)
    result = diagnose_checkpoint(path, dataset, "val")
    assert result["split"] == "val" and result["images"] == DATA.num_val
    assert len(result["blocks"]) == TINY_MODEL["overrides"]["depth"]
    for entry in [*result["blocks"], result["affinity"]]:
        assert 0.0 < entry["entropy"] <= math.log(16) + 1e-9
        assert math.isfinite(entry["own_object_lift"]) and entry["own_object_lift"] > 0
    # The same numbers from the in-memory model, one image per batch.
    ids = ["val_00000", "val_00001"]
    layout = VOCLayout.locate(dataset)
    again = diagnose_model(model, layout, ids, num_classes=6, patch_size=8, batch_size=1)
    assert again["blocks"][1]["entropy"] == pytest.approx(result["blocks"][1]["entropy"])


def test_checkpoint_errors(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="run the train stage"):
        diagnose_checkpoint(tmp_path / "none.pt", dataset)
    model = build_model(TINY_MODEL, 6)
    config = {"model": TINY_MODEL, "method": {"name": "clustercam", "params": {}}}
    state = {**model.state_dict(), "extra.weight": torch.zeros(1)}
    bad = tmp_path / "bad.pt"
    torch.save({"model": state, "config": config, "class_names": list("abcdef")}, bad)
    with pytest.raises(ValueError, match="'clustercam'.*build="):
        diagnose_checkpoint(bad, dataset)
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict(), "config": config, "class_names": list("abcdef")}, good)
    no_instances = tmp_path / "copy"
    shutil.copytree(dataset, no_instances)
    shutil.rmtree(no_instances / "SegmentationObject")
    with pytest.raises(FileNotFoundError, match="SegmentationObject"):
        diagnose_checkpoint(good, no_instances)
