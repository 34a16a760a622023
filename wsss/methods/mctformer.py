"""MCTformer-V2 (Xu et al., CVPR 2022), the baseline every other method builds on.

Training: MLSM on the class tokens' scores + MLSM on the GAP of PatchCAM
(methods.md section 2.2). CAM: class-to-patch attention of the last 3 blocks,
summed, times ReLU(PatchCAM); optional patch-affinity refinement summed over
all blocks (section 2.3). Both live in :class:`TrainingMethod`'s defaults.
"""

from __future__ import annotations

from wsss.methods.base import CamRefiner, TrainingMethod, register_refiner, register_training_method
from wsss.models.attention import propagate


@register_training_method
class MCTformerV2(TrainingMethod):
    name = "mctformer_v2"
    label = "MCTformer-V2"


@register_refiner
class AffinityRefiner(CamRefiner):
    """MCTformer's patch-affinity refinement: M'_c = P . vec(M_c), P summed over blocks, not renormalised."""

    name = "affinity"
    label = "patch affinity"

    def __call__(self, cam, output, method, recipe):
        return propagate(cam, method.affinity(output, recipe))
