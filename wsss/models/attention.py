"""Reading class-to-patch maps and patch affinities out of per-block attention.

Every CAM recipe in the literature is a choice of blocks and of a reduction
(MCTformer sums the last 3 blocks for class-to-patch and all blocks for the
affinity; AReAM averages all blocks); these functions take the choice as
arguments so each recipe is a named configuration rather than new code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def select_blocks(depth: int, layers: int | str | Sequence[int]) -> list[int]:
    """Block indices from a layer spec: ``"all"``, ``k`` (the last k) or explicit indices."""
    if layers == "all":
        return list(range(depth))
    if isinstance(layers, int):
        if not 1 <= layers <= depth:
            raise ValueError(f"layer count {layers} outside 1..{depth}")
        return list(range(depth - layers, depth))
    indices = [int(i) for i in layers]
    bad = [i for i in indices if not -depth <= i < depth]
    if bad or not indices:
        raise ValueError(f"block indices {list(layers)} invalid for a {depth}-block model")
    return [i % depth for i in indices]


def check_layers(value: Any, key: str) -> int | str | list[int]:
    """Check the form of a block spec (``"all"``, k >= 1 = the last k, or a non-empty list of indices).

    The depth is only known at call time, where :func:`select_blocks` checks
    the range; here only the form is checked. Errors name ``key``.
    """
    if value == "all":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{key}: a block count must be >= 1, got {value}")
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    ):
        return list(value)
    raise ValueError(
        f'{key}: expected "all", a block count k >= 1 or a list of block indices, got {value!r}'
    )


def blocks_for(depth: int, layers: int | str | Sequence[int], key: str) -> list[int]:
    """:func:`select_blocks`, with its error re-raised under the parameter's name."""
    try:
        return select_blocks(depth, layers)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from err


def _reduce(stack: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "sum":
        return stack.sum(dim=0)
    if reduce == "mean":
        return stack.mean(dim=0)
    raise ValueError(f"attention reduce must be 'sum' or 'mean', got {reduce!r}")


def class_to_patch(
    attentions: Sequence[torch.Tensor],
    num_classes: int,
    grid: tuple[int, int],
    layers: int | str | Sequence[int] = 3,
    reduce: str = "sum",
) -> torch.Tensor:
    """Head-mean class-token -> patch attention over the chosen blocks: B x C x h x w."""
    blocks = select_blocks(len(attentions), layers)
    maps = torch.stack(
        [attentions[i][:, :, :num_classes, num_classes:].mean(dim=1) for i in blocks]
    )
    maps = _reduce(maps, reduce)
    return maps.reshape(maps.shape[0], num_classes, *grid)


def patch_affinity(
    attentions: Sequence[torch.Tensor],
    num_classes: int,
    layers: int | str | Sequence[int] = "all",
    reduce: str = "sum",
) -> torch.Tensor:
    """Head-mean patch -> patch attention over the chosen blocks: B x N x N (rows = queries)."""
    blocks = select_blocks(len(attentions), layers)
    stack = torch.stack(
        [attentions[i][:, :, num_classes:, num_classes:].mean(dim=1) for i in blocks]
    )
    return _reduce(stack, reduce)


def propagate(maps: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Gather form ``M'_c(i) = sum_j P_ij M_c(j)`` for B x C x h x w maps and B x N x N P."""
    batch, classes, h, w = maps.shape
    flat = maps.reshape(batch, classes, h * w)
    return (flat @ affinity.transpose(1, 2)).reshape(batch, classes, h, w)
