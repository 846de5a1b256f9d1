"""Bounded-memory pixel metrics: a streaming histogram over the order-preserving float32 key.

Key: the float32 bit pattern ``b`` (as int32) maps to ``k = b ^ ((b >> 31) & 0x7FFFFFFF)``, a
signed int32 whose order is the float order (-0.0 is first turned into +0.0 so that the two
zeros share a bin). A score's bin is the top ``bits`` bits of ``k``; with 24 bits (sign, exponent
and 15 mantissa bits) a bin spans a relative width of about 3e-5 at any scale. Binning is
monotone, so scores in different bins are ordered correctly and only the order inside a bin is
lost. Float64 scores are rounded to float32 first, which is monotone too.

State: per bin, the negative count, the positive count and the summed PRO weight, paged by
``bits - 9`` low bits (one page per sign + exponent, allocated on first touch): about 0.8 MB per
touched exponent at 24 bits, typically 10-30 MB, never more than 2^24 bins (400 MB).

The metrics of the binned scores (all members of a bin tied) are exact for those binned scores;
:func:`bounds` gives certified bounds on the distance to the exact metrics of the raw scores,
treating every bin as hiding an arbitrary order of its members.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zsad_bench.metrics._ranking import TieGroups, aupro_bound_from_groups

__all__ = ["HistogramStore", "bounds"]

_DENSE_SPAN = 1 << 22  # histogram a chunk densely when its bin span is below this, else sparsely
_CHUNK = 1 << 20  # scores binned at a time


def _bins_numpy(x: np.ndarray, bits: int) -> np.ndarray:
    x32 = x.astype(np.float32) + np.float32(0.0)  # (n,) float32; -0.0 + 0.0 == +0.0
    b = x32.view(np.int32)
    k = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))  # order-preserving signed key
    return (k >> (32 - bits)).astype(np.int64) + (1 << (bits - 1))


def _bins_torch(x: Any, bits: int) -> Any:
    import torch

    x32 = x.to(torch.float32) + 0.0
    b = x32.view(torch.int32)
    k = b ^ ((b >> 31) & 0x7FFFFFFF)
    return (k >> (32 - bits)).to(torch.int64) + (1 << (bits - 1))


def _sparse_hist_torch(bins: Any, weights: Any | None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    if bins.numel() == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    lo, hi = int(bins.min()), int(bins.max())
    if hi - lo < _DENSE_SPAN:
        h = torch.bincount(bins - lo, weights=weights, minlength=hi - lo + 1)
        nz = torch.nonzero(h).flatten()
        return (nz + lo).cpu().numpy(), h[nz].cpu().numpy()
    uniq, inverse = torch.unique(bins, return_inverse=True)
    return uniq.cpu().numpy(), torch.bincount(inverse, weights=weights, minlength=uniq.numel()).cpu().numpy()


def _sparse_hist(bins: Any, weights: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct bins and their counts (or weight sums), as numpy arrays."""
    if type(bins).__module__.startswith("torch"):
        return _sparse_hist_torch(bins, weights)
    if bins.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    lo, hi = int(bins.min()), int(bins.max())
    if hi - lo < _DENSE_SPAN:
        h = np.bincount(bins - lo, weights=weights, minlength=hi - lo + 1)
        nz = np.flatnonzero(h)
        return nz + lo, h[nz]
    uniq, inverse = np.unique(bins, return_inverse=True)
    return uniq, np.bincount(inverse, weights=weights, minlength=uniq.size)


class HistogramStore:
    """Streaming per-bin counts of negatives and positives and summed PRO weights.

    Args:
        bits: bin resolution in bits of the 32-bit key (10 to 24).
    """

    def __init__(self, bits: int = 24) -> None:
        if not 10 <= bits <= 24:
            raise ValueError(f"histogram bits must be in [10, 24], got {bits}")
        self.bits = bits
        self.page_bits = bits - 9
        self.pages: dict[int, np.ndarray] = {}  # page -> (3, 2^page_bits) float64: neg, pos, weight
        self.n_neg = 0
        self.n_pos = 0
        self.n_regions = 0

    def _add(self, row: int, idx: np.ndarray, values: np.ndarray) -> None:
        if idx.size == 0:
            return
        page_of = idx >> self.page_bits
        cuts = np.flatnonzero(np.diff(page_of)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, idx.size], strict=True):
            page = int(page_of[lo])
            if page not in self.pages:
                self.pages[page] = np.zeros((3, 1 << self.page_bits))
            self.pages[page][row, idx[lo:hi] & ((1 << self.page_bits) - 1)] += values[lo:hi]

    def add(self, negatives: Any, positives: Any, weights: Any, n_regions: int) -> None:
        """Add NaN-free scores (numpy or torch, 1-D) and the PRO weights of the positives."""
        to_bins = _bins_torch if type(negatives).__module__.startswith("torch") else _bins_numpy
        for start in range(0, len(negatives), _CHUNK):  # chunks bound the int64 temporaries
            idx, counts = _sparse_hist(to_bins(negatives[start : start + _CHUNK], self.bits), None)
            self._add(0, idx, counts)
            self.n_neg += int(counts.sum())
        for start in range(0, len(positives), _CHUNK):
            pos_bins = to_bins(positives[start : start + _CHUNK], self.bits)
            idx, counts = _sparse_hist(pos_bins, None)
            self._add(1, idx, counts)
            self._add(2, *_sparse_hist(pos_bins, weights[start : start + _CHUNK]))
            self.n_pos += int(counts.sum())
        self.n_regions += n_regions

    def groups(self) -> TieGroups:
        """The positive bins as tie groups, in descending score order."""
        if not self.pages:
            z = np.zeros(0, np.int64)
            return TieGroups(z, np.zeros(0), z, z, np.zeros(0, np.float32), self.n_neg, self.n_regions)
        keys = sorted(self.pages, reverse=True)
        table = np.concatenate([self.pages[k][:, ::-1] for k in keys], axis=1)  # (3, bins) descending
        first_bin = np.concatenate([(k << self.page_bits) + np.arange(1 << self.page_bits)[::-1] for k in keys])
        neg = table[0].astype(np.int64)
        neg_above_all = np.cumsum(neg) - neg
        has_pos = table[1] > 0
        return TieGroups(
            n_pos=table[1][has_pos].astype(np.int64),
            weight=table[2][has_pos],
            neg_above=neg_above_all[has_pos],
            neg_tied=neg[has_pos],
            score=self._bin_floor(first_bin[has_pos]),
            n_neg=self.n_neg,
            n_regions=self.n_regions,
        )

    def _bin_floor(self, bins: np.ndarray) -> np.ndarray:
        """A float32 score inside each bin (its key with the dropped bits cleared)."""
        k = ((bins - (1 << (self.bits - 1))) << (32 - self.bits)).astype(np.int32)
        return (k ^ ((k >> 31) & np.int32(0x7FFFFFFF))).view(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes held by the pages."""
        return sum(p.nbytes for p in self.pages.values())


def bounds(g: TieGroups, fpr_limit: float) -> dict[str, float]:
    """Certified bounds on ``|binned metric - exact metric|`` for AUROC, AP, F1-max and AUPRO.

    With ``T0``/``F0`` the positives/negatives in higher bins and ``p``/``n`` those in a bin:

    * AUROC: pairs in different bins are ranked correctly, a pair inside a bin may count 0, 1/2
      or 1 instead of 1/2: ``sum_b p n / (2 P N)``.
    * AP: the j-th best positive of a bin has precision in
      ``[(T0+j)/(T0+j+F0+n), (T0+p)/(T0+p+F0)]``; the lower sum over j is bounded below by
      its integral ``p - c ln(1 + p/(T0+c))``, ``c = F0 + n``.
    * F1-max: every binned threshold is a real one (lower bound); any real threshold inside a
      bin has F1 at most ``2(T0+p)/(T0+p+F0+P)``.
    * AUPRO: between bin edges the real curve is a monotone path in the box
      ``n/N x w/R``; its area differs from the chord's by at most half the box.
    """
    p_tot, n_tot = g.total_pos, g.n_neg
    t0 = g.tp - g.n_pos
    f0, p, n = g.neg_above, g.n_pos, g.neg_tied
    out = {"auroc": float(np.sum(p * n) / (2.0 * p_tot * n_tot))}
    c = (f0 + n).astype(np.float64)
    base = t0 + c
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(base > 0, p - c * np.log1p(p / np.where(base > 0, base, 1.0)), p)
    upper = np.sum(p * (t0 + p) / (t0 + p + f0)) / p_tot
    value = np.sum(p * (t0 + p) / (t0 + p + f0 + n)) / p_tot
    out["ap"] = float(max(upper - value, value - np.sum(low) / p_tot))
    f1 = 2.0 * (t0 + p) / (t0 + p + f0 + n + p_tot)
    out["f1max"] = float(np.max(2.0 * (t0 + p) / (t0 + p + f0 + p_tot)) - np.max(f1))
    out["aupro"] = aupro_bound_from_groups(g, fpr_limit) if g.n_regions else float("nan")
    return out
