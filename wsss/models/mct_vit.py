"""MCTformer-V2: a ViT with one class token per class, built from timm modules.

The backbone is any timm ViT/DeiT with a single CLS token. Its weights keep
timm's layout (so ``pretrained`` and local checkpoints load through timm), and
the blocks run through :func:`block_forward`, which composes the block's own
sub-modules but also returns the attention a WSSS method needs: the per-block
softmax attention and, on request, its pre-softmax logits.

Following the official MCTformer code (methods.md section 2):
- the C class tokens start as copies of the CLS token, their position
  embeddings as copies of the CLS position embedding;
- the final LayerNorm is not applied; class score = channel mean of the class
  token's output;
- PatchCAM (V2): a 3x3 conv (D -> C, with bias) on the patch-token map, scored
  by global average pooling, with PyTorch's default conv initialisation (the
  official ``_init_weights`` touches only Linear and LayerNorm layers);
- patch position embeddings are resized to a new grid with plain bicubic
  interpolation at ``scale_factor = (g + 0.1) / sqrt(N)`` (the DINO-style
  ``interpolate_pos_encoding`` of MCTformer, AReAM and ClusterCAM), and a
  pretrained checkpoint is resized to the training grid with plain bicubic at
  the target size (their ``--finetune`` loading).

timm's antialiased resize and a trunc-normal head remain as named options
(``model.pos_embed_resize: timm``, ``model.patch_head_init: trunc_normal``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import load_pretrained
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn
from torch import nn

from wsss.models.pretrained import (
    is_official_mctformer_v2,
    official_mctformer_v2_state,
    read_weights,
    timm_weights,
)

# How patch position embeddings are resized to another grid (``model.pos_embed_resize``):
# "official": plain bicubic as the official MCTformer/AReAM/ClusterCAM code; "timm":
# timm's antialiased bicubic to the target size (``resample_abs_pos_embed``).
POS_EMBED_RESIZES: tuple[str, ...] = ("official", "timm")
# PatchCAM head initialisation (``model.patch_head_init``): "default": PyTorch's
# Conv2d init, as the official MCTformer-V2 and AReAM; "trunc_normal": weights
# trunc-normal(std 0.02), zero bias (timm's ViT init for linear layers).
PATCH_HEAD_INITS: tuple[str, ...] = ("default", "trunc_normal")


@dataclass
class ModelConfig:
    """How to build the backbone (the ``model`` block of ``params.yaml``)."""

    backbone: str = "deit_small_patch16_224"
    img_size: int = 224
    pretrained: bool = False
    weights: str | None = None  # local .pth/.safetensors for offline clusters
    drop_path_rate: float = 0.1
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. depth/embed_dim for tiny models
    pos_embed_resize: str = "official"  # one of POS_EMBED_RESIZES
    patch_head_init: str = "default"  # one of PATCH_HEAD_INITS

    def __post_init__(self) -> None:
        if self.pos_embed_resize not in POS_EMBED_RESIZES:
            raise ValueError(
                f"model.pos_embed_resize must be one of {', '.join(POS_EMBED_RESIZES)}; "
                f"got {self.pos_embed_resize!r}"
            )
        if self.patch_head_init not in PATCH_HEAD_INITS:
            raise ValueError(
                f"model.patch_head_init must be one of {', '.join(PATCH_HEAD_INITS)}; "
                f"got {self.patch_head_init!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class ModelOutput:
    """Everything a method or the CAM extractor reads from one forward pass.

    Shapes: B batch, C classes, D width, h x w patch grid, T = C + h*w tokens,
    L blocks, H heads.
    """

    class_logits: torch.Tensor  # B x C: mean over D of each class token
    patch_logits: torch.Tensor  # B x C: GAP of the PatchCAM logits
    patch_cam: torch.Tensor  # B x C x h x w: PatchCAM logits F
    # L x (B x H x T x T), softmax; a block left out of ``full_attention`` (see
    # MultiClassTokenViT.forward) holds only the C class-token rows, B x H x C x T.
    attentions: list[torch.Tensor]
    attention_logits: list[torch.Tensor] | None  # L x (B x H x T x T), pre-softmax, if asked
    class_tokens: torch.Tensor  # B x C x D (block outputs, no final norm)
    patch_tokens: torch.Tensor  # B x N x D
    grid: tuple[int, int]
    # Method-specific outputs (e.g. ClusterCAM's mixed attention, a decoder's logits).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.class_logits.shape[1]


# A block hook lets a plug-in method (e.g. DOEI) act on a block's output
# without touching the weights: hook(index, x_in, x_out, attention, context) -> x_out.
BlockHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]


def block_forward(
    block: Block, x: torch.Tensor, want_logits: bool, query_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run a timm ViT block, returning (output, softmax attention, logits or None).

    timm's fused attention kernel never materialises the attention matrix, so
    the attention is recomputed here from the block's own ``qkv``/``proj``
    modules; the arithmetic follows timm's non-fused path.

    ``query_rows=r``: only the first r rows of the attention (the class tokens'
    queries) are returned, and the block output comes from the fused
    ``scaled_dot_product_attention`` kernel: the same output up to float
    rounding without the T x T softmax. Not with ``want_logits`` or active
    attention dropout (the full path keeps their exact semantics).
    """
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("gated attention blocks are not supported")
    batch, tokens, _ = x.shape
    h = block.norm1(x)
    qkv = (
        attn.qkv(h).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    )
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = block.training and attn.attn_drop.p > 0
    logits = None
    if query_rows is not None and not want_logits and not dropout:
        weights = ((q[:, :, :query_rows] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        mixed = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        weights = logits.softmax(dim=-1)
        mixed = attn.attn_drop(weights) @ v
    mixed = mixed.transpose(1, 2).reshape(batch, tokens, -1)
    mixed = attn.proj_drop(attn.proj(attn.norm(mixed)))
    x = x + block.drop_path1(block.ls1(mixed))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, weights, (logits if want_logits else None)


def create_backbone(config: ModelConfig) -> VisionTransformer:
    """Create the timm ViT named by ``config.backbone`` (pretrained or local weights)."""
    name = config.backbone
    if not timm.is_model(name):
        vits = ", ".join(timm.list_models("deit_*") + timm.list_models("vit_*")[:10])
        raise ValueError(
            f"model.backbone: unknown timm model {name!r}; use a timm ViT/DeiT name such as {vits}, ..."
        )
    kwargs: dict[str, Any] = dict(
        num_classes=0,
        img_size=config.img_size,
        drop_path_rate=config.drop_path_rate,
        dynamic_img_size=True,  # any h x w grid at CAM time; pos-embeds are resampled
        **config.overrides,
    )
    pretrained, extra = timm_weights(config.pretrained, config.weights, "model", name)
    kwargs.update(extra)
    # "official": the weights are loaded after creation, so that a checkpoint made for
    # another grid (224 px weights at img_size 448) is resized as the official --finetune
    # code does it: plain bicubic to the target size (align_corners False, no antialias).
    # timm's own loading resizes with antialiased bicubic.
    load_after = pretrained and config.pos_embed_resize == "official"
    try:
        model = timm.create_model(name, pretrained=pretrained and not load_after, **kwargs)
    except TypeError as err:
        raise ValueError(f"model.backbone: {name!r} is not a timm ViT/DeiT ({err})") from err
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"model.backbone: {name!r} is a {type(model).__name__}, not a ViT/DeiT")
    if model.num_prefix_tokens != 1 or model.cls_token is None or model.no_embed_class:
        raise ValueError(
            f"model.backbone: {name!r} has {model.num_prefix_tokens} prefix tokens; "
            "a multi-class-token model needs a ViT with exactly one CLS token"
        )
    if load_after:
        # timm's ViT/DeiT checkpoint filter with antialiasing off; adapt_layer_scale
        # renames DeiT-3 ``gamma_`` keys and leaves other checkpoints as they are.
        load_pretrained(
            model,
            num_classes=0,
            in_chans=model.patch_embed.proj.in_channels,
            filter_fn=partial(checkpoint_filter_fn, adapt_layer_scale=True, antialias=False),
        )
    return model


def resize_patch_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    mode: str = "official",
) -> torch.Tensor:
    """Resize patch position embeddings from one patch grid to another.

    ``pos_embed``: 1 x (gh*gw) x D, row-major over the ``old_grid`` (gh, gw), no
    class-token entries (those are never resized). Returns 1 x (h*w) x D for
    ``new_grid`` (h, w), in ``pos_embed``'s dtype; the same tensor when the grids match.

    - ``"official"``: ``F.interpolate(..., scale_factor=((h + 0.1) / gh, (w + 0.1) / gw),
      mode="bicubic")`` with align_corners False, as ``interpolate_pos_encoding`` in the
      official MCTformer, AReAM and ClusterCAM code (from DINO; the 0.1 keeps the output
      size at h x w despite float rounding). PyTorch samples the source at
      ``(i + 0.5) / scale - 0.5``, so the grid is stretched by (h + 0.1) / gh, not h / gh.
    - ``"timm"``: timm's ``resample_abs_pos_embed`` (antialiased bicubic to size (h, w);
      its kernel uses a = -0.5 where plain bicubic uses a = -0.75).

    Raises ValueError for an unknown ``mode`` or a ``pos_embed`` that does not hold
    gh*gw entries.
    """
    if mode not in POS_EMBED_RESIZES:
        raise ValueError(f"pos_embed_resize must be one of {POS_EMBED_RESIZES}; got {mode!r}")
    gh, gw = old_grid
    h, w = new_grid
    if pos_embed.ndim != 3 or pos_embed.shape[:2] != (1, gh * gw):
        raise ValueError(
            f"patch position embeddings of shape {tuple(pos_embed.shape)} do not fit a "
            f"{gh}x{gw} grid (expected 1 x {gh * gw} x D)"
        )
    if (h, w) == (gh, gw):
        return pos_embed
    if mode == "timm":
        return resample_abs_pos_embed(
            pos_embed, new_size=[h, w], old_size=[gh, gw], num_prefix_tokens=0
        )
    dim = pos_embed.shape[-1]
    grid = pos_embed.float().reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(
        grid, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic", align_corners=False
    )
    if tuple(resized.shape[-2:]) != (h, w):  # the official code asserts the same
        raise ValueError(f"position-embedding resize gave {tuple(resized.shape[-2:])}, not {h}x{w}")
    return resized.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)


class MultiClassTokenViT(nn.Module):
    """MCTformer-V2 on a timm ViT: C class tokens + patch tokens + PatchCAM head."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        pos_embed_resize: str = "official",
        patch_head_init: str = "default",
    ) -> None:
        """``pos_embed_resize``: one of :data:`POS_EMBED_RESIZES` (see
        :func:`resize_patch_pos_embed`); ``patch_head_init``: one of
        :data:`PATCH_HEAD_INITS`. Raises ValueError for any other value."""
        super().__init__()
        if pos_embed_resize not in POS_EMBED_RESIZES:
            raise ValueError(
                f"pos_embed_resize must be one of {POS_EMBED_RESIZES}; got {pos_embed_resize!r}"
            )
        if patch_head_init not in PATCH_HEAD_INITS:
            raise ValueError(
                f"patch_head_init must be one of {PATCH_HEAD_INITS}; got {patch_head_init!r}"
            )
        self.pos_embed_resize = pos_embed_resize
        self.num_classes = num_classes
        self.embed_dim = backbone.embed_dim
        self.patch_embed = backbone.patch_embed
        self.pos_drop = backbone.pos_drop
        self.norm_pre = backbone.norm_pre
        self.blocks = backbone.blocks
        self.patch_size = self.patch_embed.patch_size[0]
        cls_token = backbone.cls_token.detach()
        cls_pos = backbone.pos_embed.detach()[:, :1]
        self.class_tokens = nn.Parameter(cls_token.repeat(1, num_classes, 1))
        self.class_pos_embed = nn.Parameter(cls_pos.repeat(1, num_classes, 1))
        self.patch_pos_embed = nn.Parameter(backbone.pos_embed.detach()[:, 1:].clone())
        self.base_grid = tuple(self.patch_embed.grid_size)
        # "default": PyTorch's Conv2d init (kaiming-uniform a = sqrt(5): weights and bias
        # uniform in +-1/sqrt(fan_in)), which the official head keeps.
        self.patch_head = nn.Conv2d(self.embed_dim, num_classes, kernel_size=3, padding=1)
        if patch_head_init == "trunc_normal":
            nn.init.trunc_normal_(self.patch_head.weight, std=0.02)
            nn.init.zeros_(self.patch_head.bias)
        self.block_hooks: list[BlockHook] = []

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def _patch_positions(self, grid: tuple[int, int]) -> torch.Tensor:
        return resize_patch_pos_embed(
            self.patch_pos_embed, self.base_grid, grid, self.pos_embed_resize
        )

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens [class; patch] with position embeddings, before the blocks."""
        patches = self.patch_embed(images)  # B x h x w x D (dynamic_img_size keeps the grid)
        batch, gh, gw, dim = patches.shape
        grid = (gh, gw)
        patches = patches.reshape(batch, gh * gw, dim) + self._patch_positions(grid)
        classes = (self.class_tokens + self.class_pos_embed).expand(batch, -1, -1)
        tokens = torch.cat([classes, patches], dim=1)
        return self.norm_pre(self.pos_drop(tokens)), grid

    def forward(
        self,
        images: torch.Tensor,
        want_logits: bool = False,
        full_attention: Collection[int] | None = None,
    ) -> ModelOutput:
        """One pass. ``full_attention``: the blocks whose whole T x T attention is
        needed (None: all); the others return only the class-token rows and run the
        fused attention kernel (a cheaper pass for CAMs that read class->patch
        attention everywhere but patch->patch attention only in some blocks).
        Block hooks may read the whole attention, so with hooks every block is full.
        """
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "pad or resize first"
            )
        x, grid = self.embed(images)
        context: dict[str, Any] = {
            "images": images,
            "embedded": x,
            "grid": grid,
            "num_classes": self.num_classes,
        }
        attentions, logits = [], []
        for index, block in enumerate(self.blocks):
            x_in = x
            partial = full_attention is not None and not self.block_hooks
            rows = self.num_classes if partial and index not in full_attention else None
            x, weights, block_logits = block_forward(block, x, want_logits, rows)
            for hook in self.block_hooks:
                x = hook(index, x_in, x, weights, context)
            attentions.append(weights)
            if want_logits:
                logits.append(block_logits)
        return self.heads(x, grid, attentions, logits if want_logits else None)

    def heads(self, x, grid, attentions, logits) -> ModelOutput:
        c = self.num_classes
        class_tokens, patch_tokens = x[:, :c], x[:, c:]
        batch, n, dim = patch_tokens.shape
        feature_map = patch_tokens.transpose(1, 2).reshape(batch, dim, *grid)
        patch_cam = self.patch_head(feature_map)
        return ModelOutput(
            class_logits=class_tokens.mean(dim=-1),
            patch_logits=patch_cam.mean(dim=(2, 3)),
            patch_cam=patch_cam,
            attentions=attentions,
            attention_logits=logits,
            class_tokens=class_tokens,
            patch_tokens=patch_tokens,
            grid=grid,
        )


def build_model(config: ModelConfig | dict[str, Any], num_classes: int) -> MultiClassTokenViT:
    """The multi-class-token model of ``config`` for ``num_classes`` classes.

    ``model.weights`` may also be an official MCTformer-V2 checkpoint: its weights
    (class tokens, their position embeddings, the PatchCAM head and the backbone) are
    loaded through :func:`wsss.models.pretrained.official_mctformer_v2_state`, the patch
    position embeddings resized to ``model.img_size`` as the official ``--finetune``
    does (plain bicubic to the target size). Raises ValueError naming the file when it
    does not fit ``model.backbone`` or the dataset's class count.
    """
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    official, weights = None, config.weights
    if weights is not None and Path(weights).is_file():
        state = read_weights(weights, "model")
        if is_official_mctformer_v2(state):
            official = official_mctformer_v2_state(state, weights, num_classes)
            config = replace(config, pretrained=False, weights=None)
    model = MultiClassTokenViT(
        create_backbone(config),
        num_classes,
        pos_embed_resize=config.pos_embed_resize,
        patch_head_init=config.patch_head_init,
    )
    if official is not None:
        _load_official(model, official, Path(str(weights)))
    return model


def _load_official(
    model: MultiClassTokenViT,
    mapped: dict[str, torch.Tensor],
    path: Path,
) -> None:
    """Load an official MCTformer-V2 state (already mapped) into ``model``."""
    patch_pos = mapped["patch_pos_embed"]
    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise ValueError(
            f"model.weights: {path}: {patch_pos.shape[1]} patch position embeddings are not a "
            "square grid"
        )
    if (side, side) != model.base_grid:
        mapped = dict(mapped)
        mapped["patch_pos_embed"] = resample_abs_pos_embed(
            patch_pos, new_size=list(model.base_grid), num_prefix_tokens=0, antialias=False
        )
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"model.weights: {path} is an official MCTformer-V2 checkpoint that does not fit "
            f"model.backbone ({err}); set model.backbone to the checkpoint's ViT "
            "(deit_small_patch16_224 for the released MCTformer-V2)"
        ) from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def grid_size(height: int, width: int, patch: int) -> tuple[int, int]:
    return math.ceil(height / patch), math.ceil(width / patch)


def multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MLSM: the mean over classes of the sigmoid BCE (``multilabel_soft_margin_loss``)."""
    return F.multilabel_soft_margin_loss(logits, labels)
