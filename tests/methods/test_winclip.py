"""WinCLIP's own properties on the tiny random CLIP (6×6 patch grid at 96 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zsad_bench.backbones.clip_ops import make_windows
from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.methods.winclip import (
    WinCLIP,
    WinCLIPConfig,
    _settings,
    few_shot_map,
    harmonic_over_windows,
    mean_over_windows,
    window_cover,
    window_embeddings_loop,
    zero_shot_scores,
)
from zsad_bench.prompts import WINCLIP_TEMPLATES_CAOYUNKANG
from zsad_bench.types import Batch, SampleRecord

SIZE, GRID = 96, 6


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", seed=0, backbone_cfg={"name": "tiny_clip", "weights": "random", "input_size": SIZE})


def batch(n=2, seed=0, category="bottle"):
    images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    recs = [SampleRecord(Path(f"i{seed}_{i}.png"), 0, None, category, "good", "test", "fake") for i in range(n)]
    return Batch(images, recs, [category] * n)


def method(ctx, **kw):
    m = WinCLIP(WinCLIPConfig(**kw))
    m.setup(ctx)
    return m


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("scale", [2, 3])
def test_vectorised_windows_equal_a_per_window_loop(ctx, scale):
    bb, images = ctx.backbone, batch(3).images
    windows = make_windows(bb.grid_size, scale)
    fast = bb.window_embeddings(images, windows, chunk_size=7)  # chunks that split images apart
    slow = window_embeddings_loop(bb, images, windows)
    assert fast.shape == slow.shape == (3, (GRID - scale + 1) ** 2, bb.embed_dim)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


def test_vectorised_and_looped_methods_give_identical_maps(ctx):
    b = batch(2, seed=3)
    fast, slow = method(ctx).predict(b), method(ctx, vectorised=False).predict(b)
    torch.testing.assert_close(fast.anomaly_maps, slow.anomaly_maps, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.image_scores, slow.image_scores, rtol=0, atol=1e-5)


def test_window_indices_are_the_intended_square_of_patches():
    for scale, stride in [(2, 1), (3, 1), (3, 2)]:
        windows = make_windows(GRID, scale, stride)
        tops = [(r, c) for r in range(0, GRID - scale + 1, stride) for c in range(0, GRID - scale + 1, stride)]
        assert len(windows) == len(tops)
        for idx, (r, c) in zip(windows.tolist(), tops, strict=True):
            assert idx == [(r + i) * GRID + c + j for i in range(scale) for j in range(scale)]


@pytest.mark.parametrize("scale", [2, 3])
def test_a_window_sees_exactly_its_patches(ctx, scale):
    """Changing the pixels of one patch changes exactly the embeddings of the windows that contain it."""
    bb = ctx.backbone
    windows = make_windows(bb.grid_size, scale)
    images = batch(1, seed=5).images
    before = bb.window_embeddings(images, windows)[0]  # (W, E)
    p = bb.patch_size
    for row, col in [(0, 0), (2, 3), (GRID - 1, GRID - 2)]:
        changed = images.clone()
        changed[..., row * p : (row + 1) * p, col * p : (col + 1) * p] += 3.0
        after = bb.window_embeddings(changed, windows)[0]
        moved = {int(w) for w in torch.nonzero((after - before).abs().amax(dim=1) > 0).flatten()}
        expected = {w for w, idx in enumerate(windows.tolist()) if row * GRID + col in idx}
        assert moved == expected, (row, col)


# ----------------------------------------------------------------------------- aggregation
def naive_harmonic(scores, windows, n):
    """anomalib utils.harmonic_aggregation, spelled out: per patch n / Σ 1/s over covering windows."""
    out = torch.zeros(scores.shape[0], n)
    for patch in range(n):
        cov = [w for w, idx in enumerate(windows.tolist()) if patch in idx]
        if cov:
            out[:, patch] = len(cov) / (1 / scores[:, cov]).sum(dim=1)
    return torch.nan_to_num(out, posinf=0.0)


@pytest.mark.parametrize(("scale", "stride"), [(2, 1), (3, 1), (2, 2), (3, 2)])
def test_harmonic_and_mean_aggregation_match_a_per_patch_loop(scale, stride):
    windows = make_windows(5, scale, stride)
    scores = torch.rand(3, len(windows), generator=torch.Generator().manual_seed(scale)) + 0.05
    scores[0, 0] = 0.0  # a zero score makes the patches it covers 0 (anomalib's 1/0 → inf → n/inf)
    cover = window_cover(windows, 25)
    torch.testing.assert_close(harmonic_over_windows(scores, cover), naive_harmonic(scores, windows, 25))
    mean = mean_over_windows(scores, cover)
    for patch in (0, 12, 24):
        cov = [w for w, idx in enumerate(windows.tolist()) if patch in idx]
        expected = scores[:, cov].mean(dim=1) if cov else torch.zeros(3)
        torch.testing.assert_close(mean[:, patch], expected)


def fake_feats(seed, b=2, e=8):
    g = torch.Generator().manual_seed(seed)
    windows = [make_windows(4, 2), make_windows(4, 3)]
    feats = {
        "embed": torch.randn(b, e, generator=g),
        "windows": [torch.randn(b, len(w), e, generator=g) for w in windows],
    }
    feats["patches"] = torch.randn(b, 16, 5, generator=g)
    text = torch.randn(b, 2, e, generator=g)
    return feats, text, windows


def test_zero_shot_anomalib_is_the_harmonic_mean_of_image_and_scale_maps():
    feats, text, windows = fake_feats(0)
    s = _settings(WinCLIPConfig())
    image, maps = zero_shot_scores(feats, text, [window_cover(w, 16) for w in windows], (4, 4), s)

    def prob(x):  # softmax(cos / 0.07)[anomalous]
        cos = torch.nn.functional.cosine_similarity(x[..., None, :], text[:, None], dim=-1)
        return (cos / 0.07).softmax(-1)[..., 1]

    assert torch.allclose(image, prob(feats["embed"][:, None])[:, 0], atol=1e-6)
    per_scale = [naive_harmonic(prob(w), idx, 16) for w, idx in zip(feats["windows"], windows, strict=True)]
    layers = [image[:, None].expand(-1, 16), *per_scale]
    expected = 3 / sum(1 / m for m in layers)
    torch.testing.assert_close(maps.reshape(2, 16), expected)


def test_zero_shot_caoyunkang_is_one_minus_harmonic_normal_probability():
    feats, text, windows = fake_feats(1)
    s = _settings(WinCLIPConfig(variant="caoyunkang"))
    _, maps = zero_shot_scores(feats, text, [window_cover(w, 16) for w in windows], (4, 4), s)
    per_scale = []
    for w, idx in zip(feats["windows"], windows, strict=True):
        cos = torch.nn.functional.cosine_similarity(w[..., None, :], text[:, None], dim=-1)
        p_normal = (100 * cos).softmax(-1)[..., 0]
        per_scale.append(1 / naive_harmonic(p_normal, idx, 16))  # mean over covering windows of 1/p_normal
    torch.testing.assert_close(maps.reshape(2, 16), 1 - 1 / (sum(per_scale) / 2))


# ----------------------------------------------------------------------------- few-shot
@pytest.mark.parametrize("mode", ["anomalib", "caoyunkang"])
def test_the_query_as_its_own_reference_gives_a_near_zero_few_shot_map(ctx, mode):
    m = method(ctx, few_shot=mode)
    b = batch(2, seed=7)
    feats = m.features(b, patches=True)
    memory = {"patches": feats["patches"].reshape(-1, feats["patches"].shape[-1])}
    memory["windows"] = [w.reshape(-1, w.shape[-1]) for w in feats["windows"]]
    fs = few_shot_map(feats, memory, m.covers, ctx.backbone.grid_size, mode)
    assert fs.shape == (2, GRID, GRID)
    assert fs.abs().max() < 1e-5
    other = m.features(batch(2, seed=8), patches=True)  # other images are not near zero
    assert few_shot_map(other, memory, m.covers, ctx.backbone.grid_size, mode).amax() > 1e-3


def test_winclip_plus_fuses_as_anomalib(ctx):
    m = method(ctx)
    b = batch(2, seed=7)
    zero = m.predict(b)
    m.set_references(b)  # the queries themselves: the few-shot map is 0
    plus = m.predict(b)
    torch.testing.assert_close(plus.anomaly_maps, zero.anomaly_maps / 2, rtol=0, atol=1e-5)
    torch.testing.assert_close(plus.image_scores, zero.image_scores / 2, rtol=0, atol=1e-5)
    other = batch(1, seed=9, category="cable")  # categories without references stay zero-shot
    torch.testing.assert_close(m.predict(other).anomaly_maps, method(ctx).predict(other).anomaly_maps)


def test_caoyunkang_fusion_and_max_image_score(ctx):
    m = method(ctx, variant="caoyunkang")
    b = batch(2, seed=7)
    zero = m.predict(b)
    torch.testing.assert_close(zero.image_scores, zero.anomaly_maps.flatten(1).amax(dim=1))
    m.set_references(b)
    plus = m.predict(b)  # 1 / (1/t + 1/0) = 0
    assert plus.anomaly_maps.abs().max() < 1e-5


# ----------------------------------------------------------------------------- text, switches, cache
def test_text_is_the_mean_of_raw_sentence_embeddings(ctx):
    m = method(ctx)
    bb = ctx.backbone
    from zsad_bench.prompts import WINCLIP_ANOMALOUS_STATES, WINCLIP_NORMAL_STATES, WINCLIP_TEMPLATES_ANOMALIB, compose

    normal = compose(WINCLIP_TEMPLATES_ANOMALIB, WINCLIP_NORMAL_STATES, "bottle")
    anomalous = compose(WINCLIP_TEMPLATES_ANOMALIB, WINCLIP_ANOMALOUS_STATES, "bottle")
    expected = torch.stack([bb.encode_text(normal).mean(0), bb.encode_text(anomalous).mean(0)])
    expected = torch.nn.functional.normalize(expected, dim=-1)
    torch.testing.assert_close(m.text_embeddings("bottle"), expected, rtol=0, atol=1e-5)


def test_variant_presets_and_overrides():
    s = _settings(WinCLIPConfig(variant="caoyunkang"))
    assert s.templates == WINCLIP_TEMPLATES_CAOYUNKANG
    assert (s.logit_scale, s.aggregation, s.image_score, s.few_shot) == (
        100.0,
        "normal_harmonic",
        "max_map",
        "caoyunkang",
    )
    mixed = _settings(WinCLIPConfig(variant="caoyunkang", image_score="global", logit_scale=50.0))
    assert (mixed.image_score, mixed.logit_scale, mixed.aggregation) == ("global", 50.0, "normal_harmonic")
    assert _settings(WinCLIPConfig()).logit_scale == pytest.approx(1 / 0.07)
    with pytest.raises(ValueError, match="variant"):
        WinCLIP(WinCLIPConfig(variant="zqhang"))
    with pytest.raises(ValueError, match="aggregation"):
        WinCLIP(WinCLIPConfig(aggregation="mean"))
    with pytest.raises(KeyError, match="winclip_templates_anomalib"):
        WinCLIP(WinCLIPConfig(templates="winclip"))


def test_window_embeddings_go_through_the_feature_cache(ctx, tmp_path):
    ctx_cached = Context(device="cpu", seed=0, backbone_cfg=dict(ctx.backbone_cfg), cache=FeatureCache(tmp_path))
    m = method(ctx_cached)
    b = batch(2, seed=11)
    cold = m.predict(b)
    calls = ctx_cached.backbone.forward_calls
    warm = m.predict(b)
    assert ctx_cached.backbone.forward_calls == calls  # no encoder forward on a warm cache
    assert ctx_cached.cache.stats["hits"] == 2
    torch.testing.assert_close(warm.anomaly_maps, cold.anomaly_maps, rtol=0, atol=0)
    uncached = method(ctx).predict(b)  # fp16 storage rounds the embeddings a little
    torch.testing.assert_close(warm.anomaly_maps, uncached.anomaly_maps, rtol=0, atol=2e-2)
