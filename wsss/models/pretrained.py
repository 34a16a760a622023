"""Pretrained weights for any timm model: timm's hub, or a local file for offline clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def timm_weights(
    pretrained: bool, weights: str | None, key: str, backbone: str
) -> tuple[bool, dict[str, Any]]:
    """(``pretrained`` flag, extra ``timm.create_model`` kwargs) for a config's
    ``pretrained``/``weights`` pair; ``key`` names the config block in errors.

    A local file goes through timm's own loader (``pretrained_cfg_overlay``), which
    handles .pth/.safetensors, key filtering and position-embedding resampling.
    """
    if weights is None:
        return pretrained, {}
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}.weights: {path} does not exist; expected a timm-layout .pth or "
            f".safetensors state dict for {backbone}"
        )
    return True, {"pretrained_cfg_overlay": dict(file=str(path))}
