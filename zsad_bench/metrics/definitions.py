"""Metric keys, variant names, the result type and the definition strings written into results.

Every number the engine returns is a :class:`MetricValue` that carries the exact definition
that produced it, so that a result file says which AUPRO or AP flavour a cell holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "AP_VARIANTS",
    "AUPRO_VARIANTS",
    "IMAGE_KEYS",
    "METRIC_KEYS",
    "MODES",
    "PIXEL_KEYS",
    "VARIANT_KEYS",
    "MetricValue",
    "describe",
    "parse_aupro_variant",
]

IMAGE_KEYS: tuple[str, ...] = ("image_auroc", "image_ap", "image_f1max")
PIXEL_KEYS: tuple[str, ...] = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
METRIC_KEYS: tuple[str, ...] = IMAGE_KEYS + PIXEL_KEYS
# Named extras for reproducing a paper's table next to the standard column (never a leaderboard column).
VARIANT_KEYS: tuple[str, ...] = ("image_ap_trapezoid", "pixel_ap_trapezoid", "pixel_aupro_cflow200")
AP_VARIANTS: tuple[str, ...] = ("step", "trapezoid")
AUPRO_VARIANTS: tuple[str, ...] = ("exact", "cflow200")  # "cflow<N>" for any N >= 2 is accepted too
MODES: tuple[str, ...] = ("exact", "histogram")


@dataclass(frozen=True)
class MetricValue:
    """One metric value and how it was obtained.

    Attributes:
        value: the number; NaN when the metric is undefined for the data.
        reason: why ``value`` is NaN (for a category), or which categories a summary mean
            excluded; None when there is nothing to say.
        definition: the exact definition or variant that produced ``value``.
        bound: a certified bound on ``|value - exact value|`` (histogram mode, or a mean of such
            values); None for exact computations.
    """

    value: float
    reason: str | None
    definition: str
    bound: float | None = None

    @property
    def is_nan(self) -> bool:
        """Whether the value is NaN."""
        return math.isnan(self.value)

    def to_dict(self) -> dict[str, float | str | None]:
        """A JSON-ready dict (NaN stays a float; ``json.dumps`` writes it as ``NaN``)."""
        return {"value": self.value, "reason": self.reason, "definition": self.definition, "bound": self.bound}


_RANK = "raw scores (no sigmoid, no normalisation), ties share their rank as in sklearn"

_BASE = {
    "auroc": "AUROC = (#{s_a > s_n} + 0.5 #{s_a = s_n}) / (P N) over all anomalous/normal pairs "
    "(Mann-Whitney; equals sklearn roc_auc_score)",
    "ap_step": "AP = sum_k (R_k - R_{k-1}) P_k over the distinct scores, step-wise "
    "(equals sklearn average_precision_score)",
    "ap_trapezoid": "AUPR = trapezoid area under the PR curve (recall on x, torchmetrics point order, "
    "(R=0, P=1) appended; anomalib AUPR without its implicit sigmoid)",
    "f1max": "F1-max = max over the distinct scores of 2 TP / (TP + FP + P) "
    "(max of 2PR/(P+R) over sklearn precision_recall_curve)",
}


def parse_aupro_variant(name: str) -> int | None:
    """Number of thresholds of a ``cflow<N>`` AUPRO variant, or None for ``exact``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if name == "exact":
        return None
    if name.startswith("cflow") and name[5:].isdigit() and int(name[5:]) >= 2:
        return int(name[5:])
    raise ValueError(f"unknown AUPRO variant {name!r}; use one of {AUPRO_VARIANTS} or 'cflow<N>' (N >= 2)")


def _aupro_text(variant: str, fpr_limit: float, connectivity: int) -> str:
    steps = parse_aupro_variant(variant)
    if steps is None:
        return (
            f"AUPRO@{fpr_limit:g} (MVTec AD): PRO(t) = mean over {connectivity}-connected ground-truth regions "
            f"of the fraction of the region scoring >= t, FPR(t) over all normal pixels of the category, "
            f"every distinct score a threshold (ties merged), piecewise-linear curve from (0,0) "
            f"integrated to FPR {fpr_limit:g} with linear interpolation at the limit, divided by {fpr_limit:g}"
        )
    return (
        f"AUPRO cflow-{steps} (cflow-ad / APRIL-GAN / AnomalyCLIP / MuSc): {steps} thresholds "
        f"np.arange(min, max, (max-min)/{steps}) over the category's maps, prediction = score > t, "
        f"PRO = mean over {connectivity}-connected regions, points with FPR < {fpr_limit:g} kept, their FPRs "
        f"min-max rescaled to [0,1], trapezoid area (not the MVTec definition)"
    )


def describe(
    key: str,
    *,
    ap: str = "step",
    aupro: str = "exact",
    mode: str = "exact",
    fpr_limit: float = 0.3,
    connectivity: int = 8,
    hist_bits: int = 24,
) -> str:
    """The definition string of metric ``key`` under the given variants.

    Args:
        key: a key of :data:`METRIC_KEYS` or :data:`VARIANT_KEYS`.
        ap: AP variant of ``*_ap`` keys ("step" or "trapezoid").
        aupro: AUPRO variant of ``pixel_aupro`` ("exact" or "cflow<N>").
        mode: "exact" or "histogram" (pixel metrics only).
        fpr_limit: the AUPRO integration limit.
        connectivity: 4 or 8, the ground-truth region connectivity.
        hist_bits: histogram resolution in bits of the float32 key.

    Raises:
        KeyError: for an unknown key.
    """
    level, _, name = key.partition("_")
    if level not in ("image", "pixel") or not name:
        raise KeyError(f"unknown metric key {key!r}; known: {METRIC_KEYS + VARIANT_KEYS}")
    if name == "auroc":
        text = _BASE["auroc"]
    elif name == "ap":
        text = _BASE["ap_trapezoid" if ap == "trapezoid" else "ap_step"]
    elif name == "ap_trapezoid":
        text = _BASE["ap_trapezoid"]
    elif name == "f1max":
        text = _BASE["f1max"]
    elif name == "aupro" and level == "pixel":
        text = _aupro_text(aupro, fpr_limit, connectivity)
    elif name == "aupro_cflow200" and level == "pixel":
        text = _aupro_text("cflow200", fpr_limit, connectivity)
    else:
        raise KeyError(f"unknown metric key {key!r}; known: {METRIC_KEYS + VARIANT_KEYS}")
    unit = "per image (one score per image)" if level == "image" else "over all pixels of the category"
    text = f"{text}; {unit}; {_RANK}"
    if level == "pixel" and mode == "histogram":
        text += (
            f"; histogram mode: scores binned by the top {hist_bits} bits of the order-preserving float32 key, "
            "value exact for the binned scores, certified |error| bound in `bound`"
        )
    return text
