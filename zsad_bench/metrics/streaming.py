"""Streaming evaluation of one category (or one pooled group): ``update`` per batch, ``compute`` once.

Example:
    >>> import numpy as np
    >>> ev = CategoryEvaluator(image_metrics=("image_auroc",), pixel_metrics=("pixel_auroc", "pixel_aupro"))
    >>> masks = np.zeros((2, 4, 4), bool); masks[1, :2, :2] = True
    >>> maps = np.zeros((2, 4, 4), np.float32); maps[1, :2, :2] = 1.0
    >>> ev.update(np.array([0.1, 0.9]), np.array([0, 1]), maps, masks)
    >>> {k: round(v.value, 3) for k, v in ev.compute().items()}
    {'image_auroc': 1.0, 'pixel_auroc': 1.0, 'pixel_aupro': 1.0}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from zsad_bench.metrics._arrays import as_numpy, as_scores
from zsad_bench.metrics._cflow import cflow_aupro
from zsad_bench.metrics._histogram import bounds
from zsad_bench.metrics._pixel import PixelAccumulator
from zsad_bench.metrics._ranking import (
    TieGroups,
    ap_step_from_groups,
    ap_trapezoid_from_groups,
    aupro_from_groups,
    auroc_from_groups,
    f1max_from_groups,
    groups_of,
)
from zsad_bench.metrics.definitions import (
    AP_VARIANTS,
    IMAGE_KEYS,
    MODES,
    PIXEL_KEYS,
    VARIANT_KEYS,
    MetricValue,
    describe,
    parse_aupro_variant,
)

__all__ = ["CategoryEvaluator"]

logger = logging.getLogger(__name__)

NAN = float("nan")


def _check_keys(keys: Sequence[str], level: str) -> tuple[str, ...]:
    allowed = [k for k in (IMAGE_KEYS if level == "image" else PIXEL_KEYS) + VARIANT_KEYS if k.startswith(level)]
    unknown = [k for k in keys if k not in allowed]
    if unknown:
        raise KeyError(f"unknown {level} metric(s) {unknown}; choose from {allowed}")
    return tuple(keys)


class CategoryEvaluator:
    """Exact (or histogram-bounded) image- and pixel-level metrics of one evaluation group.

    Args:
        image_metrics: image-level keys, from ``IMAGE_KEYS`` and ``image_ap_trapezoid``.
        pixel_metrics: pixel-level keys, from ``PIXEL_KEYS``, ``pixel_ap_trapezoid`` and
            ``pixel_aupro_cflow200``.
        aupro: definition of ``pixel_aupro``: "exact" (MVTec AD) or "cflow200" / "cflow<N>".
        ap: definition of the ``*_ap`` keys: "step" (sklearn) or "trapezoid" (anomalib AUPR).
        mode: "exact", or "histogram" for pixel state of bounded size with a certified error
            bound (``MetricValue.bound``). Image metrics are always exact.
        fpr_limit: AUPRO integration limit.
        connectivity: ground-truth region connectivity (8 as MVTec AD, or 4).
        has_image_labels: False makes the image metrics NaN with a reason (nothing is stored).
        has_masks: False makes the pixel metrics NaN with a reason (nothing is stored).
        allow_inf: rank ±inf scores as extreme values (default); False reports them as NaN.
        hist_bits: histogram resolution (bits of the float32 key, 10..24).
        backend: "auto" (torch on the device of CUDA inputs, numpy otherwise), "numpy" or "torch".

    Raises:
        KeyError: for an unknown metric key.
        ValueError: for an unknown variant or mode, or a combination the mode cannot certify.
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        image_metrics: Sequence[str] = IMAGE_KEYS,
        pixel_metrics: Sequence[str] = PIXEL_KEYS,
        *,
        aupro: str = "exact",
        ap: str = "step",
        mode: str = "exact",
        fpr_limit: float = 0.3,
        connectivity: int = 8,
        has_image_labels: bool = True,
        has_masks: bool = True,
        allow_inf: bool = True,
        hist_bits: int = 24,
        backend: str = "auto",
    ) -> None:
        self.image_metrics = _check_keys(image_metrics, "image")
        self.pixel_metrics = _check_keys(pixel_metrics, "pixel")
        parse_aupro_variant(aupro)
        if ap not in AP_VARIANTS:
            raise ValueError(f"ap must be one of {AP_VARIANTS}, got {ap!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        if mode == "histogram" and (aupro != "exact" or ap != "step" or set(self.pixel_metrics) & set(VARIANT_KEYS)):
            raise ValueError("histogram mode certifies only the default definitions (ap='step', aupro='exact')")
        self.aupro, self.ap, self.mode = aupro, ap, mode
        self.fpr_limit, self.connectivity, self.hist_bits = fpr_limit, connectivity, hist_bits
        self.has_image_labels, self.has_masks, self.allow_inf = has_image_labels, has_masks, allow_inf
        with_regions = any("aupro" in k for k in self.pixel_metrics)
        self._pixels = PixelAccumulator(mode, connectivity, backend, hist_bits, with_regions=with_regions)
        self.reset()

    def reset(self) -> None:
        """Forget all data (the configuration stays)."""
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._images_without_maps = 0
        self._pixels.reset()

    @property
    def _wants_pixels(self) -> bool:
        return bool(self.pixel_metrics) and self.has_masks

    # ------------------------------------------------------------------ update
    def update(self, image_scores: Any, labels: Any, anomaly_maps: Any = None, masks: Any = None) -> None:
        """Add a batch of predictions and ground truth.

        Args:
            image_scores: (B,) image scores, higher = more anomalous (None to skip).
            labels: (B,) image labels, 0 normal, 1 anomalous (None to skip).
            anomaly_maps: (B, H, W) pixel scores at the evaluation resolution, or None.
            masks: (B, H, W) binary ground truth aligned with ``anomaly_maps``.

        Raises:
            ValueError: on mismatched shapes, labels other than 0/1, non-binary masks, or masks
                missing while ``has_masks`` is set.
        """
        if image_scores is not None and labels is not None and self.image_metrics and self.has_image_labels:
            self._update_images(image_scores, labels)
        if not self._wants_pixels:
            return
        if anomaly_maps is None:
            self._images_without_maps += len(image_scores) if image_scores is not None else 1
            return
        if masks is None:
            raise ValueError("masks=None while has_masks=True: pass all-zero masks for normal images")
        self._pixels.update(anomaly_maps, masks)

    def _update_images(self, image_scores: Any, labels: Any) -> None:
        scores = as_scores(image_scores, "image_scores", keep_device=False).reshape(-1)
        lab = as_numpy(labels).reshape(-1)
        if scores.shape != lab.shape:
            raise ValueError(f"image_scores {scores.shape} and labels {lab.shape} must have the same length")
        if not ((lab == 0) | (lab == 1)).all():
            raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got values {np.unique(lab)[:5]}")
        self._scores.append(scores.copy())
        self._labels.append(lab.astype(np.int8))

    # ------------------------------------------------------------------ compute
    def definitions(self) -> dict[str, str]:
        """The definition string of every requested metric (for ``metrics.json``)."""
        out = {k: self._describe(k, "exact") for k in self.image_metrics}
        out.update({k: self._describe(k, self.mode) for k in self.pixel_metrics})
        return out

    def _describe(self, key: str, mode: str) -> str:
        """The definition string of ``key`` under this evaluator's variants and ``mode``."""
        ap, aupro, fpr, conn, bits = self.ap, self.aupro, self.fpr_limit, self.connectivity, self.hist_bits
        return describe(key, mode=mode, ap=ap, aupro=aupro, fpr_limit=fpr, connectivity=conn, hist_bits=bits)

    def compute(self) -> dict[str, MetricValue]:
        """All requested metrics; undefined ones are NaN with a reason, never an exception."""
        defs = self.definitions()
        out = self._compute_images(defs)
        out.update(self._compute_pixels(defs))
        return out

    def _nan(self, keys: Sequence[str], reason: str, defs: dict[str, str]) -> dict[str, MetricValue]:
        return {k: MetricValue(NAN, reason, defs[k]) for k in keys}

    def _compute_images(self, defs: dict[str, str]) -> dict[str, MetricValue]:
        keys = self.image_metrics
        if not keys:
            return {}
        if not self.has_image_labels:
            return self._nan(keys, "the dataset has no image-level labels", defs)
        if not self._scores:
            return self._nan(keys, "no images were evaluated", defs)
        scores, labels = np.concatenate(self._scores), np.concatenate(self._labels)
        reason = self._undefined("image", scores.size, int(np.isnan(scores).sum()), int(np.isinf(scores).sum()))
        reason = reason or self._one_class("images", int((labels == 1).sum()), int((labels == 0).sum()))
        if reason:
            return self._nan(keys, reason, defs)
        groups = groups_of(scores, labels == 1)
        return {k: MetricValue(self._from_groups(k, groups), None, defs[k]) for k in keys}

    def _undefined(self, level: str, n: int, n_nan: int, n_inf: int, first: int | None = None) -> str | None:
        if n_nan:
            where = f" (first in update {first})" if first else ""
            return f"{n_nan} of {n} {level} scores are NaN{where}; NaN cannot be ranked"
        if n_inf and not self.allow_inf:
            return f"{n_inf} of {n} {level} scores are ±inf (allow_inf=False)"
        return None

    @staticmethod
    def _one_class(what: str, n_pos: int, n_neg: int) -> str | None:
        if n_pos == 0:
            return f"no anomalous {what} ({n_neg} normal): ranking metrics are undefined"
        if n_neg == 0:
            return f"no normal {what} ({n_pos} anomalous): ranking metrics are undefined"
        return None

    def _from_groups(self, key: str, g: TieGroups) -> float:
        name = key.partition("_")[2]
        if name == "auroc":
            return auroc_from_groups(g)
        if name == "ap_trapezoid" or (name == "ap" and self.ap == "trapezoid"):
            return ap_trapezoid_from_groups(g)
        if name == "ap":
            return ap_step_from_groups(g)
        if name == "f1max":
            return f1max_from_groups(g)[0]
        return aupro_from_groups(g, self.fpr_limit)

    def _compute_pixels(self, defs: dict[str, str]) -> dict[str, MetricValue]:
        keys, acc = self.pixel_metrics, self._pixels
        if not keys:
            return {}
        if not self.has_masks:
            return self._nan(keys, "the dataset has no pixel-level ground truth", defs)
        if self._images_without_maps:
            return self._nan(keys, f"{self._images_without_maps} image(s) came without an anomaly map", defs)
        if acc.n_images == 0:
            return self._nan(keys, "no anomaly maps were evaluated", defs)
        reason = self._undefined("pixel", acc.n_pixels, acc.n_nan, acc.n_inf, acc.first_nan_update)
        reason = reason or self._one_class("pixels", acc.n_pos, acc.n_neg)
        if reason:
            return self._nan(keys, reason, defs)
        if self.mode == "histogram":
            return self._histogram_values(keys, defs)
        pos_desc, weight_desc = acc.sorted_positives()
        steps = {k: parse_aupro_variant(self.aupro) if k == "pixel_aupro" else None for k in keys}
        steps.update({k: 200 for k in keys if k == "pixel_aupro_cflow200"})
        ranked = self._over_chunks([k for k in keys if steps[k] is None], acc.chunks(pos_desc, weight_desc))
        out = {}
        for key in keys:
            n_steps = steps[key]
            if n_steps is None:
                out[key] = MetricValue(ranked[key], None, defs[key])
                continue
            extremes = acc.extremes()
            # AUPRO keys make the accumulator keep region weights, and there are positives (checked above)
            assert weight_desc is not None
            assert extremes is not None
            value, why = cflow_aupro(
                acc.negatives.count_le, acc.n_neg, pos_desc, weight_desc, acc.n_regions, extremes, n_steps,
                self.fpr_limit,
            )  # fmt: skip
            out[key] = MetricValue(value, why, defs[key])
        return out

    def _over_chunks(self, keys: Sequence[str], chunks: Iterator[TieGroups]) -> dict[str, float]:
        """Metrics from tie groups evaluated chunk by chunk: shares are summed, F1-max is a max."""
        if not keys:
            return {}
        shares: dict[str, list[float]] = {k: [] for k in keys}
        for g in chunks:
            for key in keys:
                shares[key].append(self._from_groups(key, g))
        return {k: max(v) if k.endswith("f1max") else math.fsum(v) for k, v in shares.items()}

    def _histogram_values(self, keys: Sequence[str], defs: dict[str, str]) -> dict[str, MetricValue]:
        groups = self._pixels.groups()
        bound = bounds(groups, self.fpr_limit)
        out = {}
        for key in keys:
            b = bound[key.partition("_")[2]]
            out[key] = MetricValue(self._from_groups(key, groups), None, defs[key], b)
            if b > 1e-4:
                logger.warning("%s: histogram bound %.2g exceeds 1e-4; use mode='exact' for this data", key, b)
        return out

    # ------------------------------------------------------------------ info
    def state_info(self) -> dict[str, Any]:
        """Counts, dtypes and state size, for the result file (cheap; no computation)."""
        acc = self._pixels
        return {
            "mode": self.mode,
            "connectivity": self.connectivity,
            "fpr_limit": self.fpr_limit,
            "n_images": int(sum(s.size for s in self._scores)),
            "n_pixel_images": acc.n_images,
            "n_pixels": acc.n_pixels,
            "n_anomalous_pixels": acc.n_pos,
            "n_regions": acc.n_regions,
            "n_nan_pixels": acc.n_nan,
            "n_inf_pixels": acc.n_inf,
            "score_dtypes": sorted(acc.dtypes),
            "backend": "numpy" if acc.device is None else f"torch:{acc.device}",
            "state_bytes": acc.nbytes,
        }

    def __repr__(self) -> str:
        metrics = ", ".join(self.image_metrics + self.pixel_metrics)
        return f"CategoryEvaluator({metrics}; mode={self.mode}, aupro={self.aupro}, ap={self.ap})"
