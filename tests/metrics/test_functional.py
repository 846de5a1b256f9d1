"""Image/pixel AUROC, AP and F1-max against sklearn, with ties, dtypes and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from zsad_bench.metrics import auroc, average_precision, f1_max

TOL = 1e-6


def sk_f1max(labels: np.ndarray, scores: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * p * r / (p + r)
    return float(np.max(f1[np.isfinite(f1)]))


@st.composite
def scored_labels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Scores with many ties (few distinct values) or none, and labels with both classes."""
    n = draw(st.integers(2, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    distinct = draw(st.sampled_from([2, 3, 5, 20, 0]))  # 0: continuous
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64, np.float16]))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[rng.choice(n, 2, replace=False)] = [0, 1]
    shift = rng.uniform(0, 2)
    raw = rng.integers(0, distinct, n) if distinct else rng.normal(size=n) * 10
    scores = (raw + shift * labels * rng.uniform(size=n)).astype(dtype)
    return scores, labels


@settings(max_examples=150, deadline=None)
@given(scored_labels())
def test_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = data
    ref = scores.astype(np.float64)  # the same values; sklearn works in float64
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, ref), abs=TOL)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, ref), abs=TOL)
    assert f1_max(scores, labels) == pytest.approx(sk_f1max(labels, ref), abs=TOL)


@settings(max_examples=100, deadline=None)
@given(scored_labels())
def test_trapezoid_ap_matches_reference(refs, data: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = data
    expected = refs.trapezoid_aupr(scores.astype(np.float64), labels)
    assert average_precision(scores, labels, variant="trapezoid") == pytest.approx(expected, abs=TOL)


@pytest.mark.slow  # importing torchmetrics takes ~10 s; the test is skipped where it is not installed
def test_trapezoid_ap_matches_torchmetrics() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmetrics")
    from torchmetrics.classification import BinaryPrecisionRecallCurve
    from torchmetrics.utilities.compute import auc

    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = np.round(rng.uniform(size=50), 1)  # in [0, 1]: no implicit sigmoid
        labels = rng.integers(0, 2, 50)
        curve = BinaryPrecisionRecallCurve()
        curve.update(torch.tensor(scores), torch.tensor(labels))
        precision, recall, _ = curve.compute()
        expected = auc(recall, precision, reorder=True).item()
        assert average_precision(scores, labels, variant="trapezoid") == pytest.approx(expected, abs=TOL)


def test_trapezoid_differs_from_step() -> None:
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, labels, variant="trapezoid") != pytest.approx((1 + 2 / 3) / 2)


def test_hand_computed_values() -> None:
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == 0.75  # pairs: (0.35>0.1), (0.8>0.1), (0.8>0.4) of 4
    assert average_precision(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    value, threshold = f1_max(scores, labels, return_threshold=True)
    assert (value, threshold) == (pytest.approx(0.8), pytest.approx(0.35))


def test_ties_between_classes_count_half() -> None:
    assert auroc(np.array([1.0, 1.0, 1.0]), np.array([0, 1, 1])) == 0.5
    assert auroc(np.array([-0.0, 0.0]), np.array([0, 1])) == 0.5  # signed zeros tie


def test_infinite_scores_rank_as_extremes() -> None:
    scores = np.array([-np.inf, 0.2, np.inf, np.inf, 0.5, -np.inf])
    labels = np.array([0, 0, 1, 0, 1, 1])
    finite = np.array([-9.0, 0.2, 9.0, 9.0, 0.5, -9.0])  # same order and ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, finite))
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, finite))
    assert f1_max(scores, labels) == pytest.approx(sk_f1max(labels, finite))


def test_float64_is_not_cast_to_float32() -> None:
    scores = 1.0 + np.arange(6) * 1e-12  # identical in float32
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert auroc(scores, labels) == 1.0
    assert auroc(scores.astype(np.float32), labels) == 0.5


@pytest.mark.parametrize("labels", [np.zeros(4, int), np.ones(4, int)])
def test_single_class_is_nan(labels: np.ndarray) -> None:
    scores = np.arange(4.0)
    assert math.isnan(auroc(scores, labels))
    assert math.isnan(average_precision(scores, labels))
    assert math.isnan(f1_max(scores, labels))


def test_nan_scores_give_nan() -> None:
    assert math.isnan(auroc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1])))


def test_torch_inputs() -> None:
    torch = pytest.importorskip("torch")
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8], dtype=torch.bfloat16)
    assert auroc(scores, torch.tensor([0, 0, 1, 1])) == 0.75


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same number"):
        auroc(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="binary"):
        auroc(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="variant"):
        average_precision(np.zeros(2), np.array([0, 1]), variant="interpolated")
