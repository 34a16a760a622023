"""What a method is: a training method and/or a post-hoc CAM refiner, registered by name.

A *variant* in the experiment grid (``methods:`` in ``params.yaml``) pairs one
training method with one refiner, e.g. AReAM + AD-CAM. Training methods own
how the model is built, its loss and how its CAM is read from a forward pass;
refiners act on a trained model's CAM and attention without retraining.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from wsss.models import ModelOutput, MultiClassTokenViT, build_model
from wsss.models.attention import check_layers, class_to_patch, patch_affinity
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


# A number as YAML 1.2 and JSON write it; PyYAML (YAML 1.1) reads ``1e-06`` or ``5e-4`` as a
# string, which is how ``dvc exp run -S`` and hand-written params often give small values.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")


@dataclass(frozen=True)
class Param:
    """One declared method parameter: its default, type and allowed values. A method lists
    them once (``params_spec``); its defaults, the checks before any job, the typed
    reading of numbers and the block-index check against the model's depth all read it.

    ``type``: ``int``, ``number`` (read as float), ``bool``, ``str``, ``blocks`` (``"all"``,
    a count k >= 1 = the last k, or a list of block indices; checked against the depth of
    every model of the grid; strings in ``choices`` are the method's own keywords),
    ``numbers`` (a non-empty list of numbers), ``params`` (a nested block of ``fields``),
    or ``any`` (checked by the method itself). ``minimum``/``maximum`` bound numbers
    (inclusive; ``exclusive_minimum`` makes the lower bound strict); ``choices`` lists the
    allowed values of a ``str`` (or extra keywords of ``blocks``); ``nullable`` admits null.
    """

    default: Any
    type: str = "any"
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    fields: dict[str, Param] | None = None

    TYPES: ClassVar[tuple[str, ...]] = (
        "int",
        "number",
        "bool",
        "str",
        "blocks",
        "numbers",
        "params",
        "any",
    )

    def read(self, value: Any, key: str) -> Any:
        """``value`` checked and normalised by type (numbers as floats, numeric strings as
        numbers); raises ValueError naming ``key`` and what is expected."""
        if value is None and (self.nullable or self.default is None):
            return None
        if self.type == "number":
            return self._bounded(_as_number(value, key, float), key)
        if self.type == "int":
            return self._bounded(_as_number(value, key, int), key)
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{key}: expected true or false, got {value!r}")
            return value
        if self.type == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                expected = f"one of {list(self.choices)}" if self.choices else "a string"
                raise ValueError(f"{key}: expected {expected}, got {value!r}")
            return value
        if self.type == "numbers":
            if isinstance(value, (str, bool)) or not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{key}: expected a non-empty list of numbers, got {value!r}")
            return [self._bounded(_as_number(v, key, float), key) for v in value]
        if self.type == "blocks":
            if isinstance(value, str) and value in self.choices:
                return value
            if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
                value = int(value)
            try:
                return check_layers(value, key)
            except ValueError:
                if not self.choices:
                    raise
                raise ValueError(
                    f'{key}: expected "all", {", ".join(map(repr, self.choices))}, a block '
                    f"count k >= 1 or a list of block indices, got {value!r}"
                ) from None
        if self.type == "params":
            return read_params(key, self.fields or {}, value)
        return value

    def _bounded(self, value: float, key: str) -> float:
        low, high = self.minimum, self.maximum
        if low is not None and (value < low or (self.exclusive_minimum and value == low)):
            sign = ">" if self.exclusive_minimum else ">="
            raise ValueError(f"{key}: must be {sign} {low}, got {value!r}")
        if high is not None and value > high:
            raise ValueError(f"{key}: must be <= {high}, got {value!r}")
        return value


def _as_number(value: Any, key: str, kind: type) -> Any:
    """``value`` as a ``kind`` (int or float): numbers, and strings that spell one (``1e-06``,
    ``5e-4``); an int accepts no fraction. ValueError naming ``key`` otherwise."""
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        value = int(text) if _INTEGER.fullmatch(text) else float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key}: expected {what}, got {value!r}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{key}: expected {what}, got {value!r}")
            value = int(value)
        return value
    return float(value)


def read_params(
    where: str, spec: dict[str, Param], params: dict[str, Any] | None
) -> dict[str, Any]:
    """The declared defaults overridden by ``params``, each value read by its declaration
    (:meth:`Param.read`); an unknown key or a bad value raises ValueError naming
    ``<where>.<key>``."""
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"{where}: expected a mapping of parameters, got {params!r}")
    params = dict(params or {})
    unknown = set(params) - set(spec)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(spec)}")
    return {
        key: param.read(params[key], f"{where}.{key}")
        if key in params
        else copy.deepcopy(param.default)
        for key, param in spec.items()
    }


class _Declared:
    """What training methods and refiners share: their parameters are declared once
    (``params_spec``, :class:`Param`); ``defaults`` is derived from the declaration."""

    name: ClassVar[str]
    params_spec: ClassVar[dict[str, Param]] = {}
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "params_spec" in cls.__dict__:
            cls.defaults = {k: p.default for k, p in cls.params_spec.items()}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = read_params(f"method_params.{self.name}", self.params_spec, params)

    @classmethod
    def block_params(cls) -> list[str]:
        """The declared parameters that name blocks (checked against each model's depth)."""
        return [k for k, p in cls.params_spec.items() if p.type == "blocks"]

    def limits(self, train: dict[str, Any]) -> list[tuple[str, str]]:
        """Problems of these parameters with the run's resolved ``train`` block (cross-key
        limits such as a start epoch against ``train.epochs``), as ``(parameter, what is
        wrong)``; the caller names where the parameter was set. Default: none."""
        return []


class TrainingMethod(_Declared):
    """A training method. The defaults are MCTformer-V2's (every method here builds on it);
    subclasses change the model, the loss or the CAM."""

    label: ClassVar[str] = "MCTformer-V2"
    reconstructed: ClassVar[bool] = False
    has_decoder: ClassVar[bool] = False  # True: segment() is scored on the seg_split

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


class CamRefiner(_Declared):
    """Post-hoc refinement of a CAM with the model's own attention (no retraining)."""

    name: ClassVar[str] = "none"
    label: ClassVar[str] = ""
    reconstructed: ClassVar[bool] = False

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
