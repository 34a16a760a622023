"""Models: the multi-class-token ViT every method builds on."""

from wsss.models.mct_vit import ModelConfig, ModelOutput, MultiClassTokenViT, build_model

__all__ = ["ModelConfig", "ModelOutput", "MultiClassTokenViT", "build_model"]
