"""AUPRO against a slow reference from the definition, the MVTec-style algorithm and the cflow loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsad_bench.metrics import aupro
from zsad_bench.metrics.regions import label_regions


@st.composite
def maps_and_masks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Small batches with random masks (single pixels, diagonal contacts) and often tied scores."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    b, h, w = rng.integers(1, 4), rng.integers(2, 10), rng.integers(2, 10)
    masks = rng.uniform(size=(b, h, w)) < draw(st.sampled_from([0.05, 0.2, 0.5]))
    on, off = rng.choice(h * w, 2, replace=False)
    masks[0].flat[on] = True  # at least one region
    masks[-1].flat[off] = False  # at least one normal pixel
    decimals = draw(st.sampled_from([0, 1, 3, None]))
    maps = rng.normal(size=(b, h, w)) + masks * rng.uniform(0, 2)
    maps = np.round(maps, decimals) if decimals is not None else maps
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return maps.astype(dtype), masks


@settings(max_examples=120, deadline=None)
@given(maps_and_masks(), st.sampled_from([0.3, 0.05, 1.0]), st.sampled_from([8, 4]))
def test_matches_slow_reference(refs, data, fpr_limit: float, connectivity: int) -> None:
    maps, masks = data
    expected = refs.slow_aupro(maps, masks, fpr_limit, connectivity)
    got = aupro(maps, masks, fpr_limit=fpr_limit, connectivity=connectivity)
    assert got == pytest.approx(expected, abs=1e-4)
    assert got == pytest.approx(expected, abs=1e-9)  # in fact exact to rounding


@settings(max_examples=60, deadline=None)
@given(maps_and_masks())
def test_matches_mvtec_style_to_1e8(bench, data) -> None:
    maps, masks = data
    assert aupro(maps, masks) == pytest.approx(bench.mvtec_aupro_straightforward(maps, masks), abs=1e-8)


@settings(max_examples=40, deadline=None)
@given(maps_and_masks())
def test_cflow200_matches_the_loop(bench, data) -> None:
    maps, masks = data
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = bench.cflow_aupro_loop(maps, masks, relabel=False)
        assert math.isnan(expected) or expected == bench.cflow_aupro_loop(maps, masks, relabel=True)
    got = aupro(maps, masks, variant="cflow200")
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-10)


def test_tie_segment_crossing_the_limit(refs) -> None:
    # All normal pixels share one score: the FPR jumps 0 -> 1 in one tie segment across 0.3.
    maps = np.full((2, 6, 6), 0.5, np.float32)
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1:3, 1:3] = True
    maps[0, 1:3, 1:3] = [[0.9, 0.5], [0.5, 0.2]]
    expected = refs.slow_aupro(maps, masks)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    # By hand: 1/4 of the region above every normal pixel, 2/4 tied with them (ramp 0->1 over
    # FPR [0, 1]), 1/4 below: PRO(x) = 0.25 + 0.5 x on [0, 1]; mean over [0, 0.3] = 0.25 + 0.075.
    assert aupro(maps, masks) == pytest.approx(0.325, abs=1e-12)


def test_perfect_and_inverted_maps() -> None:
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:5] = True
    masks[1, 6, 6] = True
    assert aupro(masks.astype(np.float32), masks) == 1.0
    assert aupro(-masks.astype(np.float32), masks) == 0.0


def test_diagonal_regions_merge_only_with_8_connectivity() -> None:
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = True  # touches the L-shaped region below only diagonally
    masks[0, 1, 1] = masks[0, 1, 2] = masks[0, 2, 1] = True
    assert label_regions(masks, 8)[1].tolist() == [4]
    assert sorted(label_regions(masks, 4)[1].tolist()) == [1, 3]
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0, 0] = 1.0  # only the corner pixel is found; the rest ties with every normal pixel
    # PRO(x) = p0 + (1 - p0) x on FPR [0, 1], p0 = 1/4 (one region) or 1/2 (two regions).
    assert aupro(maps, masks, fpr_limit=1.0, connectivity=8) == pytest.approx(0.25 + 0.75 / 2)
    assert aupro(maps, masks, fpr_limit=1.0, connectivity=4) == pytest.approx(0.5 + 0.5 / 2)


def test_regions_are_per_image() -> None:
    masks = np.ones((2, 2, 2), bool)  # touching across the batch axis must not merge
    assert label_regions(masks)[1].tolist() == [4, 4]


def test_region_weights_are_per_region_not_per_pixel() -> None:
    masks = np.zeros((1, 10, 10), bool)
    masks[0, :8, :8] = True  # a 64-pixel region, missed
    masks[0, 9, 9] = True  # a 1-pixel region, found
    maps = np.zeros((1, 10, 10), np.float32)
    maps[0, 9, 9] = 1.0
    # PRO is 0.5 from the first threshold on: every FPR point has PRO >= 0.5.
    assert aupro(maps, masks, fpr_limit=1.0) > 0.5


@pytest.mark.parametrize(
    ("maps", "masks"),
    [
        (np.zeros((1, 3, 3)), np.zeros((1, 3, 3), bool)),  # no region
        (np.zeros((1, 3, 3)), np.ones((1, 3, 3), bool)),  # no normal pixel
    ],
)
def test_undefined_cases_are_nan(maps: np.ndarray, masks: np.ndarray) -> None:
    assert math.isnan(aupro(maps, masks))


def test_constant_maps_cflow_is_nan_exact_is_defined() -> None:
    maps = np.ones((1, 4, 4), np.float32)
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, 0] = True
    assert math.isnan(aupro(maps, masks, variant="cflow200"))
    assert aupro(maps, masks) == pytest.approx(0.15)  # PRO ramps 0 -> 1 over FPR 0 -> 1


def test_unknown_variant_raises() -> None:
    with pytest.raises(ValueError, match="AUPRO variant"):
        aupro(np.zeros((1, 2, 2)), np.eye(2, dtype=bool)[None], variant="binned")


def test_infinite_scores_rank_as_extremes(refs) -> None:
    rng = np.random.default_rng(4)
    masks = rng.uniform(size=(3, 8, 8)) < 0.2
    finite = np.round(rng.normal(size=masks.shape) + masks, 1)
    maps = finite.copy()
    maps[finite >= 1.5] = np.inf  # ties at +inf between normal and anomalous pixels
    maps[finite <= -1.5] = -np.inf
    stand_in = np.where(np.isposinf(maps), 99.0, np.where(np.isneginf(maps), -99.0, maps))
    assert aupro(maps, masks) == pytest.approx(refs.slow_aupro(stand_in, masks), abs=1e-12)


def test_float64_detail_and_extreme_ranges(refs) -> None:
    rng = np.random.default_rng(5)
    masks = rng.uniform(size=(2, 8, 8)) < 0.3
    tiny = 1.0 + (rng.permutation(128).reshape(2, 8, 8) + 200 * masks) * 1e-13  # one float32 value
    assert aupro(tiny, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(tiny.astype(np.float32), masks) == pytest.approx(0.15)  # all tied in float32
    spread = 10.0 ** rng.uniform(-100, 100, size=masks.shape)  # scores spanning 1e-100 .. 1e100
    assert aupro(spread, masks) == pytest.approx(refs.slow_aupro(spread, masks), abs=1e-12)
