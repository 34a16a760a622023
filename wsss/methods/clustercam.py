"""ClusterCAM (Kim & Kim, IEEE Access 2024), single-stage, from the official code.

Code read: ``DCVL-WSSS/ClusterCAM@bf854231`` (``vision_transformer.py``
``STAttention``, ``models.py``, ``main.py``, ``engine.py``, ``utils.py``,
``infer_e2e.py``, ``run_e2e.sh``); methods.md sections 1.4 and 4; design notes
in ``docs/methods/clustercam.md``. Where the paper text and the code differ,
the code is the default and the paper's choice is a parameter
(``cluster_iters`` 3 vs 10, ``cam_kernel`` 3 vs 1).

Model (:class:`ClusterCAMViT`, an MCTformer-V2 :class:`MultiClassTokenViT`):

* The chosen blocks (``cluster_blocks``; "all" as in ``run_e2e.sh``) become
  :class:`ClusterAttentionBlock`: the timm block's own attention (the
  "standard" branch, weights ``ln_pat = norm1``, ``qkv``, ``proj``) plus a
  parallel cluster branch. Patch tokens are projected (``proj_st``, LN
  ``ln_pat2``), clustered by soft k-means from a grid of
  ``cluster_cell x cluster_cell`` cells (:func:`cluster_patches`), the class
  tokens and the clusters attend to each other (``qkv_stsa``), class outputs
  go through ``proj_cls``, cluster outputs are mapped back to the patches by
  the assignment. The class->patch attention fed to the CAM is mixed,
  ``(1 - alpha) c2p + alpha c2sp`` with a learnable ``alpha`` per block; the
  token update is unaffected by the mixing.
* Heads on ``X_cat = [patch tokens; mixed c2p of every block x head x class]``:
  a ``cam_kernel`` conv CAM head (scored by GAP; ``ModelOutput.patch_cam``) and
  a LargeFOV decoder (``extras["seg_logits"]``, B x (C+1) x h x w).

CAM (:meth:`ClusterCAM.cam`): ReLU(CAM-head conv *without* its bias) x the
``recipe.class_reduce`` over the last ``recipe.class_layers`` blocks of the
head-mean mixed c2p. The official patch->patch refinement (sum over all blocks
of the standard branch's head-mean p2p) is the ``affinity`` refiner.

Training (:meth:`ClusterCAM.loss`): MLSM(class tokens) + MLSM(GAP CAM head)
+ ``seg_weight`` x L_seg from epoch ``seg_start_epoch`` on (0-based). The
segmentation pseudo-labels come from the same batch without gradient: the CAM
above (p2p-refined, as the code's ``cam_only`` forward does by default) at
``cam_scales``, each with its flip, max-fused within the pair, ReLU, summed,
per-class min-max, GT-masked, then PAR at ``bg_thr -/+ ignore_delta`` and the
two-threshold fusion rule. L_seg = 0.5 CE(bg pixels) + 0.5 CE(fg pixels).

Checkpoint selection: the official ``infer_e2e.sh`` scores every checkpoint of
epochs 50-79 on VOC **val** and keeps the best, i.e. it selects the model on
the evaluation split. This pipeline does not: it uses the final epoch's model
(``model.pt``), and nothing here looks at any evaluation split.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from wsss.data.palette import IGNORE_INDEX
from wsss.distributed import global_count
from wsss.methods.base import CamRecipe, Param, TrainingMethod, register_training_method
from wsss.models import ModelConfig, ModelOutput, MultiClassTokenViT
from wsss.models.attention import patch_affinity, propagate, select_blocks
from wsss.models.mct_vit import block_forward, create_backbone
from wsss.ops.multiscale import pad_to_multiple, scaled_size, to_image
from wsss.ops.normalize import minmax_per_class
from wsss.ops.par import PAR, denormalize, refine_cams_to_labels

INFERENCE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)  # infer_e2e.sh


# ----------------------------------------------------------------- pure pieces


def cluster_patches(
    patches: torch.Tensor, grid: tuple[int, int], cell: int = 2, iters: int = 3, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft clustering of B x N x D patch features on an h x w grid.

    Clusters start as the adaptive average pool of the patch map to
    ``max(1, h // cell) x max(1, w // cell)`` cells (M clusters). Each of the
    ``iters`` iterations computes the assignment
    ``Q = softmax_m(P S^T / sqrt(D))`` (B x N x M, rows sum to one) and then
    updates ``S_m = sum_n Q_nm P_n / (sum_n Q_nm + eps)``. Returns (Q, S): the
    Q of the last iteration (computed before the last update of S, as in the
    code) and the updated S (B x M x D).
    """
    if iters < 1:
        raise ValueError(f"cluster_iters must be >= 1, got {iters}")
    batch, n, dim = patches.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"{n} patch tokens do not fill a {h}x{w} grid")
    cells = (max(1, h // cell), max(1, w // cell))
    patch_map = patches.transpose(1, 2).reshape(batch, dim, h, w)
    clusters = F.adaptive_avg_pool2d(patch_map, cells).flatten(2).transpose(1, 2)  # B x M x D
    scale = dim**-0.5
    assignment = patches.new_empty(0)
    for _ in range(iters):
        assignment = (patches @ clusters.transpose(1, 2) * scale).softmax(dim=-1)  # B x N x M
        mass = assignment.sum(dim=1).unsqueeze(-1)  # B x M x 1
        clusters = (assignment.transpose(1, 2) @ patches) / (mass + eps)
    return assignment, clusters


def map_to_patches(assignment: torch.Tensor, cluster_values: torch.Tensor) -> torch.Tensor:
    """Back-map per-cluster values (B x M x D) to the patches (B x N x D): ``Q Z``."""
    return assignment @ cluster_values


def class_to_cluster_patch(
    cluster_attention: torch.Tensor, assignment: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``c2sp[k, n] = sum_m G[k, C + m] Q[n, m]``: B x H x C x N, not renormalised.

    ``cluster_attention``: B x H x (C+M) x (C+M) softmax attention G over
    [class tokens; clusters]; ``assignment``: B x N x M.
    """
    class_to_cluster = cluster_attention[:, :, :num_classes, num_classes:]  # B x H x C x M
    return class_to_cluster @ assignment.transpose(1, 2).unsqueeze(1)


def mix_attention(
    c2p: torch.Tensor, c2sp: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """``(1 - alpha) c2p + alpha c2sp`` (alpha unconstrained, as in the code)."""
    return (1 - alpha) * c2p + alpha * c2sp


def mixed_class_to_patch_map(
    mixed: Sequence[torch.Tensor],
    grid: tuple[int, int],
    layers: int | str | Sequence[int] = 3,
    reduce: str = "sum",
) -> torch.Tensor:
    """Head-mean mixed class->patch attention over the chosen blocks: B x C x h x w."""
    blocks = select_blocks(len(mixed), layers)
    stack = torch.stack([mixed[i].float().mean(dim=1) for i in blocks])
    if reduce == "sum":
        maps = stack.sum(dim=0)
    elif reduce == "mean":
        maps = stack.mean(dim=0)
    else:
        raise ValueError(f"attention reduce must be 'sum' or 'mean', got {reduce!r}")
    return maps.reshape(maps.shape[0], maps.shape[1], *grid)


def balanced_seg_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``0.5 CE(pixels labelled 0) + 0.5 CE(pixels labelled 1..C)``, ``ignore_index`` ignored.

    ``logits``: B x (C+1) x H x W; ``target``: B x H x W. Each CE is the mean
    over its own pixels of the whole batch (``utils.get_seg_loss``); a part
    with no pixels contributes 0 (the code replaces its NaN by 0). Under data-parallel
    training the pixel counts are those of the global batch
    (:func:`wsss.distributed.global_count`), so that 1 and N processes give the same
    gradient; without a process group this is the plain loss.
    """
    log_probs = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    index = torch.where(valid, target, torch.zeros_like(target)).long()
    nll = -log_probs.gather(1, index.unsqueeze(1)).squeeze(1)
    background = target == 0
    foreground = valid & ~background
    zero = torch.zeros_like(nll)
    backgrounds, ranks = global_count(background.sum())
    foregrounds, _ = global_count(foreground.sum())
    bg_loss = torch.where(background, nll, zero).sum() / backgrounds.clamp(min=1)
    fg_loss = torch.where(foreground, nll, zero).sum() / foregrounds.clamp(min=1)
    return ranks * 0.5 * (bg_loss + fg_loss)


class ClusterAttentionBlock(nn.Module):
    """A timm ViT block with ClusterCAM's parallel cluster branch (``STAttention``).

    The timm block's sub-modules are kept under their timm names (``norm1``,
    ``attn``, ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ``ls2``,
    ``drop_path2``), so the standard branch *is* the timm block (the code's
    ``ln_pat``, ``qkv``, ``proj``) and a timm/baseline state dict loads into
    it key for key. The cluster branch is initialised as the official
    ``main.py`` does: ``ln_pat2``, ``ln_cls``, ``ln_st`` <- ``norm1``;
    ``qkv_stsa`` <- ``attn.qkv``; ``proj_cls`` <- ``attn.proj``; ``proj_st``
    new (trunc-normal 0.02, zero bias); ``alpha`` ~ U(0, 1), learnable.
    """

    _TIMM_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")

    def __init__(self, block: Block, cluster_cell: int = 2, cluster_iters: int = 3) -> None:
        super().__init__()
        for part in self._TIMM_PARTS:
            if not hasattr(block, part):
                raise ValueError(f"ClusterAttentionBlock needs a timm ViT Block with {part!r}")
            setattr(self, part, getattr(block, part))
        if getattr(self.attn, "gate", None) is not None:
            raise NotImplementedError("gated attention blocks are not supported")
        if cluster_cell < 1 or cluster_iters < 1:
            raise ValueError(
                f"cluster_cell and cluster_iters must be >= 1, got {cluster_cell}, {cluster_iters}"
            )
        self.cluster_cell = int(cluster_cell)
        self.cluster_iters = int(cluster_iters)
        dim = self.attn.qkv.in_features
        self.proj_st = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.proj_st.weight, std=0.02)
        nn.init.zeros_(self.proj_st.bias)
        self.ln_pat2 = copy.deepcopy(self.norm1)
        self.ln_cls = copy.deepcopy(self.norm1)
        self.ln_st = copy.deepcopy(self.norm1)
        self.qkv_stsa = copy.deepcopy(self.attn.qkv)
        self.proj_cls = copy.deepcopy(self.attn.proj)
        self.alpha = nn.Parameter(torch.rand(1))
        drop = float(getattr(self.drop_path1, "drop_prob", 0.0))
        self.drop_path_cluster = DropPath(drop) if drop > 0 else nn.Identity()

    # the code's names for the standard branch
    @property
    def ln_pat(self) -> nn.Module:
        return self.norm1

    @property
    def qkv(self) -> nn.Linear:
        return self.attn.qkv

    @property
    def proj(self) -> nn.Linear:
        return self.attn.proj

    @torch.no_grad()
    def init_cluster_branch(self) -> None:
        """(Re-)copy the standard branch's weights into the cluster branch, as ``main.py``
        does from DeiT (e.g. after loading baseline weights into the standard parts)."""
        for target in (self.ln_pat2, self.ln_cls, self.ln_st):
            target.load_state_dict(self.norm1.state_dict())
        self.qkv_stsa.load_state_dict(self.attn.qkv.state_dict())
        self.proj_cls.load_state_dict(self.attn.proj.state_dict())

    def _heads(
        self, x: torch.Tensor, qkv: nn.Linear
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, tokens, _ = x.shape
        attn = self.attn
        parts = (
            qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        )
        return parts.unbind(0)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int], num_classes: int, want_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """x: B x (C+N) x D -> (x, standard softmax attention B x H x T x T, its logits or None,
        mixed class->patch attention B x H x C x N, cluster assignment B x N x M)."""
        attn = self.attn
        c = num_classes
        batch, tokens, _ = x.shape
        # standard branch: exactly the timm block's attention (block_forward's arithmetic)
        q, k, v = self._heads(self.norm1(x), attn.qkv)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        weights = logits.softmax(dim=-1)
        standard = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(batch, tokens, -1)
        standard = attn.proj_drop(attn.proj(attn.norm(standard)))

        # cluster branch, from the raw (pre-LN) tokens
        class_tokens, patch_tokens = x[:, :c], x[:, c:]
        features = self.ln_pat2(self.proj_st(patch_tokens))
        assignment, clusters = cluster_patches(
            features, grid, self.cluster_cell, self.cluster_iters
        )
        m = clusters.shape[1]
        joint = torch.cat([self.ln_cls(class_tokens), self.ln_st(clusters)], dim=1)  # B x (C+M) x D
        q2, k2, v2 = self._heads(joint, self.qkv_stsa)
        cluster_weights = ((q2 * attn.scale) @ k2.transpose(-2, -1)).softmax(dim=-1)
        joint = (cluster_weights @ v2).transpose(1, 2).reshape(batch, c + m, -1)
        class_out = self.proj_cls(joint[:, :c])
        patch_out = map_to_patches(assignment, joint[:, c:])

        c2sp = class_to_cluster_patch(cluster_weights, assignment, c)
        mixed = mix_attention(weights[:, :, :c, c:], c2sp, self.alpha)

        x = (
            x
            + self.drop_path1(self.ls1(standard))
            + self.drop_path_cluster(torch.cat([class_out, patch_out], dim=1))
        )
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, weights, (logits if want_logits else None), mixed, assignment


# ----------------------------------------------------------------- the model


class ClusterCAMViT(MultiClassTokenViT):
    """MCTformer-V2 with cluster-attention blocks, a CAM head on X_cat and a LargeFOV decoder."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        cluster_blocks: int | str | Sequence[int] = "all",
        cluster_cell: int = 2,
        cluster_iters: int = 3,
        cam_kernel: int = 3,
        decoder_channels: int = 512,
        decoder_dilation: int = 5,
        pos_embed_resize: str = "official",
    ) -> None:
        super().__init__(backbone, num_classes, pos_embed_resize=pos_embed_resize)
        if cam_kernel not in (1, 3):
            raise ValueError(
                f"method_params.clustercam.cam_kernel must be 1 or 3, got {cam_kernel}"
            )
        self.cluster_indices = select_blocks(len(self.blocks), cluster_blocks)
        for i in self.cluster_indices:
            self.blocks[i] = ClusterAttentionBlock(self.blocks[i], cluster_cell, cluster_iters)
        heads = self.blocks[0].attn.num_heads
        channels = self.embed_dim + len(self.blocks) * heads * num_classes
        self.feature_channels = channels
        # PyTorch's default conv initialisation, as the code (its _init_weights skips convs)
        self.patch_head = nn.Conv2d(
            channels, num_classes, kernel_size=cam_kernel, padding=cam_kernel // 2
        )
        d = int(decoder_dilation)
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, decoder_channels, 3, padding=d, dilation=d, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, decoder_channels, 3, padding=d, dilation=d, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(decoder_channels, num_classes + 1, 1, bias=False),
        )

    def heads(self, x, grid, attentions, logits) -> ModelOutput:
        raise NotImplementedError(
            "ClusterCAMViT builds its outputs in cluster_heads (it needs the mixed c2p)"
        )

    def init_cluster_branches(self) -> None:
        for block in self.blocks:
            if isinstance(block, ClusterAttentionBlock):
                block.init_cluster_branch()

    def forward(
        self, images: torch.Tensor, want_logits: bool = False, decode: bool = True
    ) -> ModelOutput:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "pad or resize first"
            )
        c = self.num_classes
        x, grid = self.embed(images)
        context: dict[str, Any] = {"images": images, "embedded": x, "grid": grid, "num_classes": c}
        attentions, logits, mixed, assignments = [], [], [], []
        for index, block in enumerate(self.blocks):
            x_in = x
            if isinstance(block, ClusterAttentionBlock):
                x, weights, block_logits, c2p, assignment = block(x, grid, c, want_logits)
                assignments.append(assignment)
            else:  # a plain block: its mixed c2p is the standard one (alpha = 0)
                x, weights, block_logits = block_forward(block, x, want_logits)
                c2p = weights[:, :, :c, c:]
            for hook in self.block_hooks:
                x = hook(index, x_in, x, weights, context)
            attentions.append(weights)
            mixed.append(c2p)
            if want_logits:
                logits.append(block_logits)
        output = self.cluster_heads(x, grid, attentions, mixed, decode)
        output.attention_logits = logits if want_logits else None
        output.extras["cluster_assignments"] = assignments
        return output

    def cluster_heads(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        attentions: list[torch.Tensor],
        mixed: list[torch.Tensor],
        decode: bool = True,
    ) -> ModelOutput:
        c = self.num_classes
        class_tokens, patch_tokens = x[:, :c], x[:, c:]
        batch, _, dim = patch_tokens.shape
        patch_map = patch_tokens.transpose(1, 2).reshape(batch, dim, *grid)
        # B x L x H x C x N -> (L*H*C) channels, block-major as in models.py
        attention_map = torch.stack(mixed, dim=1).reshape(batch, -1, *grid)
        features = torch.cat([patch_map, attention_map.to(patch_map.dtype)], dim=1)
        patch_cam = self.patch_head(features)
        extras: dict[str, Any] = {
            "mixed_class_to_patch": mixed,
            # the conv without its bias (the CAM drops it); the bias adds a constant per class
            "cam_logits_nobias": patch_cam.float() - self.patch_head.bias.float().view(1, -1, 1, 1),
        }
        if decode:
            extras["seg_logits"] = self.decoder(features)
        return ModelOutput(
            class_logits=class_tokens.mean(dim=-1),
            patch_logits=patch_cam.mean(dim=(2, 3)),
            patch_cam=patch_cam,
            attentions=attentions,
            attention_logits=None,
            class_tokens=class_tokens,
            patch_tokens=patch_tokens,
            grid=grid,
            extras=extras,
        )


# ----------------------------------------------------------------- the method


PAR_EPS = 1e-5  # ClusterCAM's PAR.py (ToCo's and AReAM's: 1e-8)


@register_training_method
class ClusterCAM(TrainingMethod):
    """ClusterCAM: cluster-attention MCTformer-V2, CAM head on X_cat, online segmentation decoder."""

    name = "clustercam"
    label = "ClusterCAM"
    reconstructed = False
    has_decoder = True
    params_spec = {
        # "all" (run_e2e.sh st_attn_depth 12), k = last k (library default 3), or indices
        "cluster_blocks": Param("all", "blocks"),
        # cluster init: one cluster per cell x cell patches (code: 2x2)
        "cluster_cell": Param(2, "int", minimum=1),
        # soft-assignment iterations (code 3; paper text 10)
        "cluster_iters": Param(3, "int", minimum=1),
        "cam_kernel": Param(3, "int", minimum=1),  # CAM head conv (code 3x3; paper text 1x1)
        "decoder_channels": Param(512, "int", minimum=1),  # LargeFOV width (code 512)
        "decoder_dilation": Param(5, "int", minimum=1),
        "seg_weight": Param(0.1, "number", minimum=0),
        # 0-based epoch from which L_seg is on (VOC: 50 of 80): less than train.epochs
        "seg_start_epoch": Param(50, "int", minimum=0),
        # pseudo-label CAM scales, each with its flip
        "cam_scales": Param([1.0, 0.75, 1.25], "numbers", minimum=0, exclusive_minimum=True),
        "cam_flip": Param(True, "bool"),
        # last k blocks of mixed c2p in the pseudo-label CAM
        "pseudo_class_layers": Param(3, "blocks"),
        # refine it with the all-block p2p sum (the code's cam_only default)
        "pseudo_affinity": Param(True, "bool"),
        "bg_thr": Param(0.4, "number", minimum=0, maximum=1),
        "ignore_delta": Param(0.1, "number", minimum=0),
        "par": Param(True, "bool"),  # false: arg-max of the thresholded CAMs without PAR
    }

    def limits(self, train: dict[str, Any]) -> list[tuple[str, str]]:
        """The decoder's loss starts at ``seg_start_epoch``: it must start within the run,
        or the decoder that is scored is never trained."""
        if self.params["seg_start_epoch"] >= train["epochs"]:
            return [
                (
                    "seg_start_epoch",
                    f"{self.params['seg_start_epoch']} is not less than train.epochs "
                    f"({train['epochs']}), so the decoder would never be trained; lower it or "
                    "train longer",
                )
            ]
        return []

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p["cam_kernel"] not in (1, 3):
            raise ValueError(
                f"method_params.clustercam.cam_kernel must be 1 or 3, got {p['cam_kernel']!r}"
            )
        low, high = self.thresholds
        if not 0 <= low <= high:
            raise ValueError(
                f"method_params.clustercam: need 0 <= bg_thr - ignore_delta <= bg_thr + ignore_delta, "
                f"got bg_thr {p['bg_thr']}, ignore_delta {p['ignore_delta']}"
            )
        # official PAR.py: 10 iterations, dilations 1..24, std + 1e-5 in both affinity terms
        self.par_module = PAR(eps=PAR_EPS) if p["par"] else None
        self.pseudo_recipe = CamRecipe(
            class_layers=p["pseudo_class_layers"],
            class_reduce="sum",
            fusion="fused",
            affinity_layers="all",
            affinity_reduce="sum",
        )

    @property
    def thresholds(self) -> tuple[float, float]:
        """(low, high) background scores of the two pseudo-label passes."""
        bg, delta = float(self.params["bg_thr"]), float(self.params["ignore_delta"])
        return bg - delta, bg + delta

    # -- model ----------------------------------------------------------------

    def build_model(
        self, model_config: dict[str, Any] | ModelConfig, num_classes: int
    ) -> ClusterCAMViT:
        config = (
            ModelConfig.from_dict(model_config) if isinstance(model_config, dict) else model_config
        )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        p = self.params
        return ClusterCAMViT(
            create_backbone(config),
            num_classes,
            cluster_blocks=p["cluster_blocks"],
            cluster_cell=p["cluster_cell"],
            cluster_iters=p["cluster_iters"],
            cam_kernel=p["cam_kernel"],
            decoder_channels=p["decoder_channels"],
            decoder_dilation=p["decoder_dilation"],
            pos_embed_resize=config.pos_embed_resize,
        )

    def on_train_start(self, model: MultiClassTokenViT, data: Any, device: torch.device) -> None:
        if not isinstance(model, ClusterCAMViT):
            raise TypeError("ClusterCAM needs the model from ClusterCAM.build_model")
        select_blocks(model.depth, self.params["pseudo_class_layers"])  # fail early on a bad spec
        if self.par_module is not None:
            self.par_module.to(device)

    def forward(
        self,
        model: MultiClassTokenViT,
        images: torch.Tensor,
        epoch: int,
        want_logits: bool = False,
        decode: bool = True,
    ) -> ModelOutput:
        if not isinstance(model, ClusterCAMViT):
            raise TypeError("ClusterCAM needs the model from ClusterCAM.build_model")
        return model(images, want_logits=want_logits, decode=decode)

    # -- CAM ------------------------------------------------------------------

    def cam(self, output: ModelOutput, recipe: CamRecipe) -> torch.Tensor:
        """ReLU(CAM-head conv without bias) x mixed c2p (``recipe.class_layers``/``class_reduce``)."""
        if "cam_logits_nobias" not in output.extras:
            raise ValueError("ClusterCAM.cam needs the output of a ClusterCAMViT forward pass")
        patchcam = F.relu(output.extras["cam_logits_nobias"].detach().float())
        if recipe.fusion == "patchcam":
            return patchcam
        attention = mixed_class_to_patch_map(
            [m.detach() for m in output.extras["mixed_class_to_patch"]],
            output.grid,
            recipe.class_layers,
            recipe.class_reduce,
        )
        if recipe.fusion == "attention":
            return attention
        return attention * patchcam

    def _pseudo_pass(self, output: ModelOutput) -> torch.Tensor:
        """The training CAM at grid resolution (float32): :meth:`cam`, then the all-block p2p refinement."""
        with torch.autocast(output.patch_cam.device.type, enabled=False):
            cam = self.cam(output, self.pseudo_recipe)
            if self.params["pseudo_affinity"]:
                attentions = [a.detach().float() for a in output.attentions]
                cam = propagate(cam, patch_affinity(attentions, output.num_classes, "all", "sum"))
        return cam

    @torch.no_grad()
    def batch_cam(
        self, model: ClusterCAMViT, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The batch's pseudo-label CAM (B x C x H x W in [0, 1], zero off the GT classes), ``multi_scale_cam2``.

        Per scale: resize (``int(s * size)``), CAM of the image and its flip in one
        no-grad forward (train mode, as the code), upsampled once from the patch
        grid to the crop size (as the code; a scaled size that is not a patch
        multiple is padded first, then upsampled to it, cropped and resized to the
        crop), max over the flip pair, ReLU. Summed
        over scales, per-class min-max, GT-masked. At scale 1 the unflipped
        CAM is read from the training forward (identical with drop-path 0).
        """
        batch, _, height, width = images.shape
        flip = bool(self.params["cam_flip"])
        patch = model.patch_size
        total = None
        for scale in self.params["cam_scales"]:
            scale = float(scale)
            size = scaled_size(height, width, scale, rounding="floor")  # int(s * size), as the code
            if scale == 1.0:
                cams = [to_image(self._pseudo_pass(output), size, size, size)]
                if flip:
                    out = self.forward(model, images.flip(-1), epoch=-1, decode=False)
                    cams.append(to_image(self._pseudo_pass(out), size, size, size).flip(-1))
            else:
                x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
                if flip:
                    x = torch.cat([x, x.flip(-1)])
                padded = pad_to_multiple(x, patch)
                out = self.forward(model, padded, epoch=-1, decode=False)
                grid_cam = self._pseudo_pass(out)
                if tuple(padded.shape[-2:]) == tuple(size):
                    # The code's one resize, grid -> training crop (the VOC recipe's 448 px
                    # crops at 0.75 / 1.25 are patch multiples: no padding).
                    cam = F.interpolate(
                        grid_cam, size=(height, width), mode="bilinear", align_corners=False
                    )
                else:
                    # Padded (the code would drop the remainder): grid -> padded, crop, resize.
                    cam = to_image(grid_cam, padded.shape[-2:], size, (height, width))
                cams = [cam[:batch]] + ([cam[batch:].flip(-1)] if flip else [])
            fused = torch.maximum(cams[0], cams[1]) if flip else cams[0]
            fused = F.relu(fused)
            total = fused if total is None else total + fused
        return minmax_per_class(total, eps=1e-5) * (labels > 0).to(total.dtype)[..., None, None]

    @torch.no_grad()
    def pseudo_labels(
        self, model: ClusterCAMViT, output: ModelOutput, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """B x H x W pseudo-labels (0 bg, c + 1 class c, 255 uncertain): PAR at bg_thr -/+ delta, fused."""
        cam = self.batch_cam(model, output, images, labels)
        low, high = self.thresholds
        with torch.autocast(images.device.type, enabled=False):
            if self.par_module is not None:
                self.par_module.to(images.device)
            return refine_cams_to_labels(
                denormalize(images),
                cam.float(),
                labels,
                low,
                high,
                self.par_module,
                ignore_index=IGNORE_INDEX,
            )

    # -- training -------------------------------------------------------------

    def loss(
        self, model: MultiClassTokenViT, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with_seg = epoch >= int(self.params["seg_start_epoch"])
        output = self.forward(model, images, epoch, decode=with_seg)
        loss_cls = F.multilabel_soft_margin_loss(output.class_logits, labels)
        loss_patch = F.multilabel_soft_margin_loss(output.patch_logits, labels)
        loss = loss_cls + loss_patch
        parts = {"loss_cls": loss_cls.item(), "loss_patch": loss_patch.item(), "loss_seg": 0.0}
        if with_seg:
            targets = self.pseudo_labels(model, output, images, labels)
            seg = F.interpolate(
                output.extras["seg_logits"].float(),
                size=images.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
            loss_seg = balanced_seg_loss(seg, targets)
            loss = loss + float(self.params["seg_weight"]) * loss_seg
            parts["loss_seg"] = loss_seg.item()
        return loss, parts

    # -- segmentation ---------------------------------------------------------

    def segment(self, model: MultiClassTokenViT, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits B x (C+1) x h x w for normalised images (a patch multiple in size)."""
        return self.forward(model, images, epoch=-1, decode=True).extras["seg_logits"]


__all__ = [
    "ClusterAttentionBlock",
    "ClusterCAM",
    "ClusterCAMViT",
    "balanced_seg_loss",
    "class_to_cluster_patch",
    "cluster_patches",
    "map_to_patches",
    "mix_attention",
    "mixed_class_to_patch_map",
]
