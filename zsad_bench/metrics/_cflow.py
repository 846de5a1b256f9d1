"""The cflow-ad "N linear thresholds" AUPRO (APRIL-GAN, AnomalyCLIP, MuSc), from the exact state.

Reference behaviour (``cal_pro_score`` in cflow-ad ``train.py``, vendored unchanged by
APRIL-GAN ``test.py`` and AnomalyCLIP ``metrics.py``): thresholds
``np.arange(min, max, (max - min) / N)`` over all maps of the category, prediction ``map > t``,
PRO = mean over the ground-truth regions of the covered fraction, FPR over all normal pixels,
keep the points with FPR strictly below the limit, min-max rescale those FPRs to [0, 1] and take
sklearn's ``auc``. Computed here from sorted state with one ``searchsorted`` per threshold
instead of relabelling every mask at every threshold. Where the reference divides by zero,
raises or returns 0 (constant maps, fewer than two kept points, no regions) we return NaN with
a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["cflow_aupro"]


def cflow_aupro(
    count_neg_le: Callable[[np.ndarray], np.ndarray],
    n_neg: int,
    pos_desc: np.ndarray,
    weight_desc: np.ndarray,
    n_regions: int,
    extremes: tuple[Any, Any],
    steps: int = 200,
    fpr_limit: float = 0.3,
) -> tuple[float, str | None]:
    """The cflow-style AUPRO and, when it is undefined, why.

    Args:
        count_neg_le: maps ascending thresholds to the number of negatives ``<=`` each.
        n_neg: total negatives.
        pos_desc: (P,) positive scores, descending.
        weight_desc: (P,) their PRO weights (1/|region|).
        n_regions: total regions.
        extremes: (min, max) over all scores of the category, as numpy scalars of the maps' dtype.
        steps: the number of thresholds (200 in the references).
        fpr_limit: keep points with FPR strictly below this.
    """
    lo, hi = extremes
    delta = (hi - lo) / steps  # numpy scalar arithmetic in the maps' dtype, as the reference
    if not np.isfinite(delta) or delta <= 0:
        return float("nan"), f"cflow AUPRO undefined: the maps span [{lo}, {hi}] (constant or infinite)"
    thresholds = np.arange(lo, hi, delta)  # (T,) ascending
    fpr = (n_neg - count_neg_le(thresholds)) / n_neg
    tail = np.concatenate(([0.0], np.cumsum(weight_desc)))  # tail[i]: weight of the i best positives
    above = pos_desc.size - np.searchsorted(pos_desc[::-1], thresholds, side="right")  # positives > t
    pro = tail[above] / n_regions
    keep = fpr < fpr_limit
    x, y = fpr[keep], pro[keep]
    if x.size < 2 or x.max() == x.min():
        return float("nan"), f"cflow AUPRO undefined: {x.size} threshold(s) with FPR < {fpr_limit:g} and no FPR spread"
    x = (x - x.min()) / (x.max() - x.min())
    # x decreases with the threshold; sklearn.metrics.auc then integrates with direction -1.
    return float(-np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0)), None
