import copy
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSSS_SHARED_DATA", REPO.parent / "shared" / "data"))

TINY_MODEL = {
    "backbone": "vit_tiny_patch16_224",
    "img_size": 32,
    "pretrained": False,
    "weights": None,
    "drop_path_rate": 0.0,
    "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
}


# The classifier recipe of the tests' training runs (train: block of a job config);
# tiny_train_config overrides keys per test.
TINY_TRAIN = {
    "epochs": 2,
    "batch_size": 6,
    "lr": 1e-3,
    "lr_batch_scaling": False,
    "min_lr": 1e-5,
    "weight_decay": 0.05,
    "warmup_epochs": 1,
    "crop_scale": [0.6, 1.0],
    "hflip": True,
    "amp": False,
}


def tiny_train_config(dataset_config, method="mctformer_v2", params=None, model=None, **train):
    """A `wsss train` job config (as wsss.config.training_config builds it) of the tiny model
    (``model``: TINY_MODEL by default, copied) on ``dataset_config``; ``train`` overrides
    TINY_TRAIN."""
    return {
        "dataset": dataset_config,
        "model": copy.deepcopy(TINY_MODEL if model is None else model),
        "train": {**copy.deepcopy(TINY_TRAIN), **train},
        "method": {"name": method, "params": params or {}},
    }


def tiny_synthetic_dataset(root, **generator) -> dict:
    """Write a small synthetic dataset (VOC layout) under ``root``; return its dataset config.
    ``generator`` overrides the generator's defaults (e.g. num_train, image_size)."""
    from wsss.data.datasets import prepare_dataset

    config = {
        "kind": "synthetic",
        "name": "synthetic",
        "root": str(root),
        "train_split": "train",
        "eval_split": "train",
        "seg_split": "val",
        "generator": generator,
    }
    prepare_dataset(config, progress=False)
    return config


@pytest.fixture
def tiny_model_config():
    return dict(TINY_MODEL, overrides=dict(TINY_MODEL["overrides"]))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine spin-wait badly
