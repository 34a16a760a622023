"""``kind: voc``: PASCAL VOC 2012 as downloaded (with SBD's ``SegmentationClassAug`` where
present) is the layout :mod:`wsss.data.voc` reads; nothing to prepare or convert."""

from __future__ import annotations

from typing import Any

from wsss.data.kinds import DatasetKind, register_kind
from wsss.data.voc import VOC_CLASSES, VOCLayout


@register_kind
class VOCKind(DatasetKind):
    """The layout's defaults (:class:`~wsss.data.kinds.DatasetKind`), with the twenty VOC
    classes (:data:`~wsss.data.voc.VOC_CLASSES`)."""

    name = "voc"

    def class_names(self, config: dict[str, Any], layout: VOCLayout) -> list[str]:
        return list(VOC_CLASSES)
