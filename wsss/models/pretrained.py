"""Pretrained weights for any timm model: timm's hub, or a local file for offline clusters.

A local file (``model.weights``) is read here, not by timm, so that every way it
can be wrong is reported with its path and what to do instead of a traceback from
inside timm or ``torch.load``:

- it is loaded with ``weights_only=True`` (a file someone sent cannot run code),
  with numpy scalars and dtypes allowed: training scripts often store metadata
  such as ``epoch`` or ``best_map`` as numpy scalars, which are plain data;
- other pickled objects (an ``argparse.Namespace``, an optimizer class) are
  refused, naming them and saying how to keep only the weights;
- an official MCTformer-V2 checkpoint (``xulianuwa/MCTformer``, ``models.py``:
  ``cls_token`` 1 x C x D, ``pos_embed`` 1 x (C + N) x D with the C class positions
  first, ``head`` a 3x3 Conv2d D -> C, DeiT ``patch_embed``/``blocks``/``norm``; saved by
  its ``main.py`` as ``{"model": state_dict}``) is recognised:
  :func:`wsss.models.mct_vit.build_model` maps its keys onto the multi-class-token
  model (:func:`official_mctformer_v2_state`); any other model refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _numpy_globals() -> list[Any]:
    """What a pickled numpy scalar needs: the scalar constructor (under numpy 2's and
    numpy 1's module names), ``numpy.dtype`` and numpy 2's dtype classes."""
    scalar = np._core.multiarray.scalar
    dtype_classes = [
        cls
        for cls in vars(np.dtypes).values()
        if isinstance(cls, type) and issubclass(cls, np.dtype)
    ]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


NUMPY_SAFE_GLOBALS = _numpy_globals()


def torch_load_plain(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` that also accepts numpy scalars and dtypes
    (plain data; :data:`NUMPY_SAFE_GLOBALS`). Raises what ``torch.load`` raises."""
    with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


def unsafe_globals(path: str | Path) -> list[str]:
    """The pickled classes and functions in ``path`` that a weights-only load refuses
    (empty when it cannot tell)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: nothing better to say
        return []
    allowed = {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype"}
    return [name for name in found if name not in allowed and not name.startswith("numpy.dtypes")]


def read_weights(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The state dict in the weights file ``path`` (``.pth``/``.pt`` or ``.safetensors``),
    unwrapped and cleaned by timm's own rules (``state_dict_ema``, ``model_ema``,
    ``state_dict`` or ``model`` entry; ``module.`` prefixes removed). ``key`` names the
    config block in errors (``model``, ``segmentation``).

    Raises FileNotFoundError when it is missing and ValueError naming the path when it
    cannot be read, holds pickled objects other than tensors and plain data (naming
    them and how to keep only the weights), or holds no tensors.
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}.weights: {path} does not exist; expected a timm-layout .pth or "
            ".safetensors state dict"
        )
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            state = load_state_dict(str(path), weights_only=True)
    except Exception as err:  # timm wraps torch.load's UnpicklingError in a RuntimeError
        names = unsafe_globals(path)
        if names:
            raise ValueError(
                f"{key}.weights: {path} holds pickled objects other than tensors and plain "
                f"data ({', '.join(names)}), which are not loaded (unpickling them can run "
                'code). If you trust the file, keep only its weights: python -c "import torch; '
                "c = torch.load('IN', weights_only=False); torch.save(c.get('model', c), "
                f"'OUT')\" and point {key}.weights at OUT"
            ) from err
        raise ValueError(
            f"{key}.weights: {path} cannot be read as a state dict ({type(err).__name__}: "
            f"{err}); expected a timm-layout .pth or .safetensors file"
        ) from err
    tensors = isinstance(state, dict) and any(isinstance(v, torch.Tensor) for v in state.values())
    if not tensors:
        raise ValueError(
            f"{key}.weights: {path} holds no tensors at its top level or under 'model'/"
            "'state_dict'; expected a state dict"
        )
    return state


def is_official_mctformer_v2(state: dict[str, Any]) -> bool:
    """Whether ``state`` has the official MCTformer-V2 layout: several class tokens in
    ``cls_token`` and a convolutional (4-D) ``head``."""
    cls_token, head = state.get("cls_token"), state.get("head.weight")
    return (
        isinstance(cls_token, torch.Tensor)
        and cls_token.ndim == 3
        and cls_token.shape[1] > 1
        and isinstance(head, torch.Tensor)
        and head.ndim == 4
    )


def official_mctformer_v2_state(
    state: dict[str, torch.Tensor], path: str | Path, num_classes: int
) -> dict[str, torch.Tensor]:
    """The official MCTformer-V2 state dict ``state`` under the key names of
    :class:`wsss.models.mct_vit.MultiClassTokenViT`:

    ``cls_token`` -> ``class_tokens``; ``pos_embed[:, :C]`` -> ``class_pos_embed``;
    ``pos_embed[:, C:]`` -> ``patch_pos_embed`` (patch grid as stored; the caller
    resizes it); ``head.*`` -> ``patch_head.*``; ``patch_embed.*`` and ``blocks.*``
    unchanged. ``norm.*`` is dropped: the official forward never applies the final
    LayerNorm (``forward_features`` returns the last block's tokens).

    Raises ValueError naming ``path`` when its class count is not ``num_classes`` or
    it holds keys this mapping does not know.
    """
    classes = int(state["cls_token"].shape[1])
    if classes != num_classes:
        raise ValueError(
            f"model.weights: {path} is an official MCTformer-V2 checkpoint for {classes} "
            f"classes; this dataset has {num_classes}. Use it only on a dataset with the same "
            "classes in the same order (20: VOC, 80: COCO), or initialise from a backbone "
            "checkpoint (e.g. the DeiT release) instead"
        )
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in state.items():
        if name == "cls_token":
            mapped["class_tokens"] = value
        elif name == "pos_embed":
            mapped["class_pos_embed"] = value[:, :classes]
            mapped["patch_pos_embed"] = value[:, classes:]
        elif name.startswith("head."):
            mapped["patch_head." + name[len("head.") :]] = value
        elif name.startswith(("patch_embed.", "blocks.")):
            mapped[name] = value
        elif not name.startswith("norm."):
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"model.weights: {path} looks like an official MCTformer-V2 checkpoint but also "
            f"holds {', '.join(sorted(unknown)[:5])}, which the key mapping does not know"
        )
    return mapped


def timm_weights(
    pretrained: bool, weights: str | None, key: str, backbone: str
) -> tuple[bool, dict[str, Any]]:
    """(``pretrained`` flag, extra ``timm.create_model`` kwargs) for a config's
    ``pretrained``/``weights`` pair; ``key`` names the config block in errors.

    A local file is read by :func:`read_weights` and handed to timm's own loader as a
    state dict (``pretrained_cfg_overlay``), which filters keys and resamples position
    embeddings. Raises ValueError for an official MCTformer-V2 checkpoint, which only
    :func:`wsss.models.mct_vit.build_model` can use.
    """
    if weights is None:
        return pretrained, {}
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"{key}.weights: {weights} does not exist; expected a timm-layout .pth or "
            f".safetensors state dict for {backbone}"
        )
    state = read_weights(weights, key)
    if is_official_mctformer_v2(state):
        raise ValueError(
            f"{key}.weights: {weights} is an official MCTformer-V2 checkpoint (class tokens "
            f"and a PatchCAM head); it initialises only the multi-class-token classifier "
            f"(methods built on wsss.models.mct_vit), not the {backbone} backbone of this "
            "job; give a timm-layout ViT state dict (e.g. the DeiT release) here"
        )
    return True, {"pretrained_cfg_overlay": dict(state_dict=state)}
