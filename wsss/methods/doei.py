"""DOEI (Zhu et al., arXiv 2502.15885), **reconstructed**: no public code exists.

Source notes: methods.md section 6 (abstract + the README's framework figure,
``docs/figures/doei-framework.png``); design notes and every open choice in
``docs/methods/doei.md``. Labelled "DOEI (reconstructed)" everywhere; none of
the paper's numbers can be compared with results from this code.

DOEI is a plug-in that re-embeds the tokens inside the transformer, in training
and at CAM time, with no learnable parameters. In every selected block, with
``X`` the block input (B x T x D, T = C class tokens + N patch tokens) and ``Ā``
the head-mean softmax attention:

1. **HFA** (hybrid feature alignment). ``S`` = cosine similarity of the
   embedding-layer tokens (negative values clipped to 0), ``R`` = colour
   affinity ``exp(-|rgb_i - rgb_j|^2 / sigma^2)`` of the per-patch mean RGB
   (class-token rows and columns 1). Hybrid ``G`` = ``S ⊙ R`` ("hadamard",
   methods.md 6.3) or ``S · colnorm(R)`` on the patch columns ("product", the
   figure's ⊗ = matrix multiplication: each token's similarity to patch j is
   averaged over the patches of j's colour). ``H = rownorm(Ā + λ·rownorm(G))``.
   Without "hfa": ``H = Ā``.
2. **CPDO**: ``W_c = rownorm(amp(H_cc + H_ccᵀ))``; ``X_cls' = W_c X_cls``.
3. **PPDO**: ``U = H_cp + H_pcᵀ`` (C x N); per patch across classes
   ``Ũ = rownorm(amp(Uᵀ))`` (N x C); ``W_p = rownorm(Ũ Ũᵀ)`` (N x N);
   ``X_pat' = W_p X_pat``.
4. ``X_out = Block(X) + η·[X_cls'; X_pat']``; a part whose component is off is
   left exactly as the block wrote it. With "hfa" alone (no decoupling) the
   update is the undecoupled hybrid mixing ``H X`` over all tokens.

``amp`` multiplies entries at/above the row threshold (row mean or a quantile)
by ``1 + γ`` and those below by ``1 - γ``. "Progressive": γ (and/or η) grows
linearly with the depth of the selected block, or with the training epoch.

The core is :class:`DOEIHook` / :func:`install_doei`, usable by any method on
the multi-class-token model; registered methods: ``doei`` (MCTformer-V2 +
DOEI) and ``aream_doei`` (AReAM + DOEI, DOEI's parameters nested under
``doei``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from wsss.methods.aream import AReAM
from wsss.methods.base import Param, TrainingMethod, register_training_method
from wsss.models import MultiClassTokenViT
from wsss.models.attention import check_layers, select_blocks
from wsss.ops.par import denormalize

COMPONENTS = ("hfa", "cpdo", "ppdo")
HFA_MODES = ("product", "hadamard")
PROGRESSIVE = ("none", "depth", "epoch")
PROGRESSIVE_ON = ("gamma", "eta", "both")
SOURCES = ("input", "output")

DOEI_SPEC: dict[str, Param] = {
    "blocks": Param("all", "blocks"),  # "all", k (the last k blocks) or a list of block indices
    "components": Param(["hfa", "cpdo", "ppdo"]),  # ablation: any subset (checked by DOEIConfig)
    "hfa_weight": Param(
        1.0, "number", minimum=0
    ),  # λ: weight of the (row-normalised) hybrid term against Ā
    "hfa_mode": Param(
        "product", "str", choices=HFA_MODES
    ),  # "product" (figure's ⊗) or "hadamard" (S ⊙ R, methods.md 6.3)
    "colour_sigma": Param(
        0.1, "number", minimum=0, exclusive_minimum=True
    ),  # σ of the colour affinity, RGB in [0, 1]
    "gamma": Param(
        0.5, "number", minimum=0, maximum=1
    ),  # amplify x(1+γ) at/above the threshold, suppress x(1-γ) below
    "threshold": Param(
        "mean"
    ),  # per-row threshold: "mean" or a quantile in (0, 1) (checked by DOEIConfig)
    "eta": Param(0.1, "number", minimum=0),  # η: X_out = Block(X) + η [X_cls'; X_pat']
    "source": Param(
        "input", "str", choices=SOURCES
    ),  # tokens re-embedded: block "input" (6.3) or block "output" (figure)
    "progressive": Param(
        "depth", "str", choices=PROGRESSIVE
    ),  # "none", "depth" (linear in selected-block rank) or "epoch"
    "progressive_on": Param(
        "gamma", "str", choices=PROGRESSIVE_ON
    ),  # what grows: "gamma", "eta" or "both"
    "ramp_epochs": Param(
        10, "int", minimum=1
    ),  # progressive "epoch": full strength from epoch ramp_epochs - 1 on
    "detach": Param(True, "bool"),  # re-weighting matrices carry no gradient (tokens do)
}
DOEI_DEFAULTS: dict[str, Any] = {key: param.default for key, param in DOEI_SPEC.items()}


# ----------------------------------------------------------------- configuration


@dataclass
class DOEIConfig:
    """Validated DOEI parameters (see :data:`DOEI_DEFAULTS` for the meaning of each)."""

    blocks: int | str | list[int] = "all"
    components: list[str] = field(default_factory=lambda: list(COMPONENTS))
    hfa_weight: float = 1.0
    hfa_mode: str = "product"
    colour_sigma: float = 0.1
    gamma: float = 0.5
    threshold: str | float = "mean"
    eta: float = 0.1
    source: str = "input"
    progressive: str = "depth"
    progressive_on: str = "gamma"
    ramp_epochs: int = 10
    detach: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "method_params.doei") -> DOEIConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(DOEI_DEFAULTS)}"
            )
        config = cls(**{**DOEI_DEFAULTS, **d})
        config.validate(where)
        return config

    def validate(self, where: str) -> None:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"{where}.{key}: {why}, got {getattr(self, key)!r}")

        check_layers(self.blocks, f"{where}.blocks")
        if isinstance(self.components, str) or not set(self.components) <= set(COMPONENTS):
            fail("components", f"a list, subset of {list(COMPONENTS)}")
        self.components = [c for c in COMPONENTS if c in self.components]
        if self.hfa_weight < 0:
            fail("hfa_weight", "must be >= 0")
        if self.hfa_mode not in HFA_MODES:
            fail("hfa_mode", f"must be one of {list(HFA_MODES)}")
        if not self.colour_sigma > 0:
            fail("colour_sigma", "must be > 0")
        if not 0 <= self.gamma <= 1:
            fail("gamma", "must be in [0, 1] (entries stay >= 0)")
        if self.threshold != "mean" and (
            isinstance(self.threshold, (str, bool)) or not 0 < float(self.threshold) < 1
        ):
            fail("threshold", '"mean" or a quantile in (0, 1)')
        if self.eta < 0:
            fail("eta", "must be >= 0")
        if self.source not in SOURCES:
            fail("source", f"must be one of {list(SOURCES)}")
        if self.progressive not in PROGRESSIVE:
            fail("progressive", f"must be one of {list(PROGRESSIVE)}")
        if self.progressive_on not in PROGRESSIVE_ON:
            fail("progressive_on", f"must be one of {list(PROGRESSIVE_ON)}")
        if (
            isinstance(self.ramp_epochs, bool)
            or not isinstance(self.ramp_epochs, int)
            or self.ramp_epochs < 1
        ):
            fail("ramp_epochs", "must be an integer >= 1")

    @property
    def decoupled(self) -> bool:
        return "cpdo" in self.components or "ppdo" in self.components

    @property
    def inactive(self) -> bool:
        """True when the hook provably leaves every block output unchanged."""
        return self.eta == 0 or not self.components


# ----------------------------------------------------------------- pure pieces


def row_normalize(weights: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Divide by the sum along ``dim`` (non-negative input -> rows sum to 1)."""
    return weights / weights.sum(dim=dim, keepdim=True).clamp_min(eps)


def row_threshold(weights: torch.Tensor, threshold: str | float, dim: int = -1) -> torch.Tensor:
    """Per-row threshold τ along ``dim``: the mean, or the given quantile."""
    if threshold == "mean":
        return weights.mean(dim=dim, keepdim=True)
    return torch.quantile(weights.float(), float(threshold), dim=dim, keepdim=True).to(
        weights.dtype
    )


def amplify_suppress(
    weights: torch.Tensor, gamma: float, threshold: str | float = "mean", dim: int = -1
) -> torch.Tensor:
    """Entries ``>= τ`` times ``1 + γ``, entries ``< τ`` times ``1 - γ`` (τ per row along ``dim``).

    No normalisation: the caller row-normalises. ``gamma = 0`` returns the input.
    """
    if gamma == 0:
        return weights
    tau = row_threshold(weights, threshold, dim)
    return torch.where(weights >= tau, weights * (1.0 + gamma), weights * (1.0 - gamma))


def patch_colours(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Normalised B x 3 x H x W images -> B x N x 3 per-patch mean RGB in [0, 1]."""
    rgb = denormalize(images)
    return F.adaptive_avg_pool2d(rgb, grid).flatten(2).transpose(1, 2)


def colour_affinity(
    images: torch.Tensor, grid: tuple[int, int], num_classes: int, sigma: float
) -> torch.Tensor:
    """R (B x T x T): ``exp(-|rgb_i - rgb_j|^2 / sigma^2)`` between patches; class rows/cols 1."""
    rgb = patch_colours(images, grid)
    squared = rgb.pow(2).sum(dim=-1)
    distance = (
        squared[:, :, None] + squared[:, None, :] - 2.0 * rgb @ rgb.transpose(1, 2)
    ).clamp_min(0)
    patches = torch.exp(-distance / sigma**2)
    batch, n = patches.shape[:2]
    affinity = patches.new_ones(batch, num_classes + n, num_classes + n)
    affinity[:, num_classes:, num_classes:] = patches
    return affinity


def token_similarity(embedded: torch.Tensor) -> torch.Tensor:
    """S (B x T x T): cosine similarity of the embedding-layer tokens, negatives clipped to 0."""
    unit = F.normalize(embedded.float(), dim=-1)
    return (unit @ unit.transpose(1, 2)).clamp_min(0)


def hybrid_term(
    similarity: torch.Tensor, colour: torch.Tensor, num_classes: int, mode: str
) -> torch.Tensor:
    """HFA's hybrid matrix G (B x T x T, entries in [0, 1]) before row normalisation.

    "hadamard": ``G = S ⊙ R``. "product": class columns ``G[:, c] = S[:, c]``; patch
    columns ``G[:, j] = sum_k S[:, k] R_kj / sum_k R_kj`` over patches k (the
    colour-weighted mean of each token's similarity to the patches of j's colour).
    """
    if mode == "hadamard":
        return similarity * colour
    if mode != "product":
        raise ValueError(f"hfa_mode must be one of {list(HFA_MODES)}, got {mode!r}")
    c = num_classes
    patch_colour = colour[:, c:, c:]
    column_sums = patch_colour.sum(dim=1, keepdim=True).clamp_min(1e-12)
    mixing = patch_colour / column_sums  # column-normalised colour affinity
    return torch.cat([similarity[:, :, :c], similarity[:, :, c:] @ mixing], dim=-1)


def hybrid_attention(
    mean_attention: torch.Tensor, hybrid: torch.Tensor | None, hfa_weight: float
) -> torch.Tensor:
    """H = rownorm(Ā + λ rownorm(G)); ``Ā`` itself when ``hybrid`` is None (no HFA)."""
    if hybrid is None:
        return mean_attention
    return row_normalize(
        mean_attention + hfa_weight * row_normalize(hybrid.to(mean_attention.dtype))
    )


def class_weights(
    h: torch.Tensor, num_classes: int, gamma: float, threshold: str | float
) -> torch.Tensor:
    """CPDO: ``W_c = rownorm(amp(H_cc + H_ccᵀ))`` (B x C x C)."""
    hcc = h[:, :num_classes, :num_classes]
    return row_normalize(amplify_suppress(hcc + hcc.transpose(1, 2), gamma, threshold))


def patch_class_confidence(
    h: torch.Tensor, num_classes: int, gamma: float, threshold: str | float
) -> torch.Tensor:
    """PPDO's decoupled confidence ``Ũ = rownorm(amp(Uᵀ))``, U = H_cp + H_pcᵀ: B x N x C (per patch)."""
    c = num_classes
    u_t = h[:, c:, :c] + h[:, :c, c:].transpose(1, 2)  # B x N x C
    return row_normalize(amplify_suppress(u_t, gamma, threshold))


def patch_weights(
    h: torch.Tensor, num_classes: int, gamma: float, threshold: str | float
) -> torch.Tensor:
    """PPDO: ``W_p = rownorm(Ũ Ũᵀ)`` (B x N x N): patches sharing confident classes mix."""
    confidence = patch_class_confidence(h, num_classes, gamma, threshold)
    return row_normalize(confidence @ confidence.transpose(1, 2))


def doei_matrices(
    mean_attention: torch.Tensor,
    hybrid: torch.Tensor | None,
    num_classes: int,
    config: DOEIConfig,
    gamma: float | None = None,
) -> dict[str, torch.Tensor]:
    """The re-weighting matrices of one block: ``H`` always, ``W_c`` / ``W_p`` if their component is on."""
    gamma = config.gamma if gamma is None else gamma
    h = hybrid_attention(
        mean_attention, hybrid if "hfa" in config.components else None, config.hfa_weight
    )
    out = {"H": h}
    if "cpdo" in config.components:
        out["W_c"] = class_weights(h, num_classes, gamma, config.threshold)
    if "ppdo" in config.components:
        out["W_p"] = patch_weights(h, num_classes, gamma, config.threshold)
    return out


def doei_update(
    tokens: torch.Tensor, matrices: dict[str, torch.Tensor], num_classes: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(X_cls', X_pat') from the matrices; None for a part that is not updated."""
    c = num_classes
    if "W_c" not in matrices and "W_p" not in matrices:
        mixed = matrices["H"].to(tokens.dtype) @ tokens  # HFA alone: undecoupled hybrid mixing
        return mixed[:, :c], mixed[:, c:]
    new_cls = matrices["W_c"].to(tokens.dtype) @ tokens[:, :c] if "W_c" in matrices else None
    new_pat = matrices["W_p"].to(tokens.dtype) @ tokens[:, c:] if "W_p" in matrices else None
    return new_cls, new_pat


# ----------------------------------------------------------------- the hook


class DOEIHook:
    """A ``MultiClassTokenViT.block_hooks`` entry applying DOEI on the selected blocks.

    Holds no parameters (the model's state dict is unchanged). ``epoch`` is set
    by the training method's ``loss`` (progressive "epoch"); None = final strength.
    """

    def __init__(self, config: DOEIConfig | dict[str, Any], depth: int) -> None:
        self.config = config if isinstance(config, DOEIConfig) else DOEIConfig.from_dict(config)
        self.blocks = sorted(set(select_blocks(depth, self.config.blocks)))
        self.rank = {block: i for i, block in enumerate(self.blocks)}
        self.epoch: int | None = None
        self._key = f"doei_hybrid_{id(self)}"

    def strength(self, index: int) -> tuple[float, float]:
        """(γ, η) at block ``index`` after the progressive schedule."""
        c = self.config
        if c.progressive == "depth":
            factor = (self.rank[index] + 1) / len(self.blocks)
        elif c.progressive == "epoch" and self.epoch is not None and self.epoch >= 0:
            factor = min(1.0, (self.epoch + 1) / c.ramp_epochs)
        else:
            factor = 1.0
        gamma = c.gamma * factor if c.progressive_on in ("gamma", "both") else c.gamma
        eta = c.eta * factor if c.progressive_on in ("eta", "both") else c.eta
        return gamma, eta

    def _hybrid(self, context: dict[str, Any]) -> torch.Tensor:
        """G for this forward pass, computed once and kept in the forward's context."""
        if self._key not in context:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.detach):
                with torch.autocast(context["images"].device.type, enabled=False):
                    colour = colour_affinity(
                        context["images"],
                        context["grid"],
                        context["num_classes"],
                        self.config.colour_sigma,
                    )
                    similarity = token_similarity(context["embedded"])
                    context[self._key] = hybrid_term(
                        similarity, colour, context["num_classes"], self.config.hfa_mode
                    )
        return context[self._key]

    def matrices(
        self, index: int, attention: torch.Tensor, context: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The block's re-weighting matrices (for inspection and tests)."""
        gamma, _ = self.strength(index)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.detach):
            hybrid = self._hybrid(context) if "hfa" in self.config.components else None
            mean_attention = attention.mean(dim=1)
            if self.config.detach:
                mean_attention = mean_attention.detach()
            return doei_matrices(mean_attention, hybrid, context["num_classes"], self.config, gamma)

    def __call__(
        self,
        index: int,
        x_in: torch.Tensor,
        x_out: torch.Tensor,
        attention: torch.Tensor,
        context: dict[str, Any],
    ) -> torch.Tensor:
        if index not in self.rank or self.config.inactive:
            return x_out
        _, eta = self.strength(index)
        if eta == 0:
            return x_out
        c = context["num_classes"]
        tokens = x_in if self.config.source == "input" else x_out
        new_cls, new_pat = doei_update(tokens, self.matrices(index, attention, context), c)
        cls_part = x_out[:, :c] if new_cls is None else x_out[:, :c] + eta * new_cls
        pat_part = x_out[:, c:] if new_pat is None else x_out[:, c:] + eta * new_pat
        return torch.cat([cls_part, pat_part], dim=1)


def install_doei(
    model: MultiClassTokenViT, params: DOEIConfig | dict[str, Any] | None = None
) -> DOEIHook:
    """Append a :class:`DOEIHook` to ``model.block_hooks`` and return it (no new parameters)."""
    hook = DOEIHook(params if params is not None else {}, model.depth)
    model.block_hooks.append(hook)
    return hook


def doei_hooks(model: MultiClassTokenViT) -> list[DOEIHook]:
    return [hook for hook in model.block_hooks if isinstance(hook, DOEIHook)]


def set_doei_epoch(model: MultiClassTokenViT, epoch: int | None) -> None:
    """Tell the model's DOEI hooks the training epoch (progressive "epoch"); None = final strength."""
    for hook in doei_hooks(model):
        hook.epoch = epoch


# ----------------------------------------------------------------- the methods


class DOEIMixin:
    """Adds DOEI to a training method: installs the hook in ``build_model`` and passes
    the epoch to it in ``loss``. ``doei_key`` names the nested parameter block (None: the
    method's own parameters are DOEI's)."""

    doei_key: ClassVar[str | None] = None
    name: ClassVar[str]

    def doei_config(self) -> DOEIConfig:
        params = self.params if self.doei_key is None else self.params[self.doei_key]  # type: ignore[attr-defined]
        where = f"method_params.{self.name}" + (f".{self.doei_key}" if self.doei_key else "")
        return DOEIConfig.from_dict(params, where)

    def build_model(self, model_config: dict[str, Any], num_classes: int) -> MultiClassTokenViT:
        model = super().build_model(model_config, num_classes)  # type: ignore[misc]
        install_doei(model, self.doei_config())
        return model

    def loss(
        self, model: MultiClassTokenViT, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ):
        set_doei_epoch(model, epoch)
        return super().loss(model, images, labels, epoch)  # type: ignore[misc]


@register_training_method
class DOEI(DOEIMixin, TrainingMethod):
    """MCTformer-V2 + DOEI (reconstructed): baseline loss and CAM, tokens re-embedded in the blocks."""

    name = "doei"
    label = "DOEI"
    reconstructed = True
    params_spec = DOEI_SPEC

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.doei_config()  # fail at construction, not at the first forward


@register_training_method
class AReAMDOEI(DOEIMixin, AReAM):
    """AReAM's training with DOEI installed; DOEI's parameters nested under ``doei``."""

    name = "aream_doei"
    label = "AReAM + DOEI"
    reconstructed = True
    doei_key = "doei"
    params_spec = {
        **AReAM.params_spec,
        "doei": Param(dict(DOEI_DEFAULTS), "params", fields=DOEI_SPEC),
    }

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = dict(params or {})
        nested = params.get("doei") or {}
        if not isinstance(nested, dict):
            raise ValueError(f"method_params.{self.name}.doei must be a mapping, got {nested!r}")
        params["doei"] = {
            **DOEI_DEFAULTS,
            **nested,
        }  # a partial doei block keeps the other defaults
        super().__init__(params)
        self.doei_config()
