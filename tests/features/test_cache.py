"""FeatureSpec fingerprints and the feature cache in one process (tiny CLIP, random weights)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from zsad_bench.commands.cache import main as cache_main
from zsad_bench.context import Context
from zsad_bench.features import FeatureCache, FeatureSpec, get_features, image_identity
from zsad_bench.types import Batch, SampleRecord


@pytest.fixture(scope="module")
def ctx_factory():
    from zsad_bench.backbones import build_backbone

    bb = build_backbone({"name": "tiny_clip", "seed": 5})

    def make(cache):
        ctx = Context(backbone_cfg={"name": "tiny_clip", "seed": 5}, cache=cache)
        ctx._backbone = bb
        return ctx

    return make


@pytest.fixture
def batch(tmp_path):
    records = []
    for i in range(4):
        path = tmp_path / "imgs" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"png" * (i + 1))
        records.append(SampleRecord(path, i % 2, None, "bottle", "good", "test", "fake"))
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return Batch(images, records, ["bottle"] * 4)


def _spec(ctx, **kw):
    return FeatureSpec.create(ctx.backbone, "tokens", layers=(6, 24), norm=True, **kw)


def test_spec_fingerprint_changes_with_every_field(ctx_factory):
    spec = _spec(ctx_factory(None))
    assert spec.fingerprint == _spec(ctx_factory(None)).fingerprint
    assert len(spec.fingerprint) == 32
    variants = [
        replace(spec, weights="sha256:other"),
        replace(spec, model=spec.model.replace("gelu", "quick_gelu")),
        replace(spec, preprocessing="squash-bilinear-224"),
        replace(spec, input_size=240),
        replace(spec, layers=(6,)),
        replace(spec, variant="vv"),
        replace(spec, options=(("norm", False),)),
        replace(spec, dtype="fp32"),
    ]
    assert len({spec.fingerprint, *(v.fingerprint for v in variants)}) == len(variants) + 1


def test_spec_does_not_load_the_network():
    from zsad_bench.backbones import build_backbone

    bb = build_backbone({"name": "tiny_clip"})
    spec = FeatureSpec.create(bb, "vv", layers=[24], first_block=6, proj=True)
    assert bb._model is None
    assert spec.option("first_block") == 6
    assert spec.layers == (24,)
    with pytest.raises(ValueError, match="dtype"):
        FeatureSpec.create(bb, dtype="int8")


def test_second_run_hits_the_cache_and_returns_identical_values(tmp_path, ctx_factory, batch):
    cache = FeatureCache(tmp_path / "cache")
    ctx = ctx_factory(cache)
    spec = _spec(ctx)
    calls = ctx.backbone.forward_calls
    first = get_features(ctx, batch, spec)
    assert ctx.backbone.forward_calls == calls + 1
    again = get_features(ctx_factory(FeatureCache(tmp_path / "cache")), batch, spec)
    assert ctx.backbone.forward_calls == calls + 1  # no encoder call the second time
    assert set(first) == {"tokens.6", "tokens.24", "embed"}
    assert all(torch.equal(first[k], again[k]) for k in first)
    direct = get_features(ctx_factory(None), batch, spec)
    assert ctx.backbone.forward_calls == calls + 2  # no cache: computed
    torch.testing.assert_close(first["tokens.24"], direct["tokens.24"], rtol=2e-3, atol=2e-3)  # fp16 storage
    assert torch.equal(first["tokens.24"], direct["tokens.24"].half().float())
    assert cache.stats["hits"] == 0
    assert cache.stats["misses"] == 4
    assert cache.stats["writes"] == 4


def test_only_missing_images_are_computed(tmp_path, ctx_factory, batch):
    ctx = ctx_factory(FeatureCache(tmp_path / "cache"))
    spec = _spec(ctx)
    sizes = []

    def compute(bb, images, s):
        sizes.append(images.shape[0])
        return {"embed": bb.encode_image(images)}

    sub = Batch(batch.images[:2], batch.records[:2], batch.class_names[:2])
    get_features(ctx, sub, spec, compute=compute)
    out = get_features(ctx, batch, spec, compute=compute)
    assert sizes == [2, 2]
    assert out["embed"].shape == (4, 64)
    get_features(ctx, batch, spec, compute=compute, use_cache=False)
    assert sizes == [2, 2, 4]


def _entry(cache, spec, record):
    return cache.entry_path(spec, image_identity(record))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupt_entries_are_detected_reported_and_recomputed(tmp_path, ctx_factory, batch, damage, caplog):
    cache = FeatureCache(tmp_path / "cache")
    ctx = ctx_factory(cache)
    spec = _spec(ctx)
    first = get_features(ctx, batch, spec)
    path = _entry(cache, spec, batch.records[2])
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-10] ^= 0xFF
    path.write_bytes(bytes(data[: len(data) // 2] if damage == "truncate" else data if damage == "flip" else b""))
    calls = ctx.backbone.forward_calls
    again = get_features(ctx, batch, spec)
    assert ctx.backbone.forward_calls == calls + 1
    assert cache.stats["corrupt"] == 1
    assert "corrupt feature cache entry" in caplog.text
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert cache.verify().corrupt == []


def test_entries_from_other_pixels_are_recomputed(tmp_path, ctx_factory, batch):
    cache = FeatureCache(tmp_path / "cache")
    ctx = ctx_factory(cache)
    spec = _spec(ctx)
    get_features(ctx, batch, spec)
    other = Batch(batch.images.flip(-1), batch.records, batch.class_names)  # e.g. another preprocessing
    calls = ctx.backbone.forward_calls
    flipped = get_features(ctx, other, spec)
    assert ctx.backbone.forward_calls == calls + 1
    assert cache.stats["stale"] == 4
    direct = get_features(ctx_factory(None), other, spec)
    assert torch.equal(flipped["embed"], direct["embed"].half().float())


def test_lookup_reads_features_without_pixels(tmp_path, ctx_factory, batch):
    cache = FeatureCache(tmp_path / "cache")
    ctx = ctx_factory(cache)
    spec = _spec(ctx)
    assert cache.lookup(spec, batch.records) is None
    stored = get_features(ctx, batch, spec)
    got = cache.lookup(spec, batch.records)
    assert got is not None
    assert all(torch.equal(stored[k], got[k]) for k in stored)
    batch.records[0].image_path.write_bytes(b"changed file")  # new size → new identity → miss
    assert cache.lookup(spec, batch.records) is None


def test_put_get_dtype_and_size_limit_evicts_least_recently_used(tmp_path):
    spec = FeatureSpec("fake", "w", "{}", "p", 8)
    cache = FeatureCache(tmp_path, dtype="fp32")
    feats = {"x": torch.randn(100, 100)}
    assert torch.equal(cache.put(spec, "a", feats)["x"], feats["x"])
    assert torch.equal(cache.get(spec, "a")["x"], feats["x"])
    size = cache.entry_path(spec, "a").stat().st_size
    small = FeatureCache(tmp_path, max_bytes=int(size * 3.5), dtype="fp32")
    for i, name in enumerate("bc"):
        small.put(spec, name, feats)
        t = 1_000_000 + i
        os.utime(small.entry_path(spec, name), (t, t))  # b, c older than a
    small.get(spec, "b")  # touched: now the most recently used
    small.put(spec, "d", feats)  # 4 entries > 3.5 → evict the least recently used down to 90 %
    left = {n for n in "abcd" if small.entry_path(spec, n).exists()}
    assert left == {"a", "b", "d"}
    assert small.stats["evicted"] == 1


def test_info_clear_verify_and_the_cache_command(tmp_path, capsys):
    spec = FeatureSpec("fake", "w", "{}", "p", 8)
    cache = FeatureCache(tmp_path)
    for name in "abc":
        cache.put(spec, name, {"x": torch.ones(10)})
    info = cache.info()
    assert info.entries == 3
    assert info.specs[0]["fingerprint"] == cache.effective(spec).fingerprint
    assert "fake[w]/tokens" in info.specs[0]["label"]
    cache.entry_path(spec, "b").write_bytes(b"garbage")
    assert cache_main(["verify", "--root", str(tmp_path)]) == 1
    assert cache_main(["verify", "--root", str(tmp_path)]) == 0
    assert cache_main(["info", "--root", str(tmp_path)]) == 0
    assert cache_main(["clear", "--root", str(tmp_path)]) == 0
    assert FeatureCache(tmp_path).info().entries == 0
    out = capsys.readouterr().out
    assert "corrupt (removed)" in out
    assert "removed 2 entries" in out
