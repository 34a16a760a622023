"""Methods, registered by name: training methods and post-hoc CAM refiners.

Each plug-in is one module of this package whose class carries
``@register_training_method`` or ``@register_refiner`` and a literal ``name``.
The registries find them by reading the sources and import a module only when
its name is asked for, so a new method is one new module (plus its
``params.yaml`` entry) and a job imports only the methods it runs.
"""

from wsss.methods.base import (
    CAM_REFINERS,
    TRAINING_METHODS,
    CamRecipe,
    CamRefiner,
    Param,
    TrainingMethod,
    Upstream,
    Variant,
    register_refiner,
    register_training_method,
)

__all__ = [
    "CAM_REFINERS",
    "TRAINING_METHODS",
    "CamRecipe",
    "CamRefiner",
    "Param",
    "TrainingMethod",
    "Upstream",
    "Variant",
    "register_refiner",
    "register_training_method",
]
