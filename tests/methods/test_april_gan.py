"""APRIL-GAN on the tiny random CLIP: recipe, prompts, maps, training through the cache, checkpoints, few-shot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from zsad_bench.build import build_method
from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.train import train_or_load
from zsad_bench.types import Batch, SampleRecord

SIZE = 112  # tiny_clip (patch 16) at 112: a 7x7 grid


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=["method=april_gan", *overrides])


def make(cache: Path | None = None, **method):
    cfg = compose("backbone=tiny_clip", f"backbone.input_size={SIZE}")
    m = build_method(OmegaConf.merge(cfg.method, method))
    bb_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    m.setup(Context(device="cpu", seed=0, backbone_cfg=bb_cfg, cache=FeatureCache(cache) if cache else None))
    return m


def fake_batch(n: int = 2, category: str = "pipe_fryum", seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    recs = [SampleRecord(Path(f"img{i}.png"), i % 2, None, category, "good", "test", "fake") for i in range(n)]
    return Batch(torch.randn(n, 3, SIZE, SIZE, generator=g), recs, ["pipe fryum"] * n)


@pytest.fixture(scope="module")
def shared():
    """One set-up method for the read-only tests (the text encoding of 420 sentences is paid once)."""
    return make()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from zsad_bench.synth import AUX_CATEGORIES, TEST_CATEGORIES, SynthSpec, ensure_synth

    root = tmp_path_factory.mktemp("data")
    ensure_synth(root / "synth", SynthSpec(TEST_CATEGORIES, seed=0))
    ensure_synth(root / "synth_aux", SynthSpec(AUX_CATEGORIES, seed=1))
    return root


def test_defaults_follow_the_official_code():
    cfg = compose()
    assert cfg.backbone.name == "clip_vit_l14_336"
    assert cfg.backbone.activation == "gelu"  # what VAND-APRIL-GAN really ran (factory config without quick_gelu)
    assert cfg.backbone.input_size == 518
    assert list(cfg.method.layers) == [6, 12, 18, 24]
    method = build_method(cfg.method)
    r = method.train_recipe(["mvtec_ad"])
    assert (r.epochs, r.batch_size, r.lr, r.optimizer, r.betas, r.seed) == (3, 8, 1e-3, "adam", (0.5, 0.999), 111)
    assert method.train_recipe(["visa"]).epochs == 15
    assert build_method(OmegaConf.merge(cfg.method, {"epochs": 2})).train_recipe(["visa"]).epochs == 2
    assert compose("backbone.activation=quick_gelu").backbone.activation == "quick_gelu"


def test_prompt_ensemble_uses_folder_names_and_normalised_sentences(shared, monkeypatch):
    m = shared
    m._text.clear()
    seen = []
    original = m.ctx.backbone.encode_prompt_ensemble

    def spy(groups, normalize_each=True):
        seen.append((groups, normalize_each))
        return original(groups, normalize_each=normalize_each)

    monkeypatch.setattr(m.ctx.backbone, "encode_prompt_ensemble", spy)
    text = m._text_for(fake_batch())
    assert text.shape == (2, 2, m.ctx.backbone.embed_dim)
    (normal, anomalous), each = seen[0]
    assert each is True
    assert (len(normal), len(anomalous)) == (7 * 35, 5 * 35)
    assert normal[0] == "a bad photo of a pipe_fryum."  # the category folder name, verbatim
    assert "a bad photo of a broken pipe_fryum." in anomalous
    assert torch.allclose(text.norm(dim=-1), torch.ones(2, 2))
    m.cfg.class_names = "prompt"
    try:
        m._text_for(fake_batch())
    finally:
        m.cfg.class_names = "folder"
    assert seen[1][0][0][0] == "a bad photo of a pipe fryum."  # the dataset's prompt words


def test_maps_and_scores_follow_the_reference_formulas(shared):
    m = shared
    bb = m.ctx.backbone
    batch = fake_batch()
    pred = m.predict(batch)
    toks = bb.image_tokens(batch.images, [6, 12, 18, 24])
    text = m._text_for(batch)  # (B, 2, E)
    expected = 0
    for layer in (6, 12, 18, 24):
        lin = m.proj[str(layer)]
        mapped = F.normalize(lin(toks.layers[layer][:, 1:]), dim=-1)  # CLS dropped, then projected
        logits = 100 * mapped @ text.transpose(1, 2)  # (B, N, 2)
        grid = logits.transpose(1, 2).reshape(2, 2, 7, 7)
        up = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=True)
        expected = expected + up.softmax(dim=1)[:, 1]
    torch.testing.assert_close(pred.anomaly_maps, expected.detach(), rtol=1e-5, atol=1e-5)
    assert float(pred.anomaly_maps.max()) <= 4.0  # a sum of four probabilities
    embed = F.normalize(toks.embed, dim=-1)
    score = (100 * (embed[:, None] @ text.transpose(1, 2))[:, 0]).softmax(-1)[:, 1]
    torch.testing.assert_close(pred.image_scores, score, rtol=1e-5, atol=1e-6)
    m.cfg.layer_fusion = "mean"
    try:
        mean = m.predict(batch)
    finally:
        m.cfg.layer_fusion = "sum"
    torch.testing.assert_close(mean.anomaly_maps, pred.anomaly_maps / 4, rtol=1e-6, atol=1e-6)


def test_few_shot_memory_of_the_query_itself_adds_nothing(shared):
    m = shared
    batch = fake_batch(seed=5)
    zero = m.predict(batch)
    m.set_references(batch)  # every query patch is in the memory: min (1 - cos) = 0
    few = m.predict(batch)
    torch.testing.assert_close(few.anomaly_maps, zero.anomaly_maps, rtol=0, atol=1e-5)
    expected = 0.5 * (zero.image_scores + zero.anomaly_maps.flatten(1).amax(1) / 4)
    torch.testing.assert_close(few.image_scores, expected, rtol=1e-5, atol=1e-5)
    other = fake_batch(seed=6)
    m.set_references(other)
    assert bool((m.predict(batch).anomaly_maps > zero.anomaly_maps + 1e-3).any())
    m._memory = None


def test_training_through_the_cache_lowers_the_loss_and_round_trips(data_root, tmp_path):
    """Epochs after the first read the features from the cache: the encoder runs in epoch 1 only."""
    base = compose(
        "backbone=tiny_clip",
        f"backbone.input_size={SIZE}",
        "dataset=synth",
        f"paths.data_root={data_root}",
        f"paths.results_root={tmp_path / 'results'}",
        f"paths.weights_root={tmp_path / 'weights'}",
        "train.epochs=3",
        "train.max_per_category=4",
        "train.progress=false",
        "train.lr=0.01",
        "method.templates=clip_templates",
    )
    m = make(cache=tmp_path / "cache", templates="clip_templates")  # 1 template: 12 sentences per class
    record = train_or_load(m, base, m.ctx)
    assert record.status == "trained"
    assert record.tag == "april_gan.synth_aux"
    assert record.losses[-1] < record.losses[0]
    steps_per_epoch = 2  # 4 categories x 4 images, batch 8
    assert record.steps == 3 * steps_per_epoch
    assert m.ctx.backbone.forward_calls == steps_per_epoch  # epochs 2 and 3: cache hits only
    assert m.ctx.cache.stats["hits"] == 2 * 16

    batch = fake_batch(seed=9)
    trained = m.predict(batch)
    again = make(cache=tmp_path / "cache", templates="clip_templates")
    loaded = train_or_load(again, base, again.ctx)
    assert loaded.status == "loaded"
    assert torch.equal(again.predict(batch).anomaly_maps, trained.anomaly_maps)
