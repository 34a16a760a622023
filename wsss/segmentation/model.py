"""The stage-2 segmentation network: a timm CNN backbone and a DeepLab-style head.

Any timm model that supports ``features_only`` serves as the backbone; one
feature level (``out_index``, timm's ``out_indices``) feeds the head, and timm
drops the layers after it (ResNets: 1 = stride 4, 2 = stride 8, 4 = stride 32,
or stride 8/16 with ``output_stride`` dilating the last stages, as DeepLab
does). Heads (methods.md section 1.3; DeepLab v1/v2):

* ``aspp``: DeepLab-v2's atrous spatial pyramid pooling on ResNet, one 3x3
  convolution to the class scores per dilation rate, summed (rates 6/12/18/24
  on VOC at stride 8);
* ``largefov``: DeepLab-LargeFOV, a 3x3 convolution at one dilation (12 on
  VOC), then two 1x1 convolutions (``head_channels`` wide, ReLU and dropout
  between) to the class scores.

The logits are upsampled bilinearly to the input size (or a given size, so
multi-scale inference resizes once); weights and inputs are channels-last.
Pretrained weights: ``pretrained`` (timm's hub) or ``weights`` (a local
timm-layout file), as for the ViT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.pretrained import timm_weights

HEADS = ("aspp", "largefov")


@dataclass
class SegmenterConfig:
    """The network part of the ``segmentation`` block of ``params.yaml``."""

    backbone: str = "resnet101"
    pretrained: bool = False
    weights: str | None = None
    out_index: int = 4
    output_stride: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    head: str = "aspp"
    head_channels: int = 1024
    dilations: list[int] = field(default_factory=lambda: [6, 12, 18, 24])
    dropout: float = 0.5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmenterConfig:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in d.items() if k in known}
        config = cls(**values)
        if config.head not in HEADS:
            raise ValueError(f"segmentation.head: {config.head!r} is not one of {HEADS}")
        if not config.dilations or any(int(r) < 1 for r in config.dilations):
            raise ValueError(
                f"segmentation.dilations: positive integers expected, got {config.dilations}"
            )
        return config


def create_feature_backbone(config: SegmenterConfig) -> nn.Module:
    """timm ``features_only`` model returning the one feature map at ``out_index``."""
    import timm

    name = config.backbone
    if not timm.is_model(name):
        raise ValueError(
            f"segmentation.backbone: unknown timm model {name!r}; use a timm CNN such as "
            "resnet18, resnet50, resnet101"
        )
    kwargs: dict[str, Any] = dict(features_only=True, out_indices=(config.out_index,))
    if config.output_stride is not None:
        kwargs["output_stride"] = config.output_stride
    # A key set to null is left out: override files merge into params.yaml and cannot
    # delete keys, so a preset removes the synthetic model's shape this way.
    kwargs.update({k: v for k, v in config.overrides.items() if v is not None})
    pretrained, extra = timm_weights(config.pretrained, config.weights, "segmentation", name)
    kwargs.update(extra)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, RuntimeError, AssertionError, IndexError) as err:
        raise ValueError(
            f"segmentation.backbone: cannot build {name!r} with features_only, out_index "
            f"{config.out_index}, output_stride {config.output_stride} and overrides "
            f"{config.overrides}: {type(err).__name__} {err}"
        ) from err


class ASPPHead(nn.Module):
    """DeepLab-v2 ASPP: the sum of one dilated 3x3 conv to the class scores per rate."""

    def __init__(self, in_channels: int, num_labels: int, dilations: list[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_labels, 3, padding=int(r), dilation=int(r))
            for r in dilations
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV: dilated 3x3 conv, two 1x1 convs, ReLU + dropout between."""

    def __init__(
        self, in_channels: int, num_labels: int, channels: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_labels, 1),
        )
        nn.init.normal_(self.layers[-1].weight, std=0.01)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Segmenter(nn.Module):
    """Backbone feature map -> head -> logits upsampled to the input size (B x K x H x W)."""

    def __init__(self, config: SegmenterConfig, num_labels: int) -> None:
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.backbone = create_feature_backbone(config)
        channels = self.backbone.feature_info.channels()[-1]
        self.stride = self.backbone.feature_info.reduction()[-1]
        if config.head == "aspp":
            self.head: nn.Module = ASPPHead(channels, num_labels, config.dilations)
        else:
            self.head = LargeFOVHead(
                channels, num_labels, config.head_channels, int(config.dilations[0]), config.dropout
            )

        # NHWC: several times faster convolutions, BN and max-pooling on CPU (oneDNN),
        # and the layout GPU tensor cores want.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """B x 3 x H x W -> B x K x ``size`` logits (default: the input's H x W)."""
        features = self.backbone(x.contiguous(memory_format=torch.channels_last))[-1]
        logits = self.head(features)
        size = tuple(x.shape[-2:]) if size is None else tuple(size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, head) parameters: the head trains at a higher learning rate."""
        return list(self.backbone.parameters()), list(self.head.parameters())
