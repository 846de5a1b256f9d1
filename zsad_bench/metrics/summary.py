"""Aggregation: per-category values to dataset means, domain means and average ranks.

Papers report the unweighted mean over categories of per-category values; that is what
:func:`summarize` returns. :func:`domain_means` and :func:`average_ranks` build the leaderboard's
summary columns from per-dataset values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zsad_bench.metrics.definitions import METRIC_KEYS, MetricValue

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["average_ranks", "domain_means", "summarize"]

logger = logging.getLogger(__name__)


def _ordered_keys(per_category: Mapping[str, Mapping[str, MetricValue]]) -> list[str]:
    seen: list[str] = []
    for values in per_category.values():
        seen += [k for k in values if k not in seen]
    return [k for k in METRIC_KEYS if k in seen] + [k for k in seen if k not in METRIC_KEYS]


def _summarize_key(key: str, per_category: Mapping[str, Mapping[str, MetricValue]]) -> MetricValue:
    present = {c: v[key] for c, v in per_category.items() if key in v}
    definitions = {mv.definition for mv in present.values()}
    if len(definitions) > 1:
        raise ValueError(f"{key}: categories were computed with different definitions; evaluate them alike")
    definition = definitions.pop() if definitions else ""
    excluded = {c: "not computed" for c in per_category if c not in present}
    excluded.update({c: mv.reason or "NaN" for c, mv in present.items() if mv.is_nan})
    kept = [mv for c, mv in present.items() if c not in excluded]
    if not kept:
        detail = "; ".join(f"{c}: {r}" for c, r in excluded.items())
        return MetricValue(float("nan"), f"undefined in all {len(per_category)} categories ({detail})", definition)
    value = math.fsum(mv.value for mv in kept) / len(kept)
    reason = None
    if excluded:
        detail = "; ".join(f"{c} ({r})" for c, r in excluded.items())
        reason = f"mean over {len(kept)} of {len(per_category)} categories; excluded: {detail}"
    bounds = [mv.bound for mv in kept if mv.bound is not None]
    bound = math.fsum(bounds) / len(kept) if bounds else None
    return MetricValue(value, reason, definition, bound)


def summarize(per_category: Mapping[str, Mapping[str, MetricValue]]) -> dict[str, MetricValue]:
    """Unweighted mean over categories of every metric, as the papers report it.

    A category whose value is NaN (or that lacks the metric) is left out of the mean and named,
    with its reason, in the summary's ``reason``; the summary is NaN only when every category
    is. The summary's ``bound`` is the mean of the categories' bounds (histogram mode).

    Args:
        per_category: category → metric key → value, as returned by ``CategoryEvaluator.compute``.

    Raises:
        ValueError: when one metric was computed with different definitions in different
            categories.

    Example:
        >>> a = {"image_auroc": MetricValue(0.8, None, "d")}
        >>> b = {"image_auroc": MetricValue(float("nan"), "no anomalous images", "d")}
        >>> s = summarize({"a": a, "b": b, "c": {"image_auroc": MetricValue(0.6, None, "d")}})["image_auroc"]
        >>> round(s.value, 6), s.reason
        (0.7, 'mean over 2 of 3 categories; excluded: b (no anomalous images)')
    """
    return {key: _summarize_key(key, per_category) for key in _ordered_keys(per_category)}


def _as_frame(table: Any) -> pd.DataFrame:
    import pandas as pd

    frame = table.copy() if isinstance(table, pd.DataFrame) else pd.DataFrame.from_dict(dict(table), orient="index")
    elementwise = getattr(frame, "map", None) or frame.applymap  # DataFrame.map is pandas >= 2.1
    return elementwise(lambda v: v.value if isinstance(v, MetricValue) else v).astype(float)


def domain_means(table: Any, domains: Mapping[str, str], *, skipna: bool = False) -> pd.DataFrame:
    """Unweighted mean over the datasets of each domain, per row.

    Args:
        table: rows (methods or runs) × columns (datasets) of one metric: a DataFrame, or a
            mapping ``row -> {dataset: float | MetricValue}``.
        domains: dataset → domain ("industrial", "medical").
        skipna: average over the available datasets; by default a missing or NaN dataset
            makes the row's domain mean NaN, so that rows stay comparable.

    Returns:
        rows × domains (in order of first appearance among the table's columns).

    Raises:
        KeyError: naming the datasets that have no domain.
    """
    frame = _as_frame(table)
    missing = [c for c in frame.columns if c not in domains]
    if missing:
        raise KeyError(f"no domain given for dataset(s) {missing}; pass domains={{dataset: domain}}")
    order = list(dict.fromkeys(domains[c] for c in frame.columns))
    by_domain = {d: frame[[c for c in frame.columns if domains[c] == d]].mean(axis=1, skipna=skipna) for d in order}
    import pandas as pd

    return pd.DataFrame(by_domain, index=frame.index)


def average_ranks(table: Any, *, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of each row across columns (1 = best; ties share the average rank, Demšar 2006).

    Only complete columns (no NaN) are ranked, so that every row is ranked on the same columns;
    the dropped columns are logged.

    Args:
        table: rows (methods) × columns (datasets or dataset-metric pairs), as for
            :func:`domain_means`.
        higher_is_better: rank the largest value first.

    Raises:
        ValueError: when no column is complete.
    """
    frame = _as_frame(table)
    complete = frame.columns[frame.notna().all(axis=0)]
    dropped = [c for c in frame.columns if c not in complete]
    if dropped:
        logger.info("average_ranks: columns with missing values not ranked: %s", dropped)
    if len(complete) == 0:
        raise ValueError("average_ranks: no column has a value for every row")
    ranks = frame[complete].rank(axis=0, ascending=not higher_is_better, method="average")
    return ranks.mean(axis=1).rename("avg_rank")
