"""Pretraining the proxy backbone on a generic synthetic corpus (see ``docs/synthetic.md``)."""

from wsss.pretrain.objectives import PRETRAIN_OBJECTIVES, PretrainObjective
from wsss.pretrain.run import PretrainConfig, pretrain

__all__ = ["PRETRAIN_OBJECTIVES", "PretrainConfig", "PretrainObjective", "pretrain"]
