"""Stage 2: a segmentation network trained on the pseudo-labels, scored on the seg split.

``model`` (timm CNN backbone + DeepLab-style head), ``data`` (augmented
image / pseudo-label pairs), ``train`` (the training loop and the stage's
entry point :func:`~wsss.segmentation.train.run_segmentation`), ``infer``
(multi-scale inference and scoring).
"""
