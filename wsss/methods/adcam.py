"""AD-CAM (Huang et al., arXiv 2211.10931): attention-diffused CAM, *reconstructed*.

The paper has no public code and only its abstract could be read
(methods.md section 5), so this is our reconstruction of the two steps the
abstract names; every open choice is a parameter (``method_params.adcam``).
Design notes: ``docs/methods/adcam.md``.

For each forward pass (each scale, and the flipped copy in the same batch),
on the B x C x h x w patch-grid CAM ``M0`` before upsampling:

1. Patch attention ``A`` (B x N x N, rows = queries): head-mean
   patch->patch block of the chosen blocks (``layers``), averaged over those
   blocks, then row-renormalised (the class-token columns are left out, so
   its rows summed to < 1 before that). Float32 throughout.
2. "Conservative" attention (``refine``): damp the attention between two
   patches whose attention distributions share few common neighbours:
   ``A ⊙ (A Aᵀ)`` (default), ``A Aᵀ``, ``A ⊙ cos`` or ``A`` unchanged.
3. Transition matrix ``T``: the refined attention raised to ``power`` and
   row-normalised (row-stochastic).
4. "Convincing" diffusion (``steps``, ``mode``): ``M ← Tᵀ M`` (scatter: each
   patch spreads its activation to the patches it attends to, in proportion
   to T) or ``M ← T M`` (gather, MCTformer-style), ``steps`` times, then
   ``M ← (1 − mix) M0 + mix M``.

Everything is batched over images and classes (batched matmuls); the only
Python loops are over diffusion steps or over the log2(steps) squarings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from wsss.methods.base import CamRefiner, Param, register_refiner
from wsss.models.attention import blocks_for, check_layers

REFINES = ("product", "cooccurrence", "cosine", "none")
MODES = ("scatter", "gather")


# ----------------------------------------------------------------- validation


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def validate_params(params: dict[str, Any], prefix: str = "method_params.adcam") -> dict[str, Any]:
    """Check every AD-CAM parameter; raise ValueError naming ``<prefix>.<key>``. Returns them normalised."""
    out = dict(params)
    out["layers"] = check_layers(params["layers"], f"{prefix}.layers")
    if params["refine"] not in REFINES:
        raise ValueError(f"{prefix}.refine: {params['refine']!r} is not one of {list(REFINES)}")
    out["power"] = _number(params["power"], f"{prefix}.power")
    if out["power"] < 0:
        raise ValueError(f"{prefix}.power: must be >= 0, got {params['power']!r}")
    steps = params["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{prefix}.steps: expected an integer >= 0, got {steps!r}")
    if params["mode"] not in MODES:
        raise ValueError(f"{prefix}.mode: {params['mode']!r} is not one of {list(MODES)}")
    out["mix"] = _number(params["mix"], f"{prefix}.mix")
    if not 0.0 <= out["mix"] <= 1.0:
        raise ValueError(f"{prefix}.mix: must be in [0, 1], got {params['mix']!r}")
    squaring = params["squaring"]
    if not (isinstance(squaring, bool) or squaring == "auto"):
        raise ValueError(f'{prefix}.squaring: expected "auto", true or false, got {squaring!r}')
    return out


# ----------------------------------------------------------------- pure pieces


def row_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divide each row of a non-negative ... x N x N matrix by its sum.

    A row that sums to zero (no attention at all) becomes the identity row, so
    the result is always row-stochastic and such a patch keeps its own
    activation under diffusion.
    """
    sums = x.sum(dim=-1, keepdim=True)
    empty = sums <= 0
    out = x / torch.where(empty, torch.ones_like(sums), sums)
    if bool(empty.any()):
        out = out + torch.diag_embed(empty.squeeze(-1).to(out.dtype))
    return out


def patch_attention(
    attentions: Sequence[torch.Tensor], num_classes: int, layers: int | str | Sequence[int] = "all"
) -> torch.Tensor:
    """Row-stochastic patch->patch attention A, B x N x N (rows = queries), float32.

    Head-mean of the patch rows/patch columns of each chosen block's softmax
    attention (class tokens first in the B x heads x T x T maps), averaged
    over the blocks, then row-renormalised: the class-token columns are
    excluded, so before renormalisation each row sums to less than 1. (After
    renormalisation, averaging and summing the blocks give the same A.)
    """
    blocks = blocks_for(len(attentions), layers, "method_params.adcam.layers")
    total = None
    for i in blocks:
        a = attentions[i][:, :, num_classes:, num_classes:].mean(dim=1, dtype=torch.float32)
        total = a if total is None else total + a
    return row_normalize(total / len(blocks))


def conservative_attention(attention: torch.Tensor, refine: str = "product") -> torch.Tensor:
    """Common-neighbour ("conservative") refinement of a row-stochastic B x N x N attention A.

    With G = A Aᵀ (G_ij = Σ_k A_ik A_jk, the overlap of the two patches'
    attention distributions, i.e. their shared neighbours):

    - ``"product"``: A ⊙ G, which damps attention between patches whose
      neighbourhoods differ (the default; it matches "reduce their attention");
    - ``"cooccurrence"``: G alone (symmetric);
    - ``"cosine"``: A ⊙ cos, cos_ij = G_ij / sqrt(G_ii G_jj), the cosine
      similarity of rows i and j of A;
    - ``"none"``: A unchanged (skip the conservative step).

    The result is non-negative but not normalised; see :func:`transition_matrix`.
    """
    if refine == "none":
        return attention
    if refine not in REFINES:
        raise ValueError(f"method_params.adcam.refine: {refine!r} is not one of {list(REFINES)}")
    gram = attention @ attention.transpose(-1, -2)
    if refine == "cooccurrence":
        return gram
    if refine == "product":
        return gram.mul_(attention)  # gram is a fresh tensor: in place saves one N x N buffer
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    cosine = gram.div_((norms[..., :, None] * norms[..., None, :]).clamp_min(1e-12))
    return cosine.mul_(attention)


def transition_matrix(refined: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Row-stochastic transition matrix T = rownorm(Â^β) of a non-negative B x N x N Â.

    Every row of T is >= 0 and sums to 1 (an all-zero row becomes the identity
    row: that patch keeps its activation). β > 1 sharpens each row towards its
    largest entries, β < 1 flattens it; β = 0 gives the uniform distribution
    over the row's *support* (zero entries stay zero, i.e. 0^0 := 0 here).
    Each row is divided by its maximum before the power, which changes nothing
    after normalisation but keeps large β from underflowing a whole row.
    """
    if power < 0:
        raise ValueError(f"method_params.adcam.power: must be >= 0, got {power!r}")
    x = refined.float().clamp_min(0)
    if power != 1:
        peak = x.amax(dim=-1, keepdim=True)
        x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
        x = torch.where(x > 0, x.pow(power), torch.zeros_like(x))
    return row_normalize(x)


def transition_power(transition: torch.Tensor, steps: int) -> torch.Tensor:
    """T^steps of a batch of square matrices by repeated squaring (binary exponentiation).

    ``floor(log2 steps)`` squarings plus one product per set bit of ``steps``;
    T^0 is the identity. Products of row-stochastic matrices stay row-stochastic.
    """
    if steps < 0:
        raise ValueError(f"method_params.adcam.steps: must be >= 0, got {steps!r}")
    n = transition.shape[-1]
    result = None
    base = transition
    while steps:
        if steps & 1:
            result = base if result is None else result @ base
        steps >>= 1
        if steps:
            base = base @ base
    if result is None:
        return (
            torch.eye(n, dtype=transition.dtype, device=transition.device)
            .expand_as(transition)
            .clone()
        )
    return result


def diffuse(
    maps: torch.Tensor,
    transition: torch.Tensor,
    steps: int = 1,
    mode: str = "scatter",
    squaring: bool = False,
) -> torch.Tensor:
    """Diffuse B x C x N class maps with a row-stochastic B x N x N transition matrix T.

    Writing one class map as a column vector M over the N patches:

    - ``"scatter"``: M ← Tᵀ M, i.e. M'_i = Σ_j T_ji M_j: every patch j spreads
      its activation over the patches it attends to, in proportion to row j of
      T (a random walk of activation mass). Because T's rows sum to 1 this
      **preserves each class's total activation**: Σ_i (Tᵀ M)_i = Σ_j M_j.
    - ``"gather"``: M ← T M, i.e. M'_i = Σ_j T_ij M_j: every patch takes the
      T-weighted average of the patches it attends to (MCTformer's
      refinement, up to normalisation). This **preserves constants**:
      T 1 = 1, so a constant map stays constant; total mass is not kept.

    ``steps`` applications (0 returns the input). With ``squaring`` the
    power T^steps is formed first by repeated squaring (see
    :func:`transition_power`): O(log steps) N x N products instead of
    ``steps`` C x N x N products; both are the same operator.
    """
    if mode not in MODES:
        raise ValueError(f"method_params.adcam.mode: {mode!r} is not one of {list(MODES)}")
    if steps < 0:
        raise ValueError(f"method_params.adcam.steps: must be >= 0, got {steps!r}")
    if steps == 0:
        return maps
    # maps are rows (B x C x N): scatter Tᵀ M  -> maps @ T; gather T M -> maps @ Tᵀ
    operator = transition if mode == "scatter" else transition.transpose(-1, -2)
    if squaring:
        return maps @ transition_power(operator, steps)
    for _ in range(steps):
        maps = maps @ operator
    return maps


def use_squaring(squaring: bool | str, steps: int, classes: int, patches: int) -> bool:
    """Resolve ``squaring: auto``: square when it costs fewer multiply-adds than stepping.

    Stepping costs ``steps * C * N^2``; squaring ``(squarings + products) * N^3 + C * N^2``.
    """
    if squaring != "auto":
        return bool(squaring)
    if steps <= 1:
        return False
    products = steps.bit_length() - 1 + bin(steps).count("1") - 1
    return products * patches + classes < steps * classes


def adcam_refine(
    cam: torch.Tensor,
    attention: torch.Tensor,
    refine: str = "product",
    power: float = 1.0,
    steps: int = 2,
    mode: str = "scatter",
    mix: float = 1.0,
    squaring: bool | str = "auto",
) -> torch.Tensor:
    """AD-CAM on a B x C x h x w CAM with a row-stochastic B x N x N patch attention (N = h*w).

    ``(1 - mix) * M0 + mix * diffuse(M0, transition_matrix(conservative_attention(A)))``,
    in float32. Returns B x C x h x w float32.
    """
    batch, classes, h, w = cam.shape
    if attention.shape[-1] != h * w:
        raise ValueError(
            f"attention is over {attention.shape[-1]} patches but the CAM grid is {h}x{w}"
        )
    m0 = cam.float().reshape(batch, classes, h * w)
    if steps == 0 or mix == 0:
        return m0.reshape(batch, classes, h, w)
    transition = transition_matrix(conservative_attention(attention.float(), refine), power)
    squared = use_squaring(squaring, steps, classes, h * w)
    diffused = diffuse(m0, transition, steps, mode, squaring=squared)
    out = diffused if mix == 1 else (1 - mix) * m0 + mix * diffused
    return out.reshape(batch, classes, h, w)


# ----------------------------------------------------------------- refiner


@register_refiner
class ADCAMRefiner(CamRefiner):
    """AD-CAM (reconstructed): conservative attention, then diffusion of the CAM over it."""

    name = "adcam"
    label = "AD-CAM"
    reconstructed = True
    params_spec = {
        # blocks for the patch attention: "all", k (last k) or a list of indices
        "layers": Param("all", "blocks"),
        # product: A ⊙ AAᵀ; cooccurrence: AAᵀ; cosine: A ⊙ cos; none
        "refine": Param("product", "str", choices=REFINES),
        "power": Param(1.0, "number", minimum=0),  # sharpening β >= 0 before row-normalisation
        "steps": Param(2, "int", minimum=0),  # diffusion steps t >= 0
        # scatter: M <- Tᵀ M (mass-preserving); gather: M <- T M
        "mode": Param("scatter", "str", choices=MODES),
        "mix": Param(1.0, "number", minimum=0, maximum=1),  # λ: M <- (1 - λ) M0 + λ diffused
        # T^t by repeated squaring: "auto" (when cheaper), true or false (checked below)
        "squaring": Param("auto"),
    }

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.params = validate_params(self.params, f"method_params.{self.name}")

    def __call__(self, cam, output, method, recipe):
        p = self.params
        if p["steps"] == 0 or p["mix"] == 0:
            return cam.float()
        attention = patch_attention(output.attentions, output.num_classes, p["layers"])
        return adcam_refine(
            cam, attention, p["refine"], p["power"], p["steps"], p["mode"], p["mix"], p["squaring"]
        )
