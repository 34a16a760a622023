"""Fully connected (dense) CRF on top of CAMs or segmentation probabilities.

A thin, validated wrapper around ``pydensecrf`` (Krähenbühl & Koltun's
mean-field inference with a Gaussian smoothness kernel and a bilateral
appearance kernel), installed from the ``pydensecrf2`` distribution, which
builds from source with pip. It is an optional dependency: importing this
module works without it, but calling :func:`dense_crf` or
:func:`crf_labels_from_cams` raises :class:`CrfUnavailableError` saying how to
install it (``pip install -e ".[crf]"`` in the checkout: wsss is not on PyPI).
Nothing falls back to "no CRF".

Two settings from the literature (methods.md section 1.3):

* :meth:`CrfSettings.pseudo_label` (the dataclass defaults): the CRF that
  MCTformer's and AReAM's pseudo-label/PSA scripts run on CAMs, 10 iterations,
  Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10.
* :meth:`CrfSettings.segmentation_inference`: the CRF after multi-scale
  segmentation inference (MCTformer/AReAM ``seg/infer_seg.py``, ToCo and
  ClusterCAM), 10 iterations, Gaussian sxy 4 compat 3, bilateral sxy 83 srgb 5
  compat 3.

The unary is ``-log(clip(p, 1e-5, 1))`` as in ``pydensecrf.utils.unary_from_softmax``
(what the official code calls). Sxy is in pixels of the image as given; the
official code runs the CRF at full image resolution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

# wsss is installed from its checkout, not from PyPI: the extra is named on the checkout
INSTALL_HINT = 'pip install -e ".[crf]" in the wsss checkout (or: pip install pydensecrf2)'

# Probabilities are clipped before the log so that a zero score is a finite,
# large cost rather than an impossible label (pydensecrf's unary_from_softmax).
PROBABILITY_CLIP = 1e-5

# How far a pixel's probabilities may sum from 1 before dense_crf refuses them.
_SUM_TOLERANCE = 1e-3


class CrfUnavailableError(ImportError):
    """pydensecrf (the ``pydensecrf2`` distribution) is not installed."""


def require_pydensecrf() -> Any:
    """Import and return ``pydensecrf.densecrf``, or raise :class:`CrfUnavailableError`.

    Call it once at the start of a stage to fail before any work is done.
    """
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise CrfUnavailableError(
            "the dense CRF needs the optional package pydensecrf2, which is not installed "
            f"({exc}). Install it with: {INSTALL_HINT}; it builds from source and needs a C++ "
            "compiler. Or switch the CRF off in params.yaml."
        ) from exc
    return densecrf


@dataclass(frozen=True)
class CrfSettings:
    """Mean-field iterations and the two pairwise kernels of the dense CRF.

    ``gaussian_*``: the smoothness kernel over positions (sxy in pixels).
    ``bilateral_*``: the appearance kernel over positions and RGB (srgb in 0..255
    intensity units). ``*_compat``: the Potts weight of each kernel. The defaults
    are the pseudo-label CRF of MCTformer/AReAM (methods.md section 1.3).
    """

    iterations: int = 10
    gaussian_sxy: float = 3
    gaussian_compat: float = 3
    bilateral_sxy: float = 80
    bilateral_srgb: float = 13
    bilateral_compat: float = 10

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int | np.integer):
            raise ValueError(f"crf.iterations must be an integer, got {self.iterations!r}")
        if self.iterations < 1:
            raise ValueError(f"crf.iterations must be >= 1, got {self.iterations}")
        for f in fields(self):
            if f.name == "iterations":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"crf.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"crf.{f.name} must be a positive finite number, got {value}")

    @classmethod
    def pseudo_label(cls) -> CrfSettings:
        """CRF on CAMs for pseudo-labels (MCTformer/AReAM PSA step): 3/3, 80/13/10, 10 iterations."""
        return cls()

    @classmethod
    def segmentation_inference(cls) -> CrfSettings:
        """CRF after segmentation inference (MCTformer/AReAM/ToCo/ClusterCAM): 4/3, 83/5/3, 10 iterations."""
        return cls(
            iterations=10,
            gaussian_sxy=4,
            gaussian_compat=3,
            bilateral_sxy=83,
            bilateral_srgb=5,
            bilateral_compat=3,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "crf") -> CrfSettings:
        """Settings from a (possibly partial) mapping; missing keys keep the pseudo-label defaults.

        An unknown key raises ``ValueError`` naming it (prefixed with ``where``,
        e.g. the params.yaml path of the block) and listing the known keys.
        """
        d = {} if d is None else d
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping of CRF settings, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"{where}: unknown CRF setting(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(known)})"
            )
        try:
            return cls(**d)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scale_spatial(self, factor: float) -> CrfSettings:
        """The same settings with both sxy multiplied by ``factor`` (colour and weights unchanged).

        The literature's sxy values are pixels of ~500 x 375 VOC images; on much
        smaller images an 80-pixel bilateral kernel spans the whole image.
        AReAM's ``crf_inference`` has the same knob (it divides by ``scale_factor``).
        """
        if not factor > 0 or not math.isfinite(factor):
            raise ValueError(f"crf sxy scale factor must be a positive number, got {factor}")
        return replace(
            self,
            gaussian_sxy=self.gaussian_sxy * factor,
            bilateral_sxy=self.bilateral_sxy * factor,
        )


def _check_image(image: np.ndarray) -> tuple[int, int]:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB in 0..255, got dtype {image.dtype}")
    if not image.flags.c_contiguous:
        # pydensecrf reads the raw buffer as unsigned char[:, :, ::1]
        raise ValueError(
            "image must be C-contiguous (pydensecrf reads its raw buffer); "
            "pass np.ascontiguousarray(image)"
        )
    return image.shape[0], image.shape[1]


def _check_float_maps(maps: np.ndarray, name: str, spatial: tuple[int, int]) -> None:
    if not isinstance(maps, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(f"{name} must be K x H x W, got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(
            f"{name} must be float32 (uint8 CAMs from the CAM store must be dequantised to "
            f"[0, 1] first), got dtype {maps.dtype}"
        )
    if maps.shape[1:] != spatial:
        raise ValueError(f"{name} is {maps.shape[1:]} spatially but the image is {spatial}")
    if not np.isfinite(maps).all():
        raise ValueError(f"{name} contains NaN or inf")


def _mean_field(image: np.ndarray, unary: np.ndarray, settings: CrfSettings) -> np.ndarray:
    """Run the CRF for a K x (H*W) float32 unary; returns the K x H x W posterior."""
    densecrf = require_pydensecrf()
    height, width = image.shape[:2]
    num_labels = unary.shape[0]
    crf = densecrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=settings.gaussian_sxy, compat=settings.gaussian_compat)
    # pydensecrf's typed memoryview rejects read-only buffers (np.asarray of a PIL image is
    # one) although it only reads the pixels; a copy is what the official code passes too.
    if not image.flags.writeable:
        image = image.copy()
    crf.addPairwiseBilateral(
        sxy=settings.bilateral_sxy,
        srgb=settings.bilateral_srgb,
        rgbim=image,
        compat=settings.bilateral_compat,
    )
    posterior = crf.inference(settings.iterations)
    return np.asarray(posterior, dtype=np.float32).reshape(num_labels, height, width)


def dense_crf(
    image: np.ndarray, probs: np.ndarray, settings: CrfSettings | None = None
) -> np.ndarray:
    """Dense-CRF posterior of per-pixel class probabilities.

    Args:
        image: H x W x 3 uint8 RGB, C-contiguous (read-only is fine).
        probs: K x H x W float probabilities (float32; float64 is accepted), each
            pixel summing to 1 (within 1e-3). K >= 1.
        settings: kernels and iterations; defaults to :meth:`CrfSettings.pseudo_label`.

    Returns:
        K x H x W float32 posterior marginals (each pixel sums to 1).
    """
    settings = CrfSettings() if settings is None else settings
    require_pydensecrf()
    spatial = _check_image(image)
    _check_float_maps(probs, "probs", spatial)
    if probs.shape[0] < 1:
        raise ValueError("probs must have at least one label (K >= 1)")
    if probs.min() < 0 or probs.max() > 1 + _SUM_TOLERANCE:
        raise ValueError(
            f"probs must lie in [0, 1], got range [{probs.min():.4g}, {probs.max():.4g}]"
        )
    sums = probs.sum(axis=0, dtype=np.float64)
    worst = float(np.abs(sums - 1.0).max())
    if worst > _SUM_TOLERANCE:
        raise ValueError(
            f"probs must sum to 1 over the K labels at every pixel (off by up to {worst:.4g}); "
            "normalise them first"
        )
    unary = -np.log(np.clip(probs, PROBABILITY_CLIP, 1.0)).reshape(probs.shape[0], -1)
    return _mean_field(image, unary, settings)


def crf_labels_from_cams(
    image: np.ndarray,
    cams: np.ndarray,
    classes: np.ndarray,
    bg_threshold: float | None,
    settings: CrfSettings | None = None,
    *,
    bg_power: float | None = None,
) -> np.ndarray:
    """CRF pseudo-label of one image from its ground-truth classes' CAMs.

    The background score follows one of the two rules of the literature
    (methods.md sections 1.2-1.3; both are options of AReAM's ``infer_crf.py``):

    * constant (``bg_threshold=t``, the rule used by default): background
      scores ``t`` everywhere, the same rule as the threshold sweep of the CAM
      evaluation (AReAM ``infer_crf.py --score``), so the CRF labels are
      directly comparable with the thresholded CAMs at the chosen ``t``;
    * power (``bg_threshold=None, bg_power=alpha``):
      ``bg = (1 - max_c cam_c) ** alpha``, PSA's rule and the only one in
      MCTformer's ``--out-crf`` (AReAM ``--alpha``), run at alpha = 1 (low) and
      12 (high) to get the confident fg/bg regions for AffinityNet.

    The background map is stacked in front of the CAMs, the scores are clipped
    to [1e-5, 1] and normalised per pixel to probabilities, the CRF runs, and
    the arg-max is mapped back to labels. The official code feeds the
    unnormalised scores to ``unary_from_softmax``; normalising adds the same
    constant to every label's unary at a pixel, which mean-field inference
    ignores, so the result is the same.

    Args:
        image: H x W x 3 uint8 RGB, C-contiguous (read-only is fine, e.g. ``np.asarray(pil_image)``).
        cams: k x H x W float CAMs in [0, 1], one per ground-truth class (k may be 0).
        classes: (k,) integer labels in 1..255 (the dataset's 1..C), distinct,
            in the order of ``cams``.
        bg_threshold: the constant background score in [0, 1], or None with ``bg_power``.
        settings: defaults to :meth:`CrfSettings.pseudo_label`.
        bg_power: alpha of the power rule (> 0); give it instead of ``bg_threshold``.

    Returns:
        H x W uint8 labels in ``{0} | set(classes)``.
    """
    settings = CrfSettings() if settings is None else settings
    require_pydensecrf()
    spatial = _check_image(image)
    _check_float_maps(cams, "cams", spatial)
    classes = np.asarray(classes)
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"classes must be a 1-D integer array, got shape {classes.shape} {classes.dtype}"
        )
    if len(classes) != cams.shape[0]:
        raise ValueError(f"{len(classes)} classes for {cams.shape[0]} CAMs")
    if len(classes) and (classes.min() < 1 or classes.max() > 255):
        raise ValueError(f"classes must be labels in 1..255 (0 is background), got {classes}")
    if len(np.unique(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    if cams.size and (cams.min() < 0 or cams.max() > 1):
        raise ValueError(
            f"cams must be normalised to [0, 1], got range [{cams.min():.4g}, {cams.max():.4g}]"
        )

    if (bg_threshold is None) == (bg_power is None):
        raise ValueError(
            "give exactly one background rule: bg_threshold (constant score) or bg_power (alpha)"
        )
    if bg_threshold is not None and not 0.0 <= bg_threshold <= 1.0:
        raise ValueError(f"bg_threshold must be in [0, 1], got {bg_threshold}")
    if bg_power is not None and not bg_power > 0:
        raise ValueError(f"bg_power must be > 0, got {bg_power}")

    if len(classes) == 0:
        # Only background is possible; the CRF over one label is the identity.
        return np.zeros(spatial, dtype=np.uint8)

    cams = cams.astype(np.float32, copy=False)
    if bg_threshold is not None:
        background = np.full((1, *spatial), bg_threshold, dtype=np.float32)
    else:
        background = np.power(1.0 - cams.max(axis=0, keepdims=True), bg_power).astype(np.float32)
    scores = np.clip(np.concatenate([background, cams], axis=0), PROBABILITY_CLIP, 1.0)
    probs = scores / scores.sum(axis=0, keepdims=True)
    unary = -np.log(probs).reshape(probs.shape[0], -1)
    posterior = _mean_field(image, unary, settings)
    lookup = np.concatenate([[0], classes]).astype(np.uint8)
    return lookup[posterior.argmax(axis=0)]
