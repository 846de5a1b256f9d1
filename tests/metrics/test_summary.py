"""Dataset means over categories, domain means and average ranks."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from zsad_bench.metrics import MetricValue, average_ranks, domain_means, summarize

NAN = float("nan")


def mv(value: float, reason: str | None = None, definition: str = "d", bound: float | None = None) -> MetricValue:
    return MetricValue(value, reason, definition, bound)


def test_unweighted_mean_over_categories() -> None:
    per = {"a": {"image_auroc": mv(0.9), "pixel_aupro": mv(0.5)}, "b": {"image_auroc": mv(0.7), "pixel_aupro": mv(0.8)}}
    out = summarize(per)
    assert list(out) == ["image_auroc", "pixel_aupro"]
    assert out["image_auroc"].value == pytest.approx(0.8)
    assert out["pixel_aupro"].value == pytest.approx(0.65)
    assert out["image_auroc"].reason is None
    assert out["image_auroc"].definition == "d"


def test_nan_categories_are_excluded_and_named() -> None:
    per = {
        "a": {"pixel_aupro": mv(0.6)},
        "b": {"pixel_aupro": mv(NAN, "no anomalous pixels")},
        "c": {"pixel_aupro": mv(0.8)},
        "d": {},
    }
    out = summarize(per)["pixel_aupro"]
    assert out.value == pytest.approx(0.7)
    assert out.reason == "mean over 2 of 4 categories; excluded: d (not computed); b (no anomalous pixels)"


def test_all_nan_is_nan_with_reasons() -> None:
    out = summarize({"a": {"image_auroc": mv(NAN, "x")}, "b": {"image_auroc": mv(NAN, "y")}})["image_auroc"]
    assert math.isnan(out.value)
    assert "undefined in all 2 categories" in out.reason
    assert "a: x" in out.reason
    assert "b: y" in out.reason


def test_mixed_definitions_raise() -> None:
    with pytest.raises(ValueError, match="different definitions"):
        summarize(
            {"a": {"pixel_aupro": mv(0.5, definition="exact")}, "b": {"pixel_aupro": mv(0.5, definition="cflow")}}
        )


def test_bounds_average() -> None:
    out = summarize({"a": {"pixel_auroc": mv(0.5, bound=1e-5)}, "b": {"pixel_auroc": mv(0.7, bound=3e-5)}})
    assert out["pixel_auroc"].bound == pytest.approx(2e-5)
    assert summarize({"a": {"pixel_auroc": mv(0.5)}})["pixel_auroc"].bound is None


def test_summary_order_independent() -> None:
    values = [0.1, 0.7, 0.3333333333333333, 0.9999999999, 1e-9]
    a = summarize({str(i): {"image_ap": mv(v)} for i, v in enumerate(values)})
    b = summarize({str(i): {"image_ap": mv(v)} for i, v in reversed(list(enumerate(values)))})
    assert a["image_ap"].value == b["image_ap"].value


TABLE = pd.DataFrame(
    {"mvtec": [0.9, 0.8, 0.7], "visa": [0.8, 0.9, 0.7], "brainmri": [0.6, NAN, 0.9]},
    index=["m1", "m2", "m3"],
)
DOMAINS = {"mvtec": "industrial", "visa": "industrial", "brainmri": "medical"}


def test_domain_means() -> None:
    out = domain_means(TABLE, DOMAINS)
    assert list(out.columns) == ["industrial", "medical"]
    assert out.loc["m1", "industrial"] == pytest.approx(0.85)
    assert math.isnan(out.loc["m2", "medical"])
    holes = TABLE.copy()
    holes.loc["m3", "visa"] = NAN
    assert math.isnan(domain_means(holes, DOMAINS).loc["m3", "industrial"])
    assert domain_means(holes, DOMAINS, skipna=True).loc["m3", "industrial"] == pytest.approx(0.7)


def test_domain_means_accepts_nested_dicts_of_metric_values() -> None:
    table = {"m1": {"mvtec": mv(0.9), "visa": mv(0.7)}, "m2": {"mvtec": 0.5, "visa": 0.5}}
    out = domain_means(table, {"mvtec": "industrial", "visa": "industrial"})
    assert out.loc["m1", "industrial"] == pytest.approx(0.8)


def test_domain_means_unknown_dataset_raises() -> None:
    with pytest.raises(KeyError, match="brainmri"):
        domain_means(TABLE, {"mvtec": "industrial", "visa": "industrial"})


def test_average_ranks_with_ties_and_incomplete_columns() -> None:
    table = pd.DataFrame({"a": [0.9, 0.9, 0.5], "b": [0.1, 0.3, 0.2], "c": [NAN, 1.0, 0.0]}, index=["x", "y", "z"])
    ranks = average_ranks(table)  # column c is incomplete and not ranked
    # a: x and y tie for first -> 1.5 each, z 3; b: y 1, z 2, x 3.
    assert ranks.to_dict() == {"x": pytest.approx(2.25), "y": pytest.approx(1.25), "z": pytest.approx(2.5)}
    assert average_ranks(table, higher_is_better=False)["z"] == pytest.approx(1.5)


def test_average_ranks_without_complete_column_raises() -> None:
    with pytest.raises(ValueError, match="no column"):
        average_ranks(pd.DataFrame({"a": [NAN, 1.0]}))


def test_metric_value_to_dict() -> None:
    assert mv(0.5, None, "def").to_dict() == {"value": 0.5, "reason": None, "definition": "def", "bound": None}
