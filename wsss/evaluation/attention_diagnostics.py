"""Attention diagnostics: does a ViT's patch-to-patch attention group patches into objects?

The refinements built on ViT attention (MCTformer's patch affinity, AD-CAM's
diffusion, AReAM's re-activation) assume that a patch attends mostly to its own
object. These functions measure that assumption on one image at a time, from
numbers in (attention tensors, an instance map) to numbers out, so they can be
tested on hand-built cases and used on any dataset with per-object masks.

Definitions (all lifts and ratios are 1.0 for uniform attention):

- The instance map is reduced to the patch grid by :func:`patch_instance_labels`:
  a patch belongs to object k when at least ``min_fraction`` (default half) of its
  pixels do, to the background when at least that share of its pixels is
  background (0), and is *mixed* (-1) otherwise. Mixed patches are never queries
  and belong to no key set, but they count in N.
- Each attention row is taken over the N patches only (class-token columns
  dropped) and renormalised to sum to 1, so a value is a share of the row's mass.
- **own-object lift**, object queries: mass on the query's own object /
  (that object's patches / N).
- **other-object lift**, object queries of images with at least two objects on
  the grid: mass on the other objects' patches / (their patches / N).
- **background-to-object ratio**, background queries of images with at least
  one object on the grid: mass on all object patches / (object patches / N).
- **neighbourhood lift**, every patch as query: mass on its 3x3 patch
  neighbourhood (itself included, cut at the border) / (neighbourhood size / N).
- **entropy**, every patch as query: ``-sum_j a_j log a_j`` in nats over the
  renormalised row (``0 log 0 = 0``); ``log N`` for uniform attention. Also
  reported divided by ``log N`` (1.0 = uniform, 0 = one-hot).

Shares that self-attention cannot inflate (not lifts: plain fractions of the
renormalised row, in [0, 1]). Queries: the patches of objects that cover at
least two patches on the grid (a one-patch object has no rest). For each such
query the row splits into

- **self share**: its mass on itself;
- **rest-of-object share**: on the other patches of its own object (self
  excluded): what a CAM refinement spreads over the object's body;
- **other-objects share**: on the patches of the image's other objects (0 when
  there are none);
- **background share**: on background patches;

and the remainder on mixed patches. The own-object lift counts the query's own
patch, so an attention that stays on itself scores a high own lift; the
rest-of-object share does not (it is 0 for the identity). The oracle grouping
(uniform over the own object) gives ``1 - 1/n`` for an object of n patches.

**class-token lift** (per class token, from its class -> patch attention row,
class columns dropped and renormalised over the N patches): for each class c
on the image's patch grid (the class mask reduced as the instance map, so a
patch is class c when at least ``min_fraction`` of its pixels are), the mass
class token c puts on the class-c patches / (their patches / N). Queries:
(image, present class) pairs. 1 = uniform; MCTformer's class attention should
be well above 1, as its CAM is that attention times ReLU(PatchCAM). Reported per
block and for the class attention summed over the CAM's blocks
(``cam.class_layers``), as :func:`wsss.models.attention.class_to_patch` takes it.

Each statistic is a mean over queries, pooled over images (every query counts
once). The lifts and the ratio follow the attention-locality probe of the
embedded benchmark; entropy and the normalised entropy are the standard Shannon
quantities. An attention useful for propagating CAMs has own-object lift well
above 1, other-object lift near or below 1 and background-to-object ratio below 1.

This module deliberately depends on numpy only (torch tensors are accepted and
converted), so it sits below the models and methods that produce the attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIXED = -1  # patch label: neither an object nor the background (see patch_instance_labels)
IGNORE_VALUE = 255  # instance-map value of unlabelled pixels (VOC's SegmentationObject border)

STATISTICS = (
    "own_object_lift",
    "other_object_lift",
    "background_to_object_ratio",
    "neighbourhood_lift",
    "entropy",
    "entropy_normalised",
    "self_share",
    "rest_of_object_share",
    "other_objects_share",
    "background_share",
)
# Statistics of the shares' query set (objects of at least two patches).
SHARES = ("self_share", "rest_of_object_share", "other_objects_share", "background_share")
CLASS_STATISTICS = ("class_token_lift",)


def _as_numpy(array: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array or a (possibly GPU, grad-tracking) torch tensor."""
    if hasattr(array, "detach"):  # torch tensor; no torch import needed here
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def patch_instance_labels(
    instance_map: np.ndarray, patch_size: int, min_fraction: float = 0.5
) -> np.ndarray:
    """Reduce an H x W instance map to its (H/p) x (W/p) patch grid.

    ``instance_map``: integers, 0 background, 1..K objects, 255 unlabelled (the
    VOC ``SegmentationObject`` convention); H and W must be multiples of
    ``patch_size`` (pad with 255 first). Returns an int64 grid: k when object k
    covers at least ``min_fraction`` of the patch's pixels, 0 when the background
    does (an object wins an exact tie), :data:`MIXED` (-1) otherwise.
    Raises ValueError for a non-2-D map, a size that is not a multiple of the
    patch size, or ``min_fraction`` outside (0, 1].
    """
    labels = np.asarray(instance_map)
    if labels.ndim != 2:
        raise ValueError(f"instance map must be 2-D (H x W), got shape {labels.shape}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    height, width = labels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"instance map {height}x{width} is not a multiple of the patch size {patch_size}; "
            f"pad it with {IGNORE_VALUE} first"
        )
    gh, gw = height // patch_size, width // patch_size
    # patches[i, j] holds the p*p pixel labels of patch (i, j).
    patches = (
        labels.astype(np.int64)
        .reshape(gh, patch_size, gw, patch_size)
        .transpose(0, 2, 1, 3)
        .reshape(gh, gw, patch_size * patch_size)
    )
    needed = min_fraction * patch_size * patch_size
    out = np.full((gh, gw), MIXED, dtype=np.int64)
    out[(patches == 0).sum(axis=-1) >= needed] = 0
    objects = [int(k) for k in np.unique(labels) if 0 < k < IGNORE_VALUE]
    for k in objects:  # ascending; at most one object can reach a share above one half
        out[(patches == k).sum(axis=-1) >= needed] = k
    return out


def head_mean(attention: Any) -> np.ndarray:
    """[L, H, N, N] -> [L, N, N] mean over heads; an [L, N, N] input is returned as is (float64)."""
    array = _as_numpy(attention)
    if array.ndim == 4:
        return array.mean(axis=1)
    if array.ndim == 3:
        return array
    raise ValueError(
        f"attention must be [blocks, heads, N, N] or [blocks, N, N], got shape {array.shape}"
    )


def summed_affinity(attention: Any, blocks: Sequence[int] | None = None) -> np.ndarray:
    """The patch affinity MCTformer's refinement propagates CAMs with: N x N.

    The head-mean patch -> patch attention summed over ``blocks`` (None: all),
    never renormalised, as the official MCTformer code builds it (and
    ``wsss.models.attention.patch_affinity`` with ``layers="all", reduce="sum"``).
    """
    stack = head_mean(attention)
    chosen = range(stack.shape[0]) if blocks is None else list(blocks)
    return stack[list(chosen)].sum(axis=0)


def _neighbourhoods(grid: tuple[int, int]) -> np.ndarray:
    """N x N boolean: j in the 3x3 neighbourhood of i (i included), row-major patch order."""
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return (np.abs(rows[:, None] - rows[None, :]) <= 1) & (
        np.abs(cols[:, None] - cols[None, :]) <= 1
    )


@dataclass
class LocalitySums:
    """Per-statistic sums over queries and query counts, for pooling over images.

    ``sums[name]`` and ``counts[name]`` are float64 arrays of one entry per
    attention matrix (a block, or the summed affinity).
    """

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]

    def __add__(self, other: LocalitySums) -> LocalitySums:
        if list(self.sums) != list(other.sums):
            raise ValueError(f"cannot pool statistics {list(self.sums)} with {list(other.sums)}")
        return LocalitySums(
            {k: self.sums[k] + other.sums[k] for k in self.sums},
            {k: self.counts[k] + other.counts[k] for k in self.sums},
        )

    def means(self) -> list[dict[str, float]]:
        """One dict per matrix: statistic -> mean over its queries (NaN when it had none),
        plus ``<statistic>_queries`` with the number of queries behind it."""
        size = len(next(iter(self.counts.values())))
        out: list[dict[str, float]] = [{} for _ in range(size)]
        for name in self.sums:
            for i in range(size):
                n = float(self.counts[name][i])
                out[i][name] = float(self.sums[name][i] / n) if n else float("nan")
                out[i][f"{name}_queries"] = int(n)
        return out


def locality_sums(attention: Any, patch_labels: np.ndarray) -> LocalitySums:
    """Locality statistics of one image, as sums over its queries (see the module docstring).

    ``attention``: [M, N, N] or [M, H, N, N] (heads averaged first) non-negative
    patch -> patch attention, rows = queries, for M matrices (blocks, or one
    summed affinity); class-token rows and columns already removed, rows need
    not sum to 1 (they are renormalised). ``patch_labels``: the h x w output of
    :func:`patch_instance_labels` with h * w = N, in row-major patch order.
    Raises ValueError on a shape mismatch, negative or non-finite values, or a
    row with no mass.
    """
    stack = head_mean(attention)
    labels = np.asarray(patch_labels, dtype=np.int64)
    if labels.ndim != 2:
        raise ValueError(f"patch_labels must be an h x w grid, got shape {labels.shape}")
    n = labels.size
    if stack.shape[1:] != (n, n):
        raise ValueError(
            f"attention {tuple(stack.shape)} does not match the {labels.shape[0]}x"
            f"{labels.shape[1]} patch grid ({n} patches): expected [M, {n}, {n}]"
        )
    if not np.isfinite(stack).all() or (stack < 0).any():
        raise ValueError("attention must be finite and non-negative")
    totals = stack.sum(axis=-1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError("attention has a row with no mass on the patches; cannot renormalise")
    rows = stack / totals
    flat = labels.reshape(-1)
    blocks = stack.shape[0]

    sums = {k: np.zeros(blocks) for k in STATISTICS}
    counts = {k: np.zeros(blocks) for k in STATISTICS}

    # Entropy and neighbourhood lift: every patch is a query.
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(rows > 0, rows * np.log(rows), 0.0)
    entropy = -plogp.sum(axis=-1)  # M x N
    sums["entropy"] += entropy.sum(axis=-1)
    counts["entropy"] += n
    if n > 1:
        sums["entropy_normalised"] += entropy.sum(axis=-1) / math.log(n)
        counts["entropy_normalised"] += n
    near = _neighbourhoods(labels.shape)
    near_mass = (rows * near).sum(axis=-1)  # M x N
    sums["neighbourhood_lift"] += (near_mass / (near.sum(axis=-1) / n)).sum(axis=-1)
    counts["neighbourhood_lift"] += n

    objects = [int(k) for k in np.unique(flat) if k > 0]
    if objects:
        member = np.stack([flat == k for k in objects], axis=1).astype(np.float64)  # N x K
        sizes = member.sum(axis=0)  # patches per object
        mass = rows @ member  # M x N x K: each query's mass on each object
        object_mass = mass.sum(axis=-1)  # M x N
        all_objects = sizes.sum()
        for index, k in enumerate(objects):
            queries = flat == k
            q = int(queries.sum())
            own = mass[:, queries, index]  # M x q
            sums["own_object_lift"] += (own / (sizes[index] / n)).sum(axis=-1)
            counts["own_object_lift"] += q
            others = all_objects - sizes[index]
            if others > 0:
                other = object_mass[:, queries] - own
                sums["other_object_lift"] += (other / (others / n)).sum(axis=-1)
                counts["other_object_lift"] += q
            if sizes[index] >= 2:  # the shares: a one-patch object has no rest
                self_mass = rows[:, queries, queries]  # M x q: each query's mass on itself
                sums["self_share"] += self_mass.sum(axis=-1)
                sums["rest_of_object_share"] += (own - self_mass).sum(axis=-1)
                sums["other_objects_share"] += (object_mass[:, queries] - own).sum(axis=-1)
                sums["background_share"] += rows[:, queries][:, :, flat == 0].sum(axis=(1, 2))
                for name in SHARES:
                    counts[name] += q
        background = flat == 0
        if background.any():
            sums["background_to_object_ratio"] += (
                object_mass[:, background] / (all_objects / n)
            ).sum(axis=-1)
            counts["background_to_object_ratio"] += int(background.sum())
    return LocalitySums(sums, counts)


def class_token_sums(class_attention: Any, class_labels: np.ndarray) -> LocalitySums:
    """Class-token lift of one image, as sums over its (present class) queries.

    ``class_attention``: [M, C, N] or [M, H, C, N] (heads averaged first)
    non-negative class-token -> patch attention of M matrices (blocks, or one
    summed class attention); row c - 1 is the token of class c (MCTformer's
    order); rows need not sum to 1 (renormalised over the patches).
    ``class_labels``: the h x w patch grid of the *class* mask (0 background,
    1..C, :data:`MIXED`), from :func:`patch_instance_labels` of the class map,
    h * w = N. A class on the grid with no token (label > C) raises ValueError,
    as do shape mismatches, negative or non-finite values and a row of a present
    class with no mass.
    """
    array = _as_numpy(class_attention)
    if array.ndim == 4:
        array = array.mean(axis=1)
    if array.ndim != 3:
        raise ValueError(
            "class attention must be [blocks, heads, C, N] or [blocks, C, N], got shape "
            f"{array.shape}"
        )
    labels = np.asarray(class_labels, dtype=np.int64)
    if labels.ndim != 2:
        raise ValueError(f"class_labels must be an h x w grid, got shape {labels.shape}")
    n = labels.size
    blocks, tokens, patches = array.shape
    if patches != n:
        raise ValueError(
            f"class attention {tuple(array.shape)} does not match the {labels.shape[0]}x"
            f"{labels.shape[1]} patch grid ({n} patches)"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("class attention must be finite and non-negative")
    flat = labels.reshape(-1)
    present = [int(c) for c in np.unique(flat) if c > 0]
    if present and present[-1] > tokens:
        raise ValueError(f"class {present[-1]} on the patch grid, but only {tokens} class tokens")
    sums = {"class_token_lift": np.zeros(blocks)}
    counts = {"class_token_lift": np.zeros(blocks)}
    for c in present:
        row = array[:, c - 1, :]  # M x N
        totals = row.sum(axis=-1)
        if (totals <= 0).any():
            raise ValueError(f"the class token of class {c} has no mass on the patches")
        members = flat == c
        sums["class_token_lift"] += row[:, members].sum(axis=-1) / totals / (members.sum() / n)
        counts["class_token_lift"] += 1
    return LocalitySums(sums, counts)


@dataclass
class AttentionDiagnostics:
    """Pooled diagnostics over images: per block, and for the summed patch affinity.

    Feed it one image at a time with :meth:`add`; :meth:`result` gives the means.
    ``affinity_blocks``: the blocks the refinement's affinity sums (None: all).
    ``class_blocks``: the blocks the CAM's class attention sums (None: all), for
    the class-token lift of the summed class attention.
    """

    affinity_blocks: Sequence[int] | None = None
    class_blocks: Sequence[int] | None = None
    images: int = 0
    _blocks: LocalitySums | None = field(default=None, repr=False)
    _affinity: LocalitySums | None = field(default=None, repr=False)
    _class_blocks: LocalitySums | None = field(default=None, repr=False)
    _class_sum: LocalitySums | None = field(default=None, repr=False)

    def add(
        self,
        attention: Any,
        patch_labels: np.ndarray,
        class_attention: Any = None,
        class_labels: np.ndarray | None = None,
    ) -> None:
        """One image: ``attention`` [L, H, N, N] or [L, N, N] patch -> patch, ``patch_labels`` h x w;
        optionally ``class_attention`` [L, H, C, N] or [L, C, N] class -> patch with
        ``class_labels`` h x w (see :func:`class_token_sums`): every image or none."""
        stack = head_mean(attention)
        blocks = locality_sums(stack, patch_labels)
        affinity = locality_sums(summed_affinity(stack, self.affinity_blocks)[None], patch_labels)
        if self._blocks is not None and len(blocks.sums["entropy"]) != len(
            self._blocks.sums["entropy"]
        ):
            raise ValueError(
                f"image {self.images}: {stack.shape[0]} blocks, earlier images had "
                f"{len(self._blocks.sums['entropy'])}"
            )
        if (class_attention is None) != (class_labels is None):
            raise ValueError("class_attention and class_labels go together")
        if self.images and (class_attention is None) != (self._class_blocks is None):
            raise ValueError(
                f"image {self.images}: class attention given for some images only; "
                "give it for every image or none"
            )
        if class_attention is not None:
            per_block = _as_numpy(class_attention)
            per_block = per_block.mean(axis=1) if per_block.ndim == 4 else per_block
            if per_block.shape[0] != stack.shape[0]:
                raise ValueError(
                    f"image {self.images}: class attention of {per_block.shape[0]} blocks, "
                    f"patch attention of {stack.shape[0]}"
                )
            chosen = (
                list(range(per_block.shape[0]))
                if self.class_blocks is None
                else list(self.class_blocks)
            )
            class_blocks = class_token_sums(per_block, class_labels)
            class_sum = class_token_sums(per_block[chosen].sum(axis=0)[None], class_labels)
            self._class_blocks = (
                class_blocks if self._class_blocks is None else self._class_blocks + class_blocks
            )
            self._class_sum = class_sum if self._class_sum is None else self._class_sum + class_sum
        self._blocks = blocks if self._blocks is None else self._blocks + blocks
        self._affinity = affinity if self._affinity is None else self._affinity + affinity
        self.images += 1

    def result(self) -> dict[str, Any]:
        """``{"images": n, "blocks": [per-block dict], "affinity": dict}`` (see
        :meth:`LocalitySums.means`); with class attention, each block also holds
        ``class_token_lift`` and ``"class_attention"`` the lift of the class attention
        summed over ``class_blocks`` (``{"blocks", "class_token_lift", ...}``)."""
        if self._blocks is None or self._affinity is None:
            raise ValueError("no image was added; nothing to summarise")
        blocks = self._blocks.means()
        out: dict[str, Any] = {
            "images": self.images,
            "affinity_blocks": (
                "all" if self.affinity_blocks is None else [int(b) for b in self.affinity_blocks]
            ),
            "blocks": blocks,
            "affinity": self._affinity.means()[0],
        }
        if self._class_blocks is not None and self._class_sum is not None:
            for entry, extra in zip(blocks, self._class_blocks.means(), strict=True):
                entry.update(extra)
            out["class_attention"] = {
                "blocks": (
                    "all" if self.class_blocks is None else [int(b) for b in self.class_blocks]
                ),
                **self._class_sum.means()[0],
            }
        return out
