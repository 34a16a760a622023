"""What a method is: a training method and/or a post-hoc CAM refiner, registered by name.

A *variant* in the experiment grid (``methods:`` in ``params.yaml``) pairs one
training method with one refiner, e.g. AReAM + AD-CAM. Training methods own
how the model is built, its loss and how its CAM is read from a forward pass;
refiners act on a trained model's CAM and attention without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from wsss.models import ModelOutput, MultiClassTokenViT, build_model
from wsss.models.attention import class_to_patch, patch_affinity
from wsss.registry import Registry, scan_plugins


@dataclass
class CamRecipe:
    """How a CAM is read from one forward pass (the ``cam`` block of ``params.yaml``)."""

    class_layers: int | str | list[int] = (
        3  # blocks for class->patch attention: k (last k), "all", or indices
    )
    class_reduce: str = "sum"
    fusion: str = "fused"  # fused: attention x ReLU(PatchCAM); attention; patchcam
    affinity_layers: int | str | list[int] = "all"
    affinity_reduce: str = "sum"

    FUSIONS: ClassVar[tuple[str, ...]] = ("fused", "attention", "patchcam")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CamRecipe:
        fields = set(cls.__dataclass_fields__)
        recipe = cls(**{k: v for k, v in d.items() if k in fields})
        if recipe.fusion not in cls.FUSIONS:
            raise ValueError(f"cam.fusion: {recipe.fusion!r} is not one of {list(cls.FUSIONS)}")
        return recipe


@dataclass(frozen=True)
class Upstream:
    """An artifact a training method reads from another trained run of the same dataset
    and seed, declared by the method so that the config and the Snakefile ask for it.

    ``param``: the method parameter whose value the artifact replaces at training time;
    ``stage``: the pipeline stage (``wsss`` subcommand and rule of the same name, with
    ``-`` for ``_``) that writes ``<stage>.json`` beside that run's ``model.pt``;
    ``run``: the grid variant whose training run is read; ``train``: the training
    method that run must use.
    """

    param: str
    stage: str
    run: str
    train: str


def merge_params(
    name: str, defaults: dict[str, Any], params: dict[str, Any] | None
) -> dict[str, Any]:
    """A method's ``defaults`` overridden by ``params``; an unknown key names ``method_params.<name>``."""
    params = dict(params or {})
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(
            f"method_params.{name}: unknown key(s) {sorted(unknown)}; known: {sorted(defaults)}"
        )
    return {**defaults, **params}


class TrainingMethod:
    """A training method. The defaults are MCTformer-V2's (every method here builds on it);
    subclasses change the model, the loss or the CAM."""

    label: ClassVar[str] = "MCTformer-V2"
    reconstructed: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
    has_decoder: ClassVar[bool] = False  # True: segment() is scored on the seg_split

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = merge_params(self.name, self.defaults, params)

    name: ClassVar[str] = "base"

    def upstream(self) -> list[Upstream]:
        """Artifacts of other trained runs this method's training reads (default: none)."""
        return []

    def read_upstream(self, upstream: Upstream, path: str) -> Any:
        """The value of ``upstream.param`` taken from the artifact at ``path``."""
        raise NotImplementedError(f"{self.name} declares no upstream artifacts")

    def build_model(self, model_config: dict[str, Any], num_classes: int) -> MultiClassTokenViT:
        return build_model(model_config, num_classes)

    def on_train_start(self, model: MultiClassTokenViT, data: Any, device: torch.device) -> None:
        """Hook before the first epoch (e.g. to load per-layer weights); default: nothing."""

    def forward(self, model: MultiClassTokenViT, images: torch.Tensor, epoch: int) -> ModelOutput:
        return model(images)

    def loss(
        self, model: MultiClassTokenViT, images: torch.Tensor, labels: torch.Tensor, epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        output = self.forward(model, images, epoch)
        loss_cls = F.multilabel_soft_margin_loss(output.class_logits, labels)
        loss_patch = F.multilabel_soft_margin_loss(output.patch_logits, labels)
        return loss_cls + loss_patch, {"loss_cls": loss_cls.item(), "loss_patch": loss_patch.item()}

    def cam(self, output: ModelOutput, recipe: CamRecipe) -> torch.Tensor:
        """The method's CAM at patch-grid resolution, B x C x h x w, before refinement."""
        c = output.num_classes
        if recipe.fusion == "patchcam":
            return F.relu(output.patch_cam.detach())
        attention = class_to_patch(
            output.attentions, c, output.grid, recipe.class_layers, recipe.class_reduce
        )
        if recipe.fusion == "attention":
            return attention
        return attention * F.relu(output.patch_cam.detach())

    def segment(self, model: MultiClassTokenViT, images: torch.Tensor) -> torch.Tensor | None:
        """Segmentation logits B x (C+1) x h x w from a method's own decoder, or None.

        Single-stage methods (ClusterCAM) train a decoder online; the pipeline
        scores it on the dataset's ``seg_split``. Two-stage methods return None.
        """
        return None

    def affinity(self, output: ModelOutput, recipe: CamRecipe) -> torch.Tensor:
        """Patch-to-patch affinity B x N x N that affinity-style refiners use."""
        return patch_affinity(
            output.attentions, output.num_classes, recipe.affinity_layers, recipe.affinity_reduce
        )


class CamRefiner:
    """Post-hoc refinement of a CAM with the model's own attention (no retraining)."""

    name: ClassVar[str] = "none"
    label: ClassVar[str] = ""
    reconstructed: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = merge_params(self.name, self.defaults, params)

    def __call__(
        self, cam: torch.Tensor, output: ModelOutput, method: TrainingMethod, recipe: CamRecipe
    ) -> torch.Tensor:
        return cam


# Lazy: a name's module (a plug-in of wsss.methods) is imported when the name is first used.
TRAINING_METHODS: Registry[type[TrainingMethod]] = Registry(
    "training method", lambda: scan_plugins("wsss.methods", "register_training_method")
)
CAM_REFINERS: Registry[type[CamRefiner]] = Registry(
    "CAM refiner", lambda: scan_plugins("wsss.methods", "register_refiner")
)


def register_training_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    return TRAINING_METHODS.register(cls.name)(cls)


def register_refiner(cls: type[CamRefiner]) -> type[CamRefiner]:
    return CAM_REFINERS.register(cls.name)(cls)


register_refiner(CamRefiner)


@dataclass
class Variant:
    """One entry of the grid's methods: a training method, a refiner and their settings."""

    name: str
    train: str
    refine: str = "none"
    cam: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def display_label(self) -> str:
        if self.label:
            return self.label
        method = TRAINING_METHODS.get(self.train)
        text = method.label + (" (reconstructed)" if method.reconstructed else "")
        if self.refine != "none":
            refiner = CAM_REFINERS.get(self.refine)
            text += " + " + refiner.label + (" (reconstructed)" if refiner.reconstructed else "")
        return text
