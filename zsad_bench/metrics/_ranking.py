"""Ranking metrics from tie groups: the arithmetic shared by the exact and the histogram engines.

Every metric here depends only on, for each group of anomalous ("positive") samples that share a
score (exact mode) or a bin (histogram mode): how many positives it holds, their summed PRO weight,
how many normal ("negative") samples score strictly higher, and how many tie with it. Groups are
ordered by descending score. Counts are int64 throughout (a float32 cumsum saturates at 2^24).

Each metric function returns the additive share of one chunk of groups (F1-max: the chunk's
best), so that millions of groups can be evaluated a chunk at a time in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CountFn",
    "TieGroups",
    "ap_step_from_groups",
    "ap_trapezoid_from_groups",
    "aupro_bound_from_groups",
    "aupro_from_groups",
    "auroc_from_groups",
    "f1max_from_groups",
    "groups_of",
    "iter_groups",
    "sorted_counter",
]

CountFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class TieGroups:
    """Positive tie groups in descending score order: all of them, or one chunk.

    Attributes:
        n_pos: (G,) int64 positives per group.
        weight: (G,) float64 summed PRO weight (1/|region| per pixel) per group.
        neg_above: (G,) int64 negatives scoring strictly higher than the group.
        neg_tied: (G,) int64 negatives tied with the group (same score, or same bin).
        score: (G,) the group's score (exact mode) or a score inside its bin.
        n_neg: total negatives N.
        n_regions: total ground-truth regions R (0 when no PRO weights were given).
        tp_before: positives in the groups before this chunk.
        p_total: total positives P over all chunks (-1: this chunk holds them all).
        next_neg_above: ``neg_above`` of the group after this chunk (-1: there is none).
        prev_precision: precision at the threshold of the group before this chunk (1.0 when
            there is none: the (R=0, P=1) end point of the PR curve).
    """

    n_pos: np.ndarray
    weight: np.ndarray
    neg_above: np.ndarray
    neg_tied: np.ndarray
    score: np.ndarray
    n_neg: int
    n_regions: int = 0
    tp_before: int = 0
    p_total: int = -1
    next_neg_above: int = -1
    prev_precision: float = 1.0

    @property
    def total_pos(self) -> int:
        """Total positives P."""
        return self.p_total if self.p_total >= 0 else int(self.n_pos.sum())

    @property
    def tp(self) -> np.ndarray:
        """(G,) true positives when thresholding at each group's score."""
        return self.tp_before + np.cumsum(self.n_pos, dtype=np.int64)

    @property
    def fp(self) -> np.ndarray:
        """(G,) false positives when thresholding at each group's score."""
        return self.neg_above + self.neg_tied


def iter_groups(
    pos_desc: np.ndarray,
    weight_desc: np.ndarray | None,
    count_lt_le: CountFn,
    n_neg: int,
    n_regions: int = 0,
    chunk: int = 1 << 18,
) -> Iterator[TieGroups]:
    """Tie groups of positives sorted by descending score, ``chunk`` groups at a time.

    Args:
        pos_desc: (P,) positive scores, descending.
        weight_desc: (P,) PRO weights aligned with ``pos_desc``, or None.
        count_lt_le: maps ascending keys to (#negatives < key, #negatives <= key).
        n_neg: total negatives.
        n_regions: total ground-truth regions.
        chunk: groups per chunk (the temporaries take about 100 bytes per group).
    """
    p_total = int(pos_desc.size)
    if p_total == 0:
        z = np.zeros(0, np.int64)
        yield TieGroups(z, np.zeros(0), z, z, pos_desc[:0], n_neg, n_regions)
        return
    # != rather than diff: inf - inf is NaN while inf != inf is False; -0.0 != 0.0 is False too.
    starts = np.flatnonzero(np.concatenate(([True], pos_desc[1:] != pos_desc[:-1])))  # (G,)
    edges = np.append(starts, p_total)
    tp_before, prev_precision = 0, 1.0
    for a in range(0, starts.size, chunk):
        b = min(a + chunk, starts.size)
        keys = pos_desc[starts[a : b + 1]]  # plus one look-ahead group when there is one
        lt, le = (np.asarray(x)[::-1].astype(np.int64) for x in count_lt_le(np.ascontiguousarray(keys[::-1])))
        n_pos = np.diff(edges[a : b + 1]).astype(np.int64)
        weight = (
            np.zeros(b - a)
            if weight_desc is None
            else np.add.reduceat(weight_desc[edges[a] : edges[b]], edges[a:b] - edges[a])
        )
        m = b - a
        g = TieGroups(
            n_pos, weight, n_neg - le[:m], le[:m] - lt[:m], keys[:m], n_neg, n_regions,
            tp_before, p_total, int(n_neg - le[m]) if b < starts.size else -1, prev_precision,
        )  # fmt: skip
        yield g
        tp_before += int(n_pos.sum())
        prev_precision = tp_before / (tp_before + int(g.fp[-1]))


def sorted_counter(neg_sorted: np.ndarray) -> CountFn:
    """``count_lt_le`` over one sorted array of negatives."""
    return lambda keys: (np.searchsorted(neg_sorted, keys, "left"), np.searchsorted(neg_sorted, keys, "right"))


def groups_of(scores: np.ndarray, is_pos: np.ndarray) -> TieGroups:
    """All tie groups of in-memory scores in one chunk (image level and the functional API)."""
    neg = np.sort(scores[~is_pos])
    pos_desc = np.sort(scores[is_pos])[::-1]
    return next(iter_groups(pos_desc, None, sorted_counter(neg), neg.size, chunk=max(pos_desc.size, 1)))


def auroc_from_groups(g: TieGroups) -> float:
    """Mann-Whitney AUROC: ``sum_pos (#neg below + #neg tied / 2) / (P N)``."""
    below = g.n_neg - g.neg_above - g.neg_tied
    twice_u = int(np.sum(g.n_pos * (2 * below + g.neg_tied), dtype=np.int64))
    return twice_u / (2.0 * g.total_pos * g.n_neg)


def ap_step_from_groups(g: TieGroups) -> float:
    """Step-wise average precision: ``sum_g (n_g / P) * TP_g / (TP_g + FP_g)``."""
    tp = g.tp
    precision = tp / (tp + g.fp)
    return float(np.sum(g.n_pos * precision) / g.total_pos)


def ap_trapezoid_from_groups(g: TieGroups) -> float:
    """Trapezoid area under the PR curve, with torchmetrics' point order (anomalib ``AUPR``).

    The curve has one point per distinct score; points sharing a recall level are ordered by
    increasing threshold (a stable sort of the reversed curve), and (R=0, P=1) is appended last
    at recall 0. Only the jump between recall levels has width, from the last point of level
    ``i-1`` (threshold = group ``i-1``'s score) to the first point of level ``i`` (the lowest
    threshold above group ``i+1``, where FP = #negatives above group ``i+1``).
    """
    tp = g.tp
    prec_last = tp / (tp + g.fp)
    fp_first = np.append(g.neg_above[1:], g.next_neg_above if g.next_neg_above >= 0 else g.n_neg)
    prec_first = tp / (tp + fp_first)
    prev_last = np.concatenate(([g.prev_precision], prec_last[:-1]))
    return float(np.sum(g.n_pos / g.total_pos * (prev_last + prec_first) / 2.0))


def f1max_from_groups(g: TieGroups) -> tuple[float, float]:
    """Best F1 over thresholds, ``max_g 2 TP_g / (TP_g + FP_g + P)``, and its threshold score."""
    tp = g.tp
    f1 = 2.0 * tp / (tp + g.fp + g.total_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(g.score[best])


def _area_to_limit(fpr_a: np.ndarray, fpr_b: np.ndarray, limit: float) -> np.ndarray:
    """Per-group ``integral_0^limit c(x) dx`` of a unit step ramping linearly from fpr_a to fpr_b."""
    out = np.zeros(fpr_a.shape, dtype=np.float64)
    full = fpr_b <= limit
    out[full] = limit - (fpr_a[full] + fpr_b[full]) / 2.0
    cross = (~full) & (fpr_a < limit)
    out[cross] = (limit - fpr_a[cross]) ** 2 / (2.0 * (fpr_b[cross] - fpr_a[cross]))
    return out


def aupro_from_groups(g: TieGroups, fpr_limit: float) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition).

    The PRO curve is piecewise linear between consecutive distinct scores, so each positive's
    weight ``w`` enters PRO linearly while the FPR crosses its tie segment
    ``[FPR_a, FPR_b] = [#neg above / N, (#neg above + #neg tied) / N]``. Its contribution to
    ``integral_0^L PRO dFPR`` is ``w (L - (FPR_a + FPR_b) / 2)`` when ``FPR_b <= L``,
    ``w (L - FPR_a)^2 / (2 (FPR_b - FPR_a))`` when the segment crosses ``L``, else 0; this equals
    the MVTec script's trapezoid with linear interpolation at ``L``. The sum is divided by
    ``L * R``.
    """
    n = float(g.n_neg)
    fpr_a = g.neg_above / n
    fpr_b = (g.neg_above + g.neg_tied) / n
    area = float(np.sum(g.weight * _area_to_limit(fpr_a, fpr_b, fpr_limit)))
    return area / (fpr_limit * g.n_regions)


def aupro_bound_from_groups(g: TieGroups, fpr_limit: float) -> float:
    """Histogram bound: a monotone path inside a bin's box differs from its chord by <= half the box."""
    n = float(g.n_neg)
    fpr_a = g.neg_above / n
    box = (g.neg_tied / n) * (g.weight / g.n_regions) / 2.0
    return float(np.sum(box[fpr_a < fpr_limit]) / fpr_limit)
