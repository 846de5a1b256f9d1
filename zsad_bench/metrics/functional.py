"""Pure, exact metric functions on arrays (numpy, or torch on any device).

All functions take raw scores (higher = more anomalous; no sigmoid, no normalisation) and
binary ground truth, and return a float. A metric that is undefined for the data (one class
only, NaN scores, no regions) returns NaN; :class:`~zsad_bench.metrics.CategoryEvaluator` also
says why. Ties are handled as sklearn does: tied scores form one threshold.

Notation: ``P`` anomalous and ``N`` normal samples; ``TP(t)``/``FP(t)`` the anomalous/normal
samples scoring ``>= t``; the thresholds ``t`` are the distinct scores.

Example:
    >>> import numpy as np
    >>> s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    >>> auroc(s, y), round(average_precision(s, y), 4), round(f1_max(s, y), 4)
    (0.75, 0.8333, 0.8)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from zsad_bench.metrics._arrays import as_mask, as_scores
from zsad_bench.metrics._ranking import (
    TieGroups,
    ap_step_from_groups,
    ap_trapezoid_from_groups,
    auroc_from_groups,
    f1max_from_groups,
    groups_of,
)

__all__ = ["aupro", "auroc", "average_precision", "f1_max"]

logger = logging.getLogger(__name__)


def _groups(scores: Any, labels: Any) -> TieGroups | None:
    """Tie groups of flattened (scores, labels), or None (with a debug log) when undefined."""
    s = as_scores(scores, "scores", keep_device=False).reshape(-1)
    y = as_mask(labels, "labels", keep_device=False).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same number of elements")
    if np.isnan(s).any() or y.all() or not y.any():
        logger.debug("metric undefined: NaN scores or a single class")
        return None
    return groups_of(s, y)


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve.

    ``AUROC = (#{(a, n): s_a > s_n} + 1/2 #{(a, n): s_a = s_n}) / (P N)`` over all pairs of an
    anomalous ``a`` and a normal ``n`` sample (Mann-Whitney U / (P N)); this is the trapezoid
    area under the ROC curve with tied scores merged, as ``sklearn.metrics.roc_auc_score``.
    Reference: Hanley & McNeil, Radiology 143 (1982).

    Args:
        scores: any shape, flattened.
        labels: same number of elements, 0/1 or bool.
    """
    g = _groups(scores, labels)
    return float("nan") if g is None else auroc_from_groups(g)


def average_precision(scores: Any, labels: Any, *, variant: str = "step") -> float:
    """Average precision.

    * ``variant="step"`` (default, sklearn ``average_precision_score``, used by the ZSAD repos):
      ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores in decreasing order, with
      ``P_k = TP/(TP+FP)`` and ``R_k = TP/P`` at threshold ``k``. No interpolation.
    * ``variant="trapezoid"`` (anomalib ``AUPR``): the trapezoid area under the PR curve of
      torchmetrics ``BinaryPrecisionRecallCurve`` (one point per distinct score, (R=0, P=1)
      appended, points stably sorted by recall), computed in float64 and without torchmetrics'
      implicit sigmoid. Not comparable with the step-wise AP.

    Reference: Manning, Raghavan & Schütze, *Introduction to Information Retrieval* (2008), §8.4.

    Raises:
        ValueError: for an unknown variant.
    """
    if variant not in ("step", "trapezoid"):
        raise ValueError(f"variant must be 'step' or 'trapezoid', got {variant!r}")
    g = _groups(scores, labels)
    if g is None:
        return float("nan")
    return ap_step_from_groups(g) if variant == "step" else ap_trapezoid_from_groups(g)


def f1_max(scores: Any, labels: Any, *, return_threshold: bool = False) -> float | tuple[float, float]:
    """Best F1 over all thresholds.

    ``F1max = max_t 2 TP(t) / (TP(t) + FP(t) + P)`` over the distinct scores ``t``, which equals
    the max of ``2PR/(P+R)`` over ``sklearn.metrics.precision_recall_curve`` (the AdaCLIP and
    APRIL-GAN code; anomalib adds 1e-10 to the denominator). The maximum always falls on the
    score of an anomalous sample.

    Args:
        scores: any shape, flattened.
        labels: same number of elements, 0/1 or bool.
        return_threshold: also return the threshold (predict anomalous when ``score >= t``).
    """
    g = _groups(scores, labels)
    best = (float("nan"), float("nan")) if g is None else f1max_from_groups(g)
    return best if return_threshold else best[0]


def aupro(maps: Any, masks: Any, *, fpr_limit: float = 0.3, connectivity: int = 8, variant: str = "exact") -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    ``variant="exact"`` is the MVTec AD definition (Bergmann et al., IJCV 129 (2021), "The
    MVTec anomaly detection dataset"; the official evaluation script v1.0): with ``R`` the
    ``connectivity``-connected regions of all masks,
    ``PRO(t) = 1/R sum_k |{p in k: s_p >= t}| / |k|`` and ``FPR(t)`` = the fraction of all
    normal pixels (normal images included) scoring ``>= t``. Every distinct score is a
    threshold; the curve starts at (0, 0), is linear between thresholds, is integrated up to
    ``FPR = fpr_limit`` with linear interpolation at the limit, and divided by ``fpr_limit``.

    ``variant="cflow200"`` (or ``"cflow<N>"``) is the cflow-ad approximation used by
    APRIL-GAN, AnomalyCLIP and MuSc (200 linear thresholds, FPRs below the limit rescaled to
    [0, 1]); it is a different number.

    Args:
        maps: (B, H, W) or (H, W) scores.
        masks: the same shape, binary.
        fpr_limit: integration limit in (0, 1].
        connectivity: 8 (MVTec AD) or 4.
        variant: "exact" or "cflow<N>".
    """
    from zsad_bench.metrics.streaming import CategoryEvaluator

    maps_arr = maps if hasattr(maps, "device") else np.asarray(maps)
    masks_arr = masks if hasattr(masks, "device") else np.asarray(masks)
    if maps_arr.ndim == 2:
        maps_arr, masks_arr = maps_arr[None], masks_arr[None]
    ev = CategoryEvaluator((), ("pixel_aupro",), aupro=variant, fpr_limit=fpr_limit, connectivity=connectivity)
    ev.update(None, None, maps_arr, masks_arr)
    result = ev.compute()["pixel_aupro"]
    if result.reason:
        logger.debug("aupro undefined: %s", result.reason)
    return result.value
