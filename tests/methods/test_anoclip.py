"""AnoCLIP and AnoCLIP+ properties on tiny random CLIPs (64 px, 4×4 patch grid)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.context import Context
from zsad_bench.methods.anoclip import (
    ANOCLIP_PAPER_DOMAINS,
    AnoCLIP,
    AnoCLIPConfig,
    AnoCLIPTTA,
    AnoCLIPTTAConfig,
    adapt_tokens,
    anoclip_sentences,
    augment_views,
    tta_loss,
    tta_settings,
)
from zsad_bench.prompts import ANOCLIP_OBJECT_DOMAINS, ANOCLIP_TEXTURE_DOMAINS
from zsad_bench.types import Batch, SampleRecord

SIZE = 64
DATA = Path(__file__).resolve().parents[1] / "data"
FAST = {"domain_phrases": ["photo"], "image_score": "global"}  # 154 sentences per class, one forward per batch


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", seed=0, backbone_cfg={"name": "tiny_clip", "weights": "random", "input_size": SIZE})


@pytest.fixture(scope="module")
def two_layer_ctx():
    """A 2-block CLIP (tests/data/tiny-clip-2l.json) through the generic ``clip`` backbone."""
    import open_clip

    if "tiny-clip-2l" not in open_clip.list_models():
        open_clip.add_model_config(DATA / "tiny-clip-2l.json")
    cfg = {"name": "clip", "arch": "tiny-clip-2l", "weights": "random", "input_size": SIZE, "seed": 5}
    return Context(device="cpu", seed=0, backbone_cfg=cfg)


def batch(n=2, seed=0, category="bottle", size=SIZE):
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    recs = [SampleRecord(Path(f"s{seed}_{i}.png"), 0, None, category, "good", "test", "fake") for i in range(n)]
    return Batch(images, recs, [category.replace("_", " ")] * n)


TEXT: dict[int, dict] = {}  # backbone id → text memo shared by the methods of a test module (speed only)


def built(cls, cfg, ctx):
    m = cls(cfg)
    m.setup(ctx)
    m._text = TEXT.setdefault(id(ctx.backbone), {})  # text depends only on the backbone and the sentences
    return m


def anoclip(ctx, **kw):
    return built(AnoCLIP, AnoCLIPConfig(**{"cache": False, **kw}), ctx)


def tta(ctx, **kw):
    return built(AnoCLIPTTA, AnoCLIPTTAConfig(**{"cache": False, **FAST, **kw}), ctx)


# ----------------------------------------------------------------------------- the V-V path, by hand
def hand_vv_patches(model, images):
    """V-V dual path over all blocks written out per head from the raw weights; ln_post(patches) @ proj."""
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)  # (B, N, D)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    vv = x
    for block in v.transformer.resblocks:
        attn = block.attn
        d, h = x.shape[-1], attn.num_heads
        y = block.ln_1(x)
        q, k, val = (y @ w.T + b for w, b in zip(attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3), strict=True))
        outs_ori, outs_vv = [], []
        for head in range(h):
            sl = slice(head * d // h, (head + 1) * d // h)
            qh, kh, vh = q[..., sl], k[..., sl], val[..., sl]  # (B, L, hd)
            scale = 1 / math.sqrt(d // h)
            outs_ori.append(torch.softmax(qh @ kh.transpose(1, 2) * scale, dim=-1) @ vh)
            outs_vv.append(torch.softmax(vh @ vh.transpose(1, 2) * scale, dim=-1) @ vh)
        out = attn.out_proj
        vv = vv + torch.cat(outs_vv, dim=-1) @ out.weight.T + out.bias  # V-V stream: no MLP (paper Eq. 7)
        x = x + torch.cat(outs_ori, dim=-1) @ out.weight.T + out.bias
        x = x + block.mlp(block.ln_2(x))
    return v.ln_post(vv[:, 1:]) @ v.proj  # (B, N, E)


def test_vv_patch_tokens_equal_hand_written_vv_attention(two_layer_ctx):
    b = batch(2, seed=4)
    m = anoclip(two_layer_ctx, **FAST)
    with torch.no_grad():
        expected = hand_vv_patches(two_layer_ctx.backbone.model, b.images)
    got = m.patch_tokens(b)
    assert got.shape == (2, (SIZE // 16) ** 2, two_layer_ctx.backbone.embed_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    vanilla = two_layer_ctx.backbone.image_tokens(b.images, [-1], norm=True, proj=True).patches(-1)
    assert (got - vanilla).abs().max() > 1e-3  # the V-V stream is not the ordinary one


def test_map_and_score_equal_a_hand_computation(two_layer_ctx):
    b = batch(2, seed=5)
    m = anoclip(two_layer_ctx, **FAST)
    pred = m.predict(b)
    bb = two_layer_ctx.backbone
    normal, anomalous = anoclip_sentences("bottle", ["photo"])
    raw = bb.encode_text(normal + anomalous)
    t = F.normalize(torch.stack([raw[: len(normal)].mean(0), raw[len(normal) :].mean(0)]), dim=-1)  # (2, E)
    with torch.no_grad():
        p = F.normalize(hand_vv_patches(bb.model, b.images), dim=-1) @ t.T  # raw cosine (B, N, 2)
    prob = (p[..., 1].exp() / p.exp().sum(-1)).reshape(2, 4, 4)
    padded = torch.cat([prob[:, :1], prob, prob[:, -1:]], dim=1)
    padded = torch.cat([padded[:, :, :1], padded, padded[:, :, -1:]], dim=2)  # replicate padding (B, 6, 6)
    smooth = sum(padded[:, i : i + 4, j : j + 4] for i in range(3) for j in range(3)) / 9
    expected = F.interpolate(smooth[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(pred.anomaly_maps, expected, rtol=0, atol=1e-5)
    g = F.normalize(bb.encode_image(b.images), dim=-1) @ t.T
    torch.testing.assert_close(pred.image_scores, g.softmax(-1)[:, 1], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- prompts and switches
def test_domain_switch_changes_the_phrases():
    code, paper = AnoCLIP(AnoCLIPConfig()), AnoCLIP(AnoCLIPConfig(domains="paper"))
    assert code.domains("carpet") == ANOCLIP_TEXTURE_DOMAINS
    assert code.domains("bottle") == ANOCLIP_OBJECT_DOMAINS
    assert paper.domains("carpet") == paper.domains("bottle") == ANOCLIP_PAPER_DOMAINS
    rec = SampleRecord(Path("a.png"), 0, None, "bottle", "good", "test")
    normal, anomalous = code.sentences(rec, "bottle")
    assert len(normal) == len(anomalous) == 66 * 7  # AnoVL prompt_ensemble.py: 462 per polarity
    assert normal[0] == "a cropped industrial photo of the normal bottle"
    assert anomalous[-1] == "a manufacturing image of a bottle with damage for anomaly detection"
    p_normal, _ = paper.sentences(rec, "bottle")
    assert len(p_normal) == 88 * 7
    assert any("textural photo" in s for s in p_normal)
    assert not any("textural photo" in s for s in normal)


def test_class_name_switch():
    rec = SampleRecord(Path("a.png"), 0, None, "macaroni1", "good", "test")
    assert AnoCLIP(AnoCLIPConfig()).class_word(rec, "macaroni one") == "macaroni"
    assert AnoCLIP(AnoCLIPConfig(class_names="dataset")).class_word(rec, "macaroni one") == "macaroni one"
    rec2 = SampleRecord(Path("a.png"), 0, None, "metal_nut", "good", "test")
    assert AnoCLIP(AnoCLIPConfig()).class_word(rec2, "metal nut") == "metal_nut"  # AnoVL keeps underscores


def test_augmented_views():
    img = torch.randn(2, 3, 11, 11, generator=torch.Generator().manual_seed(0))
    views = augment_views(img)
    assert views.shape == (2, 21, 3, 11, 11)
    # a shift of 0.2 in [-1, 1] coordinates (align_corners) is 0.1·(S − 1) = 1 pixel
    torch.testing.assert_close(views[:, 8, :, :-1, :-1], img[:, :, 1:, 1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(views[:, 16], img.flip(-1))
    grey = 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    torch.testing.assert_close(views[:, 17], grey[:, None].expand(-1, 3, -1, -1))
    assert {tuple(torch.rot90(img, k, (-2, -1))[0, 0, 0, :2].tolist()) for k in (1, 2, 3)} == {
        tuple(views[0, 18 + i, 0, 0, :2].tolist()) for i in range(3)
    }
    centre = views[:, :8, :, 5, 5]  # rotations keep the centre pixel
    torch.testing.assert_close(centre, img[:, None, :, 5, 5].expand_as(centre), rtol=0, atol=1e-5)


def test_augmented_image_score_is_the_mean_over_22_views(ctx):
    b = batch(2, seed=6)
    bb = ctx.backbone
    before = bb.forward_calls
    aug = anoclip(ctx, domain_phrases=["photo"]).predict(b)
    assert bb.forward_calls - before == 2  # the V-V pass + one pass over all 42 views
    plain = anoclip(ctx, **FAST).predict(b)
    torch.testing.assert_close(aug.anomaly_maps, plain.anomaly_maps)
    m = anoclip(ctx, **FAST)
    t = m.text(b.records[0], "bottle").means
    views = torch.cat([b.images[:, None], augment_views(b.images)], dim=1).flatten(0, 1)  # (B·22, 3, S, S)
    probs = (F.normalize(bb.encode_image(views), dim=-1) @ t.T).softmax(-1)[:, 1].reshape(2, 22)
    torch.testing.assert_close(aug.image_scores, probs.mean(1), rtol=0, atol=1e-6)
    assert not torch.allclose(aug.image_scores, plain.image_scores)


def test_feature_cache_gives_the_same_prediction(ctx, tmp_path):
    from zsad_bench.features import FeatureCache

    cached = Context(device="cpu", seed=0, backbone_cfg=ctx.backbone_cfg, cache=FeatureCache(tmp_path, dtype="fp32"))
    cached._backbone = ctx.backbone
    b = batch(2, seed=7)
    m = AnoCLIP(AnoCLIPConfig(domain_phrases=["photo"]))
    m.setup(cached)
    first = m.predict(b)
    calls = ctx.backbone.forward_calls
    again = m.predict(b)
    assert ctx.backbone.forward_calls == calls  # warm cache: no image forward
    torch.testing.assert_close(again.anomaly_maps, first.anomaly_maps, rtol=0, atol=0)
    torch.testing.assert_close(first.anomaly_maps, anoclip(ctx, domain_phrases=["photo"]).predict(b).anomaly_maps)


def test_invalid_choices_fail_with_the_yaml_named():
    with pytest.raises(ValueError, match=r"domains='x'.*anoclip\.yaml"):
        AnoCLIP(AnoCLIPConfig(domains="x"))
    with pytest.raises(ValueError, match="smoothing"):
        AnoCLIP(AnoCLIPConfig(smoothing=2))
    with pytest.raises(ValueError, match=r"activation='relu'.*anoclip_tta\.yaml"):
        AnoCLIPTTA(AnoCLIPTTAConfig(activation="relu"))
    with pytest.raises(ValueError, match="variant"):
        AnoCLIPTTA(AnoCLIPTTAConfig(variant="other"))


# ----------------------------------------------------------------------------- AnoCLIP+
def fixed_noise(std=0.05):
    """A noise hook returning the same δ at every step (so step losses are comparable)."""
    store = {}

    def hook(record, step, shape):
        g = torch.Generator().manual_seed(len(store) + 11)
        return store.setdefault(record.key, torch.randn(shape, generator=g) * std)

    return hook


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_tta_lowers_its_own_loss(ctx, variant):
    ctx.hooks = {"anoclip_tta.noise": fixed_noise()}
    try:
        m = tta(ctx, variant=variant, steps=6)
        m.predict(batch(2, seed=8))
    finally:
        ctx.hooks = {}
    for losses in m.tta_losses:
        assert len(losses) == 6
        assert all(b < a for a, b in itertools.pairwise(losses)), losses
    m2 = tta(ctx, variant=variant, steps=8, lr=1e-2)
    ctx.hooks = {"anoclip_tta.noise": fixed_noise()}
    try:
        m2.predict(batch(2, seed=8))
    finally:
        ctx.hooks = {}
    assert all(run[0] - run[-1] > 1e-5 for run in m2.tta_losses), m2.tta_losses


def test_tta_leaves_the_frozen_backbone_untouched(ctx):
    model = ctx.backbone.model
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for variant in ("paper", "code"):
        tta(ctx, variant=variant).predict(batch(2, seed=9))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_tta_refines_maps_only_and_is_deterministic(ctx):
    b = batch(2, seed=10)
    base = anoclip(ctx, **FAST).predict(b)
    one = tta(ctx).predict(b)
    torch.testing.assert_close(one.image_scores, base.image_scores, rtol=0, atol=0)  # paper Table 2 note
    assert (one.anomaly_maps - base.anomaly_maps).abs().max() > 1e-4
    torch.testing.assert_close(tta(ctx).predict(b).anomaly_maps, one.anomaly_maps, rtol=0, atol=0)
    alone = tta(ctx).predict(Batch(b.images[1:], b.records[1:], b.class_names[1:]))
    torch.testing.assert_close(alone.anomaly_maps[0], one.anomaly_maps[1], rtol=0, atol=1e-6)  # batch-independent
    other = Context(device="cpu", seed=1, backbone_cfg=ctx.backbone_cfg)
    other._backbone = ctx.backbone
    reseeded = built(AnoCLIPTTA, AnoCLIPTTAConfig(cache=False, variant="code", **FAST), other).predict(b)
    assert (reseeded.anomaly_maps - tta(ctx, variant="code").predict(b).anomaly_maps).abs().max() > 1e-6


def test_tta_presets_and_overrides():
    paper = tta_settings(AnoCLIPTTAConfig())
    code = tta_settings(AnoCLIPTTAConfig(variant="code"))
    assert (paper.activation, paper.init, paper.bias, paper.normalize_input) == ("sigmoid", "text", False, False)
    assert (code.activation, code.init, code.bias, code.normalize_input) == ("tanh", "random", True, True)
    assert (paper.noise_std, paper.carry_optimizer) == (0.05, False)
    assert code.noise_std == pytest.approx(0.055)
    assert code.carry_optimizer
    assert paper.steps == code.steps == 5
    assert paper.lr == code.lr == 1e-3
    mixed = tta_settings(AnoCLIPTTAConfig(variant="code", activation="sigmoid", noise_std=0.1))
    assert (mixed.activation, mixed.noise_std, mixed.init) == ("sigmoid", 0.1, "random")


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_init_switch_sets_what_it_names(ctx, variant):
    seen = []
    ctx.hooks = {"anoclip_tta.init": lambda rec, w, b: seen.append((w.clone(), None if b is None else b.clone()))}
    try:
        m = tta(ctx, variant=variant)
        b = batch(1, seed=11)
        m.predict(b)
    finally:
        ctx.hooks = {}
    (w, bias), text = seen[0], m.text(b.records[0], "bottle").sentences
    assert w.shape == text.shape == (2 * 154, ctx.backbone.embed_dim)
    if variant == "paper":
        assert torch.equal(w, text)
        assert bias is None
    else:
        bound = 1 / math.sqrt(w.shape[1])
        assert w.abs().max() <= bound
        assert bias.abs().max() <= bound
        assert bias.shape == (308,)
        assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # uniform(−b, b)


def test_init_hook_overrides_the_adapter(ctx):
    b = batch(1, seed=12)
    ctx.hooks = {"anoclip_tta.init": lambda rec, w, bias: w.zero_()}
    try:
        zeroed = tta(ctx, steps=0).predict(b)
    finally:
        ctx.hooks = {}
    default = tta(ctx, steps=0).predict(b)
    # ω = 0: every affinity is sigmoid(0) = ½, so Φ(P) = P + ½ΣT (not AnoCLIP's P)
    assert (zeroed.anomaly_maps - default.anomaly_maps).abs().max() > 1e-6


def test_activation_and_input_normalisation_switches():
    g = torch.Generator().manual_seed(0)
    p, w, t = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    torch.testing.assert_close(adapt_tokens(p, w, None, t, "sigmoid", False), torch.sigmoid(p @ w.T) @ t + p)
    torch.testing.assert_close(adapt_tokens(p, w, None, t, "tanh", False), torch.tanh(p @ w.T) @ t + p)
    bias = torch.randn(3, generator=g)
    pn = p / p.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(adapt_tokens(p, w, bias, t, "tanh", True), torch.tanh(pn @ w.T + bias) @ t + p)
    # with P/|P| the adapter's added part does not depend on the token's norm
    torch.testing.assert_close(
        adapt_tokens(3 * p, w, None, t, "tanh", True) - 3 * p, adapt_tokens(p, w, None, t, "tanh", True) - p
    )


@pytest.mark.parametrize(("variant", "std"), [("paper", 0.05), ("code", 0.055)])
def test_noise_std_switch(ctx, variant, std):
    m = tta(ctx, variant=variant)
    rec = batch(1).records[0]
    delta = m._noise(rec, 0, torch.zeros(400, 320), torch.Generator().manual_seed(0))
    assert delta.std().item() == pytest.approx(std, rel=0.01)
    assert abs(delta.mean().item()) < 1e-3


@pytest.mark.parametrize(("variant", "carried"), [("paper", False), ("code", True)])
def test_carry_optimizer_switch(ctx, variant, carried):
    m = tta(ctx, variant=variant)
    m.predict(batch(2, seed=13))
    m.predict(batch(1, seed=14))
    if carried:
        state = m._states["bottle"]
        steps = {int(s["step"]) for s in state.optimizer.state.values()}
        assert steps == {15}  # 3 images × 5 steps on one optimiser
    else:
        assert m._states == {}


def test_entropy_switch():
    clean = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    noisy = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    ld = -0.5 * (math.log(0.8) + math.log(0.4) + math.log(0.3) + math.log(0.9)) / 2
    binary = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.7 * math.log(0.7)) / 2
    anomalous = -(0.2 * math.log(0.2) + 0.7 * math.log(0.7)) / 2
    assert tta_loss(clean, noisy).item() == pytest.approx(ld + binary, rel=1e-6)
    assert tta_loss(clean, noisy, "anomalous").item() == pytest.approx(ld + anomalous, rel=1e-6)


def test_tta_runs_under_inference_mode(ctx):
    b = batch(1, seed=15)
    with torch.inference_mode():
        inside = tta(ctx).predict(b)
    torch.testing.assert_close(inside.anomaly_maps, tta(ctx).predict(b).anomaly_maps, rtol=0, atol=0)
