"""The metrics engine: exact streaming image- and pixel-level AUROC, AP, F1-max and AUPRO.

* :class:`CategoryEvaluator`: ``update`` per batch, ``compute`` once per category.
* :func:`summarize`: the unweighted mean over categories (the papers' convention);
  :func:`domain_means`, :func:`average_ranks`: leaderboard summaries.
* :mod:`zsad_bench.metrics.functional`: pure functions on arrays.

Definitions, variants and the memory model are documented in ``docs/metrics.md``.
"""

from zsad_bench.metrics.definitions import (
    AP_VARIANTS,
    AUPRO_VARIANTS,
    IMAGE_KEYS,
    METRIC_KEYS,
    MODES,
    PIXEL_KEYS,
    VARIANT_KEYS,
    MetricValue,
)
from zsad_bench.metrics.functional import aupro, auroc, average_precision, f1_max
from zsad_bench.metrics.streaming import CategoryEvaluator
from zsad_bench.metrics.summary import average_ranks, domain_means, summarize

__all__ = [
    "AP_VARIANTS",
    "AUPRO_VARIANTS",
    "IMAGE_KEYS",
    "METRIC_KEYS",
    "MODES",
    "PIXEL_KEYS",
    "VARIANT_KEYS",
    "CategoryEvaluator",
    "MetricValue",
    "aupro",
    "auroc",
    "average_precision",
    "average_ranks",
    "domain_means",
    "f1_max",
    "summarize",
]
