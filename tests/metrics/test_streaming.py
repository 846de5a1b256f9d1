"""CategoryEvaluator: streaming invariance, backends, histogram bounds, undefined cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad_bench.metrics import METRIC_KEYS, PIXEL_KEYS, CategoryEvaluator, MetricValue, aupro

ALL_PIXEL = (*PIXEL_KEYS, "pixel_ap_trapezoid", "pixel_aupro_cflow200")
ALL_IMAGE = ("image_auroc", "image_ap", "image_f1max", "image_ap_trapezoid")


def category(seed: int, n: int = 8, size: int = 10, decimals: int | None = 2) -> dict[str, np.ndarray]:
    """A small category: half the images anomalous with blobby masks; rounded (tied) scores."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 3, 2)
        masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
        masks[i].flat[rng.integers(size * size)] = True
    maps = rng.normal(size=(n, size, size)) + 1.5 * masks
    maps = np.round(maps, decimals) if decimals is not None else maps
    scores = maps.reshape(n, -1).max(1) + rng.normal(0, 0.3, n)
    return {"scores": scores, "labels": labels, "maps": maps.astype(np.float32), "masks": masks}


def evaluate(data: dict, batches: list[np.ndarray], **kwargs) -> dict[str, MetricValue]:
    ev = CategoryEvaluator(kwargs.pop("image_metrics", ALL_IMAGE), kwargs.pop("pixel_metrics", ALL_PIXEL), **kwargs)
    for idx in batches:
        ev.update(data["scores"][idx], data["labels"][idx], data["maps"][idx], data["masks"][idx])
    return ev.compute()


def values(res: dict[str, MetricValue]) -> dict[str, float]:
    return {k: v.value for k, v in res.items()}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8), st.randoms(use_true_random=False))
def test_any_batch_split_and_order_is_bit_identical(seed: int, n_batches: int, rnd) -> None:
    data = category(seed)
    n = len(data["labels"])
    whole = values(evaluate(data, [np.arange(n)]))
    order = np.array(rnd.sample(range(n), n))
    cuts = sorted(rnd.sample(range(1, n), min(n_batches, n) - 1))
    assert same(whole, values(evaluate(data, np.split(order, cuts))))


def test_streaming_equals_sklearn_on_all_pixels() -> None:
    data = category(7, decimals=1)
    res = evaluate(data, [np.arange(0, 3), np.arange(3, 8)])
    px, gt = data["maps"].ravel(), data["masks"].ravel()
    assert res["pixel_auroc"].value == pytest.approx(roc_auc_score(gt, px), abs=1e-6)
    assert res["pixel_ap"].value == pytest.approx(average_precision_score(gt, px), abs=1e-6)
    assert res["image_auroc"].value == pytest.approx(roc_auc_score(data["labels"], data["scores"]), abs=1e-6)
    assert res["pixel_aupro"].value == pytest.approx(aupro(data["maps"], data["masks"]), abs=1e-12)


@pytest.mark.parametrize("group_chunk", [1, 7, 1 << 18])
def test_small_blocks_and_chunks_give_the_same_result(group_chunk: int) -> None:
    from zsad_bench.metrics._pixel import PixelAccumulator

    data = category(3, n=12, size=16)
    ref = values(evaluate(data, [np.arange(12)]))
    ev = CategoryEvaluator((), ALL_PIXEL)
    ev._pixels = PixelAccumulator("exact", 8, block_size=37, group_chunk=group_chunk)  # many sorted blocks
    for i in range(12):
        ev.update(None, None, data["maps"][i : i + 1], data["masks"][i : i + 1])
    got = values(ev.compute())
    assert got == pytest.approx({k: ref[k] for k in got}, abs=1e-12)
    assert len(ev._pixels.negatives.blocks) > 10


def test_torch_backend_equals_numpy() -> None:
    torch = pytest.importorskip("torch")
    data = category(11)
    ref = values(evaluate(data, [np.arange(4), np.arange(4, 8)]))
    ev = CategoryEvaluator(ALL_IMAGE, ALL_PIXEL, backend="torch")
    for idx in (np.arange(4), np.arange(4, 8)):
        t = {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in data.items()}
        ev.update(t["scores"], t["labels"], t["maps"], t["masks"])
    assert ev.state_info()["backend"] == "torch:cpu"
    assert same(ref, values(ev.compute()))


@pytest.mark.gpu
def test_cuda_path_equals_numpy() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data = category(12)
    ref = values(evaluate(data, [np.arange(8)]))
    ev = CategoryEvaluator(ALL_IMAGE, ALL_PIXEL)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in data.items()}
    ev.update(t["scores"], t["labels"], t["maps"], t["masks"])
    assert ev.state_info()["backend"].startswith("torch:cuda")
    assert same(ref, values(ev.compute()))
    hist = CategoryEvaluator((), PIXEL_KEYS, mode="histogram")
    hist.update(None, None, t["maps"], t["masks"])
    for key, mv in hist.compute().items():
        assert abs(mv.value - ref[key]) <= mv.bound + 1e-12


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mixed_dtypes_across_batches(backend: str) -> None:
    if backend == "torch":
        pytest.importorskip("torch")
    data = category(5, decimals=None)
    maps64 = data["maps"].astype(np.float64) + 1e-9  # float64 detail below float32 resolution
    ev = CategoryEvaluator((), ("pixel_auroc", "pixel_aupro"), backend=backend)
    ev.update(None, None, data["maps"][:4], data["masks"][:4])
    ev.update(None, None, maps64[4:], data["masks"][4:])
    mixed = np.concatenate([data["maps"][:4].astype(np.float64), maps64[4:]])
    res = ev.compute()
    assert res["pixel_auroc"].value == pytest.approx(roc_auc_score(data["masks"].ravel(), mixed.ravel()), abs=1e-12)
    assert res["pixel_aupro"].value == pytest.approx(aupro(mixed, data["masks"]), abs=1e-12)
    assert ev.state_info()["score_dtypes"] == ["float32", "float64"]


# ----------------------------------------------------------------------------- histogram
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([10, 12, 16, 24]), st.sampled_from(["wide", "narrow", "tied"]))
def test_histogram_error_within_certified_bound(seed: int, bits: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    data = category(seed, n=6, size=12, decimals=None)
    if kind == "narrow":  # everything inside a few bins: adversarial within-bin orders
        data["maps"] = (1.0 + rng.integers(0, 600, data["maps"].shape) * 2.0**-23).astype(np.float32)
    elif kind == "tied":
        data["maps"] = np.round(data["maps"], 1)
    exact = values(evaluate(data, [np.arange(6)], image_metrics=(), pixel_metrics=PIXEL_KEYS))
    hist = evaluate(data, [np.arange(3), np.arange(3, 6)], image_metrics=(), pixel_metrics=PIXEL_KEYS,
                    mode="histogram", hist_bits=bits)  # fmt: skip
    for key, mv in hist.items():
        assert mv.bound is not None
        assert abs(mv.value - exact[key]) <= mv.bound + 1e-12, (key, mv.value, exact[key], mv.bound)


def test_histogram_is_exact_when_bins_hold_one_value_each() -> None:
    data = category(2, decimals=1)  # 0.1 steps: distinct values far apart at 24 bits
    exact = values(evaluate(data, [np.arange(8)], image_metrics=(), pixel_metrics=PIXEL_KEYS))
    hist = evaluate(data, [np.arange(8)], image_metrics=(), pixel_metrics=PIXEL_KEYS, mode="histogram")
    for key, mv in hist.items():
        assert mv.value == pytest.approx(exact[key], abs=1e-12)


def test_histogram_state_does_not_grow_with_pixels() -> None:
    rng = np.random.default_rng(0)
    ev = CategoryEvaluator((), PIXEL_KEYS, mode="histogram")
    masks = np.zeros((4, 64, 64), bool)
    masks[:, 10:20, 10:20] = True
    sizes = []
    for _ in range(6):
        ev.update(None, None, rng.uniform(0.25, 0.5, masks.shape).astype(np.float32), masks)
        sizes.append(ev.state_info()["state_bytes"])
    assert sizes[0] == sizes[-1] < 2 * 2**20  # one exponent page, 0.75 MB


def test_histogram_rejects_uncertified_variants() -> None:
    with pytest.raises(ValueError, match="histogram"):
        CategoryEvaluator(mode="histogram", ap="trapezoid")
    with pytest.raises(ValueError, match="histogram"):
        CategoryEvaluator(mode="histogram", aupro="cflow200")


# ----------------------------------------------------------------------------- undefined cases
def test_all_normal_category() -> None:
    data = category(1)
    normal = np.flatnonzero(data["labels"] == 0)
    res = evaluate(data, [normal])
    for key, mv in res.items():
        assert math.isnan(mv.value), key
        assert "no anomalous" in mv.reason


def test_all_anomalous_category() -> None:
    data = category(1)
    res = evaluate(data, [np.flatnonzero(data["labels"] == 1)])
    for key in ALL_IMAGE:
        assert math.isnan(res[key].value)
        assert "no normal images" in res[key].reason
    assert not math.isnan(res["pixel_aupro"].value)  # anomalous images still have normal pixels


def test_dataset_without_masks_or_labels() -> None:
    data = category(1)
    ev = CategoryEvaluator(has_masks=False, has_image_labels=False)
    ev.update(data["scores"], data["labels"], data["maps"], None)  # masks ignored when absent
    res = ev.compute()
    assert set(res) == set(METRIC_KEYS)
    assert all(math.isnan(v.value) for v in res.values())
    assert "no pixel-level ground truth" in res["pixel_auroc"].reason
    assert "no image-level labels" in res["image_auroc"].reason
    assert ev.state_info()["n_pixels"] == 0  # nothing stored


def test_empty_masks_give_nan_pixel_metrics() -> None:
    data = category(1)
    data["masks"][:] = False
    res = evaluate(data, [np.arange(8)])
    assert not math.isnan(res["image_auroc"].value)
    assert all(math.isnan(res[k].value) and "no anomalous pixels" in res[k].reason for k in ALL_PIXEL)


def test_nan_scores_are_reported_not_dropped() -> None:
    data = category(1)
    data["maps"][3, 0, :2] = np.nan
    data["scores"][5] = np.nan
    res = evaluate(data, [np.arange(3), np.arange(3, 8)])
    assert all(math.isnan(res[k].value) for k in res)
    assert "2 of 800 pixel scores are NaN (first in update 2)" in res["pixel_auroc"].reason
    assert "1 of 8 image scores are NaN" in res["image_auroc"].reason


def test_infinite_scores_ranked_or_reported() -> None:
    data = category(1)
    data["maps"][1, 0, 0] = np.inf
    data["maps"][2, 0, 0] = -np.inf
    ranked = evaluate(data, [np.arange(8)])
    assert all(not math.isnan(v.value) for k, v in ranked.items() if k != "pixel_aupro_cflow200")
    assert "infinite" in ranked["pixel_aupro_cflow200"].reason  # its thresholds span [min, max]
    strict = evaluate(data, [np.arange(8)], allow_inf=False)
    assert "±inf" in strict["pixel_aupro"].reason
    assert math.isnan(strict["pixel_aupro"].value)


def test_no_data_at_all() -> None:
    res = CategoryEvaluator().compute()
    assert all(math.isnan(v.value) and v.reason for v in res.values())


def test_missing_maps_are_reported() -> None:
    data = category(1)
    ev = CategoryEvaluator()
    ev.update(data["scores"], data["labels"])
    res = ev.compute()
    assert "came without an anomaly map" in res["pixel_auroc"].reason
    assert not math.isnan(res["image_auroc"].value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"pixel_metrics": ("pixel_iou",)}, KeyError),
        ({"image_metrics": ("pixel_auroc",)}, KeyError),
        ({"ap": "interpolated"}, ValueError),
        ({"aupro": "binned"}, ValueError),
        ({"mode": "approx"}, ValueError),
        ({"fpr_limit": 0.0}, ValueError),
        ({"connectivity": 6}, ValueError),
    ],
)
def test_bad_configuration_raises(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        CategoryEvaluator(**kwargs)


def test_bad_inputs_raise() -> None:
    data = category(1)
    ev = CategoryEvaluator()
    with pytest.raises(ValueError, match="masks=None"):
        ev.update(data["scores"], data["labels"], data["maps"], None)
    with pytest.raises(ValueError, match="binary"):
        ev.update(data["scores"], data["labels"], data["maps"], data["masks"] * 0.7)
    with pytest.raises(ValueError, match="same shape"):
        ev.update(data["scores"], data["labels"], data["maps"], data["masks"][:, :5])
    with pytest.raises(ValueError, match="labels must be 0"):
        ev.update(data["scores"], data["labels"] * 2, None, None)


# ----------------------------------------------------------------------------- definitions
def test_definitions_name_the_variant() -> None:
    ev = CategoryEvaluator(aupro="cflow200", ap="trapezoid", connectivity=4, fpr_limit=0.05)
    defs = ev.definitions()
    assert set(defs) == set(METRIC_KEYS)
    assert "cflow-200" in defs["pixel_aupro"]
    assert "4-connected" in defs["pixel_aupro"]
    assert "trapezoid" in defs["image_ap"]
    assert "trapezoid" in defs["pixel_ap"]
    assert "MVTec AD" in CategoryEvaluator().definitions()["pixel_aupro"]
    assert "0.3" in CategoryEvaluator().definitions()["pixel_aupro"]
    assert "histogram" in CategoryEvaluator(mode="histogram").definitions()["pixel_auroc"]
    res = ev.compute()
    assert all(res[k].definition == defs[k] for k in defs)


def test_more_than_2_24_pixels_counts_stay_exact() -> None:
    # float32 cumulative counts saturate at 2^24; every count here must stay exact.
    n_neg, n_hot, n_pos = 2**24 + 4096, 1000, 3000
    maps = np.zeros(n_neg + n_pos, np.float32)
    maps[:n_hot] = 1.0  # false positives above every anomalous pixel
    maps[n_neg:] = 0.5
    masks = np.zeros(maps.size, bool)
    masks[n_neg:] = True
    ev = CategoryEvaluator((), ("pixel_auroc", "pixel_ap", "pixel_f1max"))
    for part in np.array_split(np.arange(maps.size), 5):
        ev.update(None, None, maps[part].reshape(1, 1, -1), masks[part].reshape(1, 1, -1))
    res = ev.compute()
    assert res["pixel_auroc"].value == (n_neg - n_hot) / n_neg
    assert res["pixel_ap"].value == pytest.approx(n_pos / (n_pos + n_hot), abs=1e-15)
    assert res["pixel_f1max"].value == pytest.approx(2 * n_pos / (2 * n_pos + n_hot), abs=1e-15)


def test_metrics_without_regions_skip_labelling_and_agree() -> None:
    data = category(9)
    keys = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_ap_trapezoid")
    full = values(evaluate(data, [np.arange(8)]))
    ev = CategoryEvaluator((), keys)
    ev.update(None, None, data["maps"], data["masks"])
    assert same({k: full[k] for k in keys}, values(ev.compute()))
    assert ev.state_info()["n_regions"] == 0  # no region labelling was needed


def test_torch_backend_histogram_equals_numpy() -> None:
    torch = pytest.importorskip("torch")
    data = category(13, decimals=None)
    ref = evaluate(data, [np.arange(8)], image_metrics=(), pixel_metrics=PIXEL_KEYS, mode="histogram")
    ev = CategoryEvaluator((), PIXEL_KEYS, mode="histogram", backend="torch")
    ev.update(None, None, torch.from_numpy(data["maps"]).double(), torch.from_numpy(data["masks"]))
    got = ev.compute()
    for key in PIXEL_KEYS:
        assert got[key].value == pytest.approx(ref[key].value, abs=1e-12)
        assert got[key].bound == pytest.approx(ref[key].bound, abs=1e-12)
