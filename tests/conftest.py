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


@pytest.fixture
def tiny_model_config():
    return dict(TINY_MODEL, overrides=dict(TINY_MODEL["overrides"]))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine spin-wait badly
