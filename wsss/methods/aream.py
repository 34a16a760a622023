"""AReAM (Cheng et al., arXiv 2305.03112 v1), MCTformer-V2 variant, from the official code.

Code read: ``Jessie459/AReAM@fe708c34`` (``main_voc_mctformer.py``,
``tools/camutils.py``, ``losses.py``, ``ent_voc_mctformer.py``); methods.md
section 3; design notes in ``docs/methods/aream.md``.

Training adds, after ``cls_epochs`` epochs of the plain MCTformer-V2 loss, an
affinity loss on the *deep* blocks' pre-softmax patch-to-patch attention,
supervised by pseudo-labels built (without gradient) from the current batch's
CAM refined with the *shallow* blocks' attention:

1. L_cls = MLSM(class logits) + MLSM(patch logits).
2. CAM: ReLU(PatchCAM) x mean over all blocks of the head-mean class->patch
   attention, propagated with the (optionally entropy-weighted) mean of the
   shallow blocks' patch->patch attention; the flipped pass added; ReLU,
   per-class min-max, GT-masked, at crop resolution.
3. Pseudo-labels: PAR at background scores ``bg_low``/``bg_high``, fused.
4. Affinity target on the patch grid: 1 same label, 0 different, 255 ignored.
5. Per deep block: balanced BCE-like loss on sigmoid(head-mean logits).
6. L = L_cls + weight x mean over deep blocks (x entropy weights if given).

The paper's framework figure instead lets every block both refine and receive
the loss; ``refine_layers: all`` and ``loss_layers: all`` select that reading.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.data.palette import IGNORE_INDEX
from wsss.distributed import global_count
from wsss.methods.base import Param, TrainingMethod, Upstream, register_training_method
from wsss.models import ModelOutput, MultiClassTokenViT
from wsss.models.attention import class_to_patch, propagate, select_blocks
from wsss.ops.normalize import minmax_per_class
from wsss.ops.par import PAR, denormalize, nearest_indices, refine_cams_to_labels
from wsss.runtime import native_bf16

# `entropy_weights: baseline` asks the DAG for the weights of a trained MCTformer-V2
# (the official code computes them offline with ent_voc_mctformer.py).
ENTROPY_FROM_BASELINE = "baseline"
ENTROPY_BASELINE_METHOD = "mctformer_v2"

log = logging.getLogger("wsss")


# ----------------------------------------------------------------- pure pieces


def shallow_refined_cam(
    attentions: Sequence[torch.Tensor],
    patch_cam: torch.Tensor,
    refine_blocks: Sequence[int],
    block_weights: torch.Tensor | None = None,
    reduce: str = "mean",
) -> torch.Tensor:
    """AReAM's training CAM at patch-grid resolution (B x C x h x w), no normalisation.

    ``M = ReLU(F) * mean_{all blocks} head-mean A_l[class->patch]`` (the mean over
    *all* blocks, not MCTformer's sum of the last 3), then
    ``M'_c(i) = sum_j P_ij M_c(j)`` with ``P`` the ``reduce`` ("mean" or "sum")
    over ``refine_blocks`` of ``w_l * head-mean A_l[patch->patch]`` (``w_l = 1``
    unless ``block_weights``, one per refine block, is given). Softmax attention.
    """
    classes = patch_cam.shape[1]
    grid = tuple(patch_cam.shape[-2:])
    fused = F.relu(patch_cam) * class_to_patch(attentions, classes, grid, "all", "mean")
    stack = torch.stack(
        [attentions[i][:, :, classes:, classes:].mean(dim=1) for i in refine_blocks]
    )
    if block_weights is not None:
        stack = stack * block_weights.to(stack).view(-1, 1, 1, 1)
    if reduce == "mean":
        affinity = stack.mean(dim=0)
    elif reduce == "sum":
        affinity = stack.sum(dim=0)
    else:
        raise ValueError(
            f"method_params.aream.shallow_reduce must be 'mean' or 'sum', got {reduce!r}"
        )
    return propagate(fused, affinity)


def downsample_labels(label_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """B x H x W labels -> B x h x w by nearest-neighbour sampling (``seg_to_aff``)."""
    small = F.interpolate(label_map[:, None].float(), size=grid, mode="nearest")
    return small[:, 0].to(torch.int64)


def affinity_target(label_map: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """B x h x w patch labels -> B x N x N target: 1 equal labels, 0 different, ``ignore_index``
    where either patch is ignored. Background-background pairs and the diagonal are positives."""
    flat = label_map.flatten(1)
    target = (flat[:, :, None] == flat[:, None, :]).to(torch.int64)
    ignored = flat == ignore_index
    target[ignored[:, :, None] | ignored[:, None, :]] = ignore_index
    return target


def balanced_affinity_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum_{Y=1}(1 - S) / (#pos + 1) + 0.5 * sum_{Y=0} S / (#neg + 1)``, S = sigmoid(logits).

    ``logits``: ... x B x N x N (leading dims, e.g. blocks, are kept: one loss
    each); ``target``: B x N x N with 1/0/ignore. Sums and counts run over the
    whole batch, as ``losses.get_aff_loss``. Under data-parallel training the counts are
    those of the global batch (:func:`wsss.distributed.global_count`; the official code
    normalises by its process's own batch, so its 2-GPU run has per-GPU counts), so that 1
    and N processes give the same gradient; without a process group this is the plain loss.
    """
    scores = torch.sigmoid(logits.float())
    positive = (target == 1).to(scores.dtype)
    negative = (target == 0).to(scores.dtype)
    dims = (-3, -2, -1)
    positives, ranks = global_count(positive.sum())
    negatives, _ = global_count(negative.sum())
    positive_loss = (positive * (1 - scores)).sum(dim=dims) / (positives + 1)
    negative_loss = (negative * scores).sum(dim=dims) / (negatives + 1)
    return ranks * (0.5 * positive_loss + 0.5 * negative_loss)


def block_entropy(
    attentions: Sequence[torch.Tensor], patch_cam: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per image and block, the Shannon entropy (bits) of ``softmax_i(sum_{c in GT} (A_l . ReLU(F_c))(i))``.

    ``A_l`` is block l's head-mean patch->patch softmax attention; PatchCAM only,
    not the fused CAM (``ent_voc_mctformer.py``). Returns B x L.
    """
    classes = patch_cam.shape[1]
    cam = F.relu(patch_cam.float()) * (labels > 0).to(torch.float32)[..., None, None]
    summed = cam.sum(dim=1).flatten(1)  # B x N: sum over GT classes commutes with the propagation
    stack = torch.stack(
        [a[:, :, classes:, classes:].float().mean(dim=1) for a in attentions]
    )  # L x B x N x N
    response = (stack @ summed[None, :, :, None])[..., 0]  # L x B x N
    probability = response.softmax(dim=-1)
    entropy = torch.special.entr(probability).sum(dim=-1) / np.log(2.0)
    return entropy.transpose(0, 1)


def normalize_entropy(entropy: torch.Tensor | np.ndarray) -> np.ndarray:
    """Min-max over blocks to [0, 1] (all equal -> all 0)."""
    values = np.asarray(entropy, dtype=np.float64)
    values = values - values.min()
    span = values.max()
    return values / span if span > 0 else values


def entropy_weights_from_attention(
    attentions: Sequence[torch.Tensor], patch_cam: torch.Tensor, labels: torch.Tensor
) -> np.ndarray:
    """e_l in [0, 1] for one batch: block entropies, mean over images, min-max across blocks."""
    return normalize_entropy(block_entropy(attentions, patch_cam, labels).mean(dim=0).cpu().numpy())


@torch.no_grad()
def compute_entropy_weights(
    model: MultiClassTokenViT,
    method: TrainingMethod,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str,
) -> np.ndarray:
    """Entropy weights e_l (one per block, in [0, 1]) of a trained baseline over a loader of
    (normalised images, labels); save them with :func:`save_entropy_weights` and point
    ``method_params.aream.entropy_weights`` at the file. In the workflow,
    ``entropy_weights: baseline`` has the ``entropy_weights`` rule do this
    (:mod:`wsss.methods.entropy_weights`)."""
    return normalize_entropy(mean_block_entropy(model, method, loader, device))


@torch.no_grad()
def mean_block_entropy(
    model: MultiClassTokenViT,
    method: TrainingMethod,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str,
) -> np.ndarray:
    """The raw per-block entropies (bits, mean over the loader's images) before min-max."""
    model.eval()
    total, count = None, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        output = method.forward(model, images, epoch=-1)
        entropy = block_entropy(output.attentions, output.patch_cam, labels).sum(dim=0)
        total = entropy if total is None else total + entropy
        count += images.shape[0]
    if total is None:
        raise ValueError("compute_entropy_weights: the loader yielded no images")
    return (total / count).cpu().numpy().astype(np.float64)


def save_entropy_weights(path: str | Path, weights: Sequence[float] | np.ndarray) -> None:
    path = Path(path)
    values = np.asarray(weights, dtype=np.float64)
    if path.suffix == ".json":
        path.write_text(json.dumps(values.tolist()) + "\n")
    else:
        np.save(path, values)


def load_entropy_weights(source: str | Path | Sequence[float]) -> np.ndarray:
    """Per-block weights from a .npy/.json file or a list; min-max normalised (as the official
    code does on load, so raw entropies and normalised weights both work).

    A .json file holds either the list itself or an object whose ``weights`` key
    is the list (what ``wsss entropy-weights`` writes, with its provenance beside).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"method_params.aream.entropy_weights: {path} does not exist; compute it with "
                "`wsss entropy-weights` (or compute_entropy_weights) from a trained MCTformer-V2, "
                "set baseline to have the workflow do it, or set null"
            )
        values = json.loads(path.read_text()) if path.suffix == ".json" else np.load(path)
        if isinstance(values, dict):
            if "weights" not in values:
                raise ValueError(
                    f"method_params.aream.entropy_weights: {path} is a JSON object without "
                    f"a 'weights' list (keys: {', '.join(sorted(values))})"
                )
            values = values["weights"]
    else:
        values = source
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(
            f"method_params.aream.entropy_weights: need finite per-block values, got {values}"
        )
    return normalize_entropy(values)


# ----------------------------------------------------------------- the method


@register_training_method
class AReAM(TrainingMethod):
    """MCTformer-V2 + AReAM's shallow-refined pseudo-label affinity loss on deep blocks."""

    name = "aream"
    label = "AReAM"
    reconstructed = False
    params_spec = {
        # epochs (0-based index <) with the classification loss only: less than train.epochs
        "cls_epochs": Param(10, "int", minimum=0),
        # blocks < layer_index are shallow (refine), >= are deep (loss)
        "layer_index": Param(7, "int", minimum=1),
        "bg_low": Param(0.35, "number", minimum=0, maximum=1),
        "bg_high": Param(0.55, "number", minimum=0, maximum=1),
        "weight": Param(0.1, "number", minimum=0),
        # .npy/.json path (or list) of per-block entropies; null = uniform; "baseline" = the
        # workflow's entropy_weights rule computes them from the trained run of the grid
        # variant `entropy_baseline` (an MCTformer-V2, as the official ent_voc_mctformer.py)
        "entropy_weights": Param(None, nullable=True),
        "entropy_baseline": Param("mctformer_v2", "str"),
        "shallow_reduce": Param("mean", "str", choices=("mean", "sum")),
        "cam_scales": Param([1.0], "numbers", minimum=0, exclusive_minimum=True),
        "cam_flip": Param(True, "bool"),
        # true: the extra no-grad passes (flip, other scales), which only feed the pseudo-labels,
        # run under bf16 autocast; false: in the training loop's precision (fp32, or bf16 with amp)
        "label_pass_bf16": Param(False, "bool"),
        "par": Param(True, "bool"),  # false: arg-max of the thresholded CAMs without PAR
        # "deep" (code), "all" (paper figure) or block indices
        "loss_layers": Param("deep", "blocks", choices=("deep",)),
        # "shallow" (code), "all" (paper figure) or block indices
        "refine_layers": Param("shallow", "blocks", choices=("shallow",)),
    }

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        p = self.params
        if not 0 <= p["bg_low"] <= p["bg_high"]:
            raise ValueError(
                f"method_params.aream: need 0 <= bg_low <= bg_high, got {p['bg_low']}, {p['bg_high']}"
            )
        self.par_module = PAR() if p["par"] else None
        self._entropy: np.ndarray | None = None
        self._weight_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- configuration ------------------------------------------------------

    def limits(self, train: dict[str, Any]) -> list[tuple[str, str]]:
        """The affinity loss starts after ``cls_epochs``: it must start within the run."""
        if self.params["cls_epochs"] >= train["epochs"]:
            return [
                (
                    "cls_epochs",
                    f"{self.params['cls_epochs']} is not less than train.epochs "
                    f"({train['epochs']}), so the affinity loss would never be trained; lower "
                    "it or train longer",
                )
            ]
        return []

    def blocks(self, depth: int) -> tuple[list[int], list[int]]:
        """(refine blocks, loss blocks) for a ``depth``-block model."""
        split = int(self.params["layer_index"])
        if not 1 <= split < depth and (
            self.params["refine_layers"] == "shallow" or self.params["loss_layers"] == "deep"
        ):
            raise ValueError(
                f"method_params.aream.layer_index {split} must be in 1..{depth - 1} for a {depth}-block "
                "model (the official 7 is for 12 blocks; scale it, e.g. 2 for 4 blocks)"
            )

        def choose(spec: Any, named: str, named_blocks: list[int]) -> list[int]:
            if spec == named:
                return named_blocks
            if spec == "all":
                return list(range(depth))
            if isinstance(spec, str):
                raise ValueError(
                    f"method_params.aream: layer spec {spec!r} is not {named!r}, 'all' or a list"
                )
            return select_blocks(depth, spec)

        refine = choose(self.params["refine_layers"], "shallow", list(range(split)))
        loss = choose(self.params["loss_layers"], "deep", list(range(split, depth)))
        return refine, loss

    def entropy(self, depth: int) -> np.ndarray | None:
        source = self.params["entropy_weights"]
        if source is None:
            return None
        if source == ENTROPY_FROM_BASELINE:
            # `wsss train --upstream entropy_weights=FILE` replaces the keyword by the file's values
            raise ValueError(
                f"method_params.{self.name}.entropy_weights is {ENTROPY_FROM_BASELINE!r}: give the "
                "weights file with `wsss train --upstream entropy_weights=FILE` (the workflow's "
                "entropy_weights rule writes it), or set a path, a list or null"
            )
        if self._entropy is None:
            self._entropy = load_entropy_weights(source)
        if len(self._entropy) != depth:
            raise ValueError(
                f"method_params.aream.entropy_weights has {len(self._entropy)} values, the model {depth} blocks"
            )
        return self._entropy

    def upstream(self) -> list[Upstream]:
        """``entropy_weights: baseline``: the per-block weights of the trained
        ``entropy_baseline`` run (rule ``entropy_weights``), same dataset and seed."""
        if self.params["entropy_weights"] != ENTROPY_FROM_BASELINE:
            return []
        run = self.params["entropy_baseline"]
        return [Upstream("entropy_weights", "entropy_weights", run, ENTROPY_BASELINE_METHOD)]

    def read_upstream(self, upstream: Upstream, path: str) -> list[float]:
        weights = load_entropy_weights(path)
        log.info("entropy weights from %s: %s", path, " ".join(f"{w:.4f}" for w in weights))
        return [float(w) for w in weights]

    def _weights(
        self, depth: int, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(refine weights 1 - e_l, loss weights e_l) on the chosen blocks, or (None, None)."""
        entropy = self.entropy(depth)
        if entropy is None:
            return None, None
        key = (depth, str(device))
        if key not in self._weight_cache:
            refine, loss = self.blocks(depth)
            e = torch.as_tensor(entropy, dtype=torch.float32, device=device)
            self._weight_cache[key] = (1.0 - e[refine], e[loss])
        return self._weight_cache[key]

    def on_train_start(self, model: MultiClassTokenViT, data: Any, device: torch.device) -> None:
        self.blocks(model.depth)  # fail before the first epoch, not after cls_epochs
        self.entropy(model.depth)
        if self.params["label_pass_bf16"] and not native_bf16(torch.device(device)):
            log.warning(
                "method_params.%s.label_pass_bf16 is true, but this CPU has no native bf16 "
                "(avx512_bf16 or AMX): the flipped pass is emulated and can be several times "
                "slower than in fp32 (6x measured with AVX2 only); set it false for the code's fp32",
                self.name,
            )
        if self.par_module is not None:
            self.par_module.to(device)

    # -- training -----------------------------------------------------------

    def forward(
        self,
        model: MultiClassTokenViT,
        images: torch.Tensor,
        epoch: int,
        want_logits: bool = False,
        full_attention: Sequence[int] | None = None,
    ) -> ModelOutput:
        return model(images, want_logits=want_logits, full_attention=full_attention)

    def _label_pass_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast for the extra CAM passes when ``label_pass_bf16``; else unchanged."""
        if self.params["label_pass_bf16"]:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _grid_cam(self, output: ModelOutput, refine: list[int], weights) -> torch.Tensor:
        """One pass's shallow-refined CAM on its patch grid (B x C x h x w, float32)."""
        # float32 even under the training loop's bf16 autocast (min-max and thresholds follow)
        with torch.autocast(output.patch_cam.device.type, enabled=False):
            return shallow_refined_cam(
                [a.detach().float() for a in output.attentions],
                output.patch_cam.detach().float(),
                refine,
                weights,
                self.params["shallow_reduce"],
            )

    @torch.no_grad()
    def batch_cam(
        self,
        model: MultiClassTokenViT,
        output: ModelOutput,
        images: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """The current batch's CAM (B x C x H x W, [0, 1], zero off the GT classes), ``gen_msf_cam``.

        Scale 1 reuses the training forward's attention (the official code runs
        a second forward in train mode; with drop-path 0 it is the same); each
        extra pass (flip, other scales) is one no-grad forward, in train mode
        as in the official code.

        The official code upsamples every pass to H x W, flips the flipped ones
        back and sums. Bilinear resizing is linear and commutes with a
        horizontal flip, so the passes that share a patch grid are flipped and
        summed on the grid and upsampled once: the same sum up to float rounding.
        """
        batch, _, height, width = images.shape
        refine, _ = self.blocks(len(output.attentions))
        weights, _ = self._weights(len(output.attentions), images.device)
        patch = model.patch_size
        flip = bool(self.params["cam_flip"])
        by_grid: dict[tuple[int, int], torch.Tensor] = {}  # grid -> summed grid CAMs, in pass order

        def add(cam: torch.Tensor) -> None:
            grid = tuple(cam.shape[-2:])
            by_grid[grid] = cam if grid not in by_grid else by_grid[grid].add_(cam)

        for scale in self.params["cam_scales"]:
            scale = float(scale)
            if scale == 1.0:
                add(self._grid_cam(output, refine, weights))
                if flip:
                    # the refine blocks' patch->patch attention; class rows elsewhere
                    with self._label_pass_precision(images.device):
                        flipped = self.forward(
                            model, images.flip(-1), epoch=-1, full_attention=refine
                        )
                    add(self._grid_cam(flipped, refine, weights).flip(-1))
                continue
            size = [max(patch, int(round(s * scale / patch)) * patch) for s in (height, width)]
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            if flip:
                x = torch.cat([x, x.flip(-1)])
            with self._label_pass_precision(images.device):
                output_at_scale = self.forward(model, x, epoch=-1, full_attention=refine)
            cam = self._grid_cam(output_at_scale, refine, weights)
            add(cam[:batch])
            if flip:
                add(cam[batch:].flip(-1))
        cam = None
        for grid_cam in by_grid.values():
            with torch.autocast(images.device.type, enabled=False):
                up = F.interpolate(
                    grid_cam, size=(height, width), mode="bilinear", align_corners=False
                )
            cam = up if cam is None else cam.add_(up)
        cam = minmax_per_class(cam.relu_(), eps=1e-6, inplace=True)  # camutils
        return cam.mul_((labels > 0).to(cam.dtype)[..., None, None])

    @torch.no_grad()
    def pseudo_labels(
        self,
        model: MultiClassTokenViT,
        output: ModelOutput,
        images: torch.Tensor,
        labels: torch.Tensor,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """B x H x W pseudo-labels (0 bg, c + 1 class c, 255 uncertain) for the batch.

        ``grid=(h, w)``: only the h x w pixels that nearest-neighbour
        downsampling to the patch grid keeps (what the affinity target reads,
        ``seg_to_aff``), without labelling the others.
        """
        cam = self.batch_cam(model, output, images, labels)
        height, width = images.shape[-2:]
        sample = None
        if grid is not None:
            sample = (nearest_indices(grid[0], height), nearest_indices(grid[1], width))
        with torch.autocast(images.device.type, enabled=False):
            if self.par_module is not None:
                self.par_module.to(images.device)
            return refine_cams_to_labels(
                denormalize(images),
                cam.float(),
                labels,
                self.params["bg_low"],
                self.params["bg_high"],
                self.par_module,
                ignore_index=IGNORE_INDEX,
                sample=sample,
            )

    def affinity_loss(self, output: ModelOutput, seg_labels: torch.Tensor) -> torch.Tensor:
        """Weighted mean over the loss blocks of :func:`balanced_affinity_loss` on the pre-softmax logits."""
        if output.attention_logits is None:
            raise ValueError(
                "AReAM needs the attention logits: run the model with want_logits=True"
            )
        depth = len(output.attention_logits)
        _, loss_blocks = self.blocks(depth)
        _, weights = self._weights(depth, seg_labels.device)
        c = output.num_classes
        target = affinity_target(downsample_labels(seg_labels, output.grid), IGNORE_INDEX)
        logits = torch.stack(
            [output.attention_logits[i][:, :, c:, c:].mean(dim=1) for i in loss_blocks]
        )
        per_block = balanced_affinity_loss(logits, target)  # one per loss block
        if weights is not None:
            per_block = per_block * weights
        return per_block.mean()

    def loss(
        self, model: MultiClassTokenViT, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if epoch < self.params["cls_epochs"]:
            loss, parts = super().loss(model, images, labels, epoch)
            return loss, {**parts, "loss_aff": 0.0}
        output = self.forward(model, images, epoch, want_logits=True)
        loss_cls = F.multilabel_soft_margin_loss(output.class_logits, labels)
        loss_patch = F.multilabel_soft_margin_loss(output.patch_logits, labels)
        seg_labels = self.pseudo_labels(model, output, images, labels, grid=output.grid)
        loss_aff = self.affinity_loss(output, seg_labels)
        loss = loss_cls + loss_patch + self.params["weight"] * loss_aff
        return loss, {
            "loss_cls": loss_cls.item(),
            "loss_patch": loss_patch.item(),
            "loss_aff": loss_aff.item(),
        }
