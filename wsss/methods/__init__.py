"""Methods, registered by name.

Importing this package imports every module in it, so a new method is one new
module (plus its ``params.yaml`` entry) and nothing else.
"""

import importlib
import pkgutil

from wsss.methods.base import (
    CAM_REFINERS,
    TRAINING_METHODS,
    CamRecipe,
    CamRefiner,
    TrainingMethod,
    Variant,
    register_refiner,
    register_training_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "training", "entropy_weights"):  # infrastructure, not methods
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CAM_REFINERS",
    "TRAINING_METHODS",
    "CamRecipe",
    "CamRefiner",
    "TrainingMethod",
    "Variant",
    "register_refiner",
    "register_training_method",
]
