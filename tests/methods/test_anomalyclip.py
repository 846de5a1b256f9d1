"""AnomalyCLIP / AnomalyCLIP+ properties on tiny random CLIPs (64 px, 4×4 patch grid), CPU.

The learnable text side is checked against the real CLIP tokenizer and by watching the text
blocks' inputs; the vision side against the frozen backbone's V-V features and a hand-written
dual path; training on the synthetic auxiliary data; checkpoints through safetensors and the
shared trainer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.checkpoints import load_state, save_state
from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.methods.anomalyclip import (
    AnomalyCLIP,
    AnomalyCLIPConfig,
    convert_official_checkpoint,
    convert_official_state,
    placeholder_positions,
    placeholder_sentences,
)
from zsad_bench.types import Batch, SampleRecord

SIZE = 64
TINY = {
    "name": "tiny_clip",
    "weights": "random",
    "input_size": SIZE,
    "activation": "quick_gelu",
    "pos_interp": "bilinear",
}
# A CLIP with a 10-block text tower, so that the default 9-deep prompts all fit (tiny_clip has 4 blocks).
DEEP_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 10},
}


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", seed=0, backbone_cfg=TINY)


@pytest.fixture(scope="module")
def deep_ctx(tmp_path_factory):
    import open_clip

    if "acl-deep-clip" not in open_clip.list_models():
        path = tmp_path_factory.mktemp("cfg") / "acl-deep-clip.json"
        path.write_text(json.dumps(DEEP_ARCH))
        open_clip.add_model_config(path)
    cfg = {"name": "clip", "arch": "acl-deep-clip", "weights": "random", "input_size": SIZE, "seed": 3}
    cfg.update(activation="quick_gelu", pos_interp="bilinear", layer_map={6: 1, 24: 2})
    return Context(device="cpu", seed=0, backbone_cfg=cfg)


def method(context, **kw) -> AnomalyCLIP:
    m = AnomalyCLIP(AnomalyCLIPConfig(**kw))
    m.setup(context)
    return m


def batch(n=2, seed=0, category="bottle", labels=False):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=g)
    recs = [SampleRecord(Path(f"a{seed}_{i}.png"), i % 2, None, category, "good", "test", "fake") for i in range(n)]
    b = Batch(images, recs, [category] * n)
    if labels:
        b.labels = torch.tensor([i % 2 for i in range(n)])
        b.masks = torch.zeros(n, SIZE, SIZE)
        b.masks[1::2, 16:40, 20:44] = 1.0
    return b


# ----------------------------------------------------------------------------- text side
def test_placeholder_positions_on_the_real_tokenizer():
    import open_clip

    tok = open_clip.get_tokenizer("ViT-L-14-336")  # open_clip's SimpleTokenizer and its shipped BPE vocabulary
    normal, anomalous = placeholder_sentences(12)
    assert normal == "X X X X X X X X X X X X object."
    assert anomalous == "X X X X X X X X X X X X damaged object."
    ids = tok([normal, anomalous])  # (2, 77)
    x_id = tok(["X"])[0, 1]
    assert placeholder_positions(ids, 12, x_id) == list(range(1, 13))
    words = [[tok.decoder[int(i)] for i in row[1 : int(row.argmax()) + 1]] for row in ids]
    eot = tok.decoder[tok.eot_token_id]
    assert words[0] == ["x</w>"] * 12 + ["object</w>", ".</w>", eot]
    assert words[1] == ["x</w>"] * 12 + ["damaged</w>", "object</w>", ".</w>", eot]
    assert int(ids[0, 0]) == tok.sot_token_id
    assert ids.argmax(dim=-1).tolist() == [15, 16]  # EOT pooling positions
    with pytest.raises(ValueError, match=r"positions 1\.\.11"):
        placeholder_positions(ids, 11, x_id)  # the 12th X is still there


def test_contexts_replace_exactly_the_placeholder_rows(ctx, monkeypatch):
    m = method(ctx, deep_depth=1)
    bb = ctx.backbone
    seen = {}
    original = bb.encode_token_embeddings

    def spy(embeddings, eot, **kw):
        seen["emb"], seen["eot"], seen["hook"] = embeddings.detach().clone(), eot.clone(), kw.get("prompts")
        return original(embeddings, eot, **kw)

    monkeypatch.setattr(bb, "encode_token_embeddings", spy)
    with torch.no_grad():
        m.text_features()
    frozen = bb.token_embeddings(bb.tokenize(list(placeholder_sentences(12))))  # (2, 77, D)
    emb = seen["emb"]
    torch.testing.assert_close(emb[0, 1:13], m.prompts.ctx_pos[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(emb[1, 1:13], m.prompts.ctx_neg[0, 0], rtol=0, atol=0)
    keep = [0, *range(13, 77)]
    torch.testing.assert_close(emb[:, keep], frozen[:, keep], rtol=0, atol=0)
    assert seen["eot"].tolist() == [15, 16]
    assert seen["hook"] is None  # depth 1: no deep prompts


def block_inputs(bb, fn):
    """The (K, L, D) input of every text block during ``fn()``."""
    inputs, handles = {}, []
    for i, block in enumerate(bb.model.transformer.resblocks, start=1):
        handles.append(block.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0].clone())))
    try:
        fn()
    finally:
        for h in handles:
            h.remove()
    return inputs


def test_deep_prompts_overwrite_positions_1_to_4_from_the_second_block(deep_ctx):
    m = method(deep_ctx)  # defaults: depth 9 → 8 deep prompts before text blocks 2..9
    bb = deep_ctx.backbone
    deep = list(m.prompts.compound_prompts_text)
    assert len(deep) == 8
    assert tuple(deep[0].shape) == (4, 32)
    with torch.no_grad():
        inputs = block_inputs(bb, m.text_features)
        pos = bb.model.positional_embedding
    # block 1: the learned contexts plus positional embeddings, no deep prompt
    torch.testing.assert_close(inputs[1][0, 1:5], m.prompts.ctx_pos[0, 0, :4] + pos[1:5], rtol=0, atol=1e-7)
    for block in range(2, 10):  # blocks 2..9: positions 1..4 are the fp16-rounded deep prompt, nothing added
        expected = deep[block - 2].detach().half().float()
        for k in range(2):
            torch.testing.assert_close(inputs[block][k, 1:5], expected, rtol=0, atol=0)
        assert not torch.equal(inputs[block][:, 5:], inputs[1][:, 5:])  # the rest flows through the blocks
    assert not torch.allclose(inputs[10][0, 1:5], deep[7].detach().half().float())  # block 10: no insertion


def test_deep_prompts_change_the_text_and_get_gradients(deep_ctx):
    m = method(deep_ctx)
    text = m.text_features()  # gradients enabled
    loss = text[:, 0].sum()
    loss.backward()
    for p in m.prompts.parameters():
        assert p.grad is not None
        assert p.grad.abs().sum() > 0
    unrounded = method(deep_ctx, round_deep_prompts_fp16=False)
    with torch.no_grad():
        a, b = m.text_features(), unrounded.text_features()
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=1e-2)


def test_text_is_memoised_until_a_parameter_changes(ctx):
    m = method(ctx)
    with torch.no_grad():
        first = m.text_features()
        assert m.text_features() is first
        m.prompts.ctx_neg.add_(0.5)
        second = m.text_features()
    assert second is not first
    assert not torch.equal(second, first)


# ----------------------------------------------------------------------------- vision side
def hand_anomalyclip_vision(model, images, first, layers):
    """AnomalyCLIP's image side from the raw weights, per head, sequence-first as its code lays it out.

    Returns ({layer: ln_post(vv) @ proj}, original CLS @ proj).
    """
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)  # (B, N, D)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x).transpose(0, 1)  # (L, B, D)
    vv, out = None, {}
    for i, blk in enumerate(v.transformer.resblocks, start=1):
        if i < first:
            x = blk(x.transpose(0, 1)).transpose(0, 1)
            continue
        y = blk.ln_1(x).transpose(0, 1)  # (B, L, D)
        b, n, d = y.shape
        h = blk.attn.num_heads
        qkv = (y @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, val = qkv[0], qkv[1], qkv[2]
        scale = (d // h) ** -0.5
        ori = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ val
        vvv = ((val @ val.transpose(-2, -1)) * scale).softmax(-1) @ val
        ori, vvv = (blk.attn.out_proj(t.transpose(1, 2).reshape(b, n, d)).transpose(0, 1) for t in (ori, vvv))
        vv = (x if vv is None else vv) + vvv
        x = x + ori
        x = x + blk.mlp(blk.ln_2(x))
        if i in layers:
            out[i] = v.ln_post(vv.transpose(0, 1)) @ v.proj
    return out, x[0] @ v.proj


def test_vision_side_is_the_frozen_backbones_vv_features(ctx):
    m = method(ctx, variant="paper")
    bb = ctx.backbone
    b = batch()
    patches, global_feat = m.image_features(b)
    ref = bb.vv_tokens(b.images, m.layers, 6, norm=True, proj=True)
    for layer in m.layers:
        assert torch.equal(patches[layer], ref.vv[layer][:, 1:])
    assert torch.equal(global_feat, ref.cls @ bb.model.visual.proj)
    # independent of the learnable prompts: a training step changes them, not the image features
    m.set_training(True)
    opt = torch.optim.Adam(m.parameters_to_train(), lr=1e-2)
    loss = sum(m.training_step(batch(labels=True)).values())
    loss.backward()
    opt.step()
    again, global_again = m.image_features(b)
    assert all(torch.equal(again[k], patches[k]) for k in patches)
    assert torch.equal(global_again, global_feat)
    # and equal to a hand-written dual path in AnomalyCLIP's own formulation
    with torch.no_grad():
        hand, hand_global = hand_anomalyclip_vision(bb.model, b.images, first=1, layers={1, 2, 3, 4})
    for layer, actual in zip(m.layers, (1, 2, 3, 4), strict=True):
        torch.testing.assert_close(patches[layer], hand[actual][:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(global_feat, hand_global, rtol=1e-4, atol=1e-5)


def test_cached_features_are_bit_identical_and_skip_the_encoder(tmp_path):
    plain = Context(device="cpu", seed=0, backbone_cfg=TINY)
    cached = Context(device="cpu", seed=0, backbone_cfg=TINY, cache=FeatureCache(tmp_path, dtype="fp32"))
    b = batch(seed=4)
    ref, ref_global = method(plain).image_features(b)
    m = method(cached)
    first, _ = m.image_features(b)
    calls = cached.backbone.forward_calls
    second, second_global = m.image_features(b)
    assert cached.backbone.forward_calls == calls  # read from the cache, no encoder run
    assert torch.equal(first[24], ref[24])
    assert torch.equal(second[24], ref[24])
    assert torch.equal(second_global, ref_global)


def test_global_ln_post_switch_uses_the_clip_embedding(ctx):
    b = batch()
    _, plain = method(ctx).image_features(b)
    _, with_ln = method(ctx, global_ln_post=True).image_features(b)
    # the V-V pass's original stream is vanilla CLIP (up to float summation order in the attention)
    torch.testing.assert_close(with_ln, ctx.backbone.encode_image(b.images), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, with_ln)


# ----------------------------------------------------------------------------- scoring
def test_maps_softmax_per_patch_then_upsample_sum_and_smooth(ctx):
    from scipy.ndimage import gaussian_filter

    m = method(ctx, variant="paper")
    b = batch(seed=7)
    pred = m.predict(b)
    patches, global_feat = m.image_features(b)
    with torch.no_grad():
        text = m.text_features()
    total = torch.zeros(2, SIZE, SIZE)
    for tok in patches.values():  # written as the official code: elementwise product, /0.07, softmax
        tok = tok / tok.norm(dim=-1, keepdim=True)
        sim = ((tok[:, :, None, :] * text[None, None]).sum(-1) / 0.07).softmax(-1)  # (B, N, 2)
        sm = sim.reshape(2, 4, 4, 2).permute(0, 3, 1, 2)
        sm = F.interpolate(sm, (SIZE, SIZE), mode="bilinear").permute(0, 2, 3, 1)
        total += (sm[..., 1] + 1 - sm[..., 0]) / 2.0
    expected = torch.stack([torch.from_numpy(gaussian_filter(x.numpy(), sigma=4)) for x in total])
    torch.testing.assert_close(pred.anomaly_maps, expected, rtol=1e-5, atol=1e-5)
    g = global_feat / global_feat.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(pred.image_scores, ((g @ text.T) / 0.07).softmax(-1)[:, 1], rtol=1e-5, atol=1e-6)
    assert float(pred.anomaly_maps.max()) <= 4.0 + 1e-5  # a sum of four [0, 1] maps


def test_variants_and_the_local_loss_weight(ctx):
    code, paper = AnomalyCLIP(AnomalyCLIPConfig()), AnomalyCLIP(AnomalyCLIPConfig(variant="paper"))
    assert (code.layers, code.local_loss_weight) == ([24], 4.0)
    assert (paper.layers, paper.local_loss_weight) == ([6, 12, 18, 24], 1.0)
    with pytest.raises(ValueError, match="variant"):
        AnomalyCLIP(AnomalyCLIPConfig(variant="other"))
    b = batch(labels=True)
    four, one = method(ctx), method(ctx, local_loss_weight=1.0)
    with torch.no_grad():
        t4, t1 = four.training_step(b), one.training_step(b)
    assert set(t4) == {"focal", "dice", "dice_normal", "image_ce"}
    for key in ("focal", "dice", "dice_normal"):
        torch.testing.assert_close(t4[key], 4.0 * t1[key])
    torch.testing.assert_close(t4["image_ce"], t1["image_ce"])


def test_anomalyclip_plus_associates_patches_with_the_references(ctx):
    m = method(ctx)
    b = batch(seed=9)
    zero = m.predict(b)
    m.set_references(b)  # the query images themselves: every patch has a perfect match
    few = m.predict(b)
    torch.testing.assert_close(few.anomaly_maps, zero.anomaly_maps / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(few.image_scores, zero.image_scores / 2, rtol=1e-5, atol=1e-6)
    m.set_references(batch(seed=10))  # other references: a positive association raises the map
    other = m.predict(b)
    assert bool((other.anomaly_maps > few.anomaly_maps).all())
    mixed = Batch(
        b.images, [b.records[0], SampleRecord(Path("z.png"), 0, None, "cable", "good", "test", "fake")], [""] * 2
    )
    with pytest.raises(ValueError, match="mixes categories"):
        m.predict(mixed)


# ----------------------------------------------------------------------------- training and checkpoints
@pytest.fixture(scope="module")
def aux_batches(tmp_path_factory):
    """The synthetic auxiliary set (synth_aux) decoded at 64 px, 8 images per category."""
    from zsad_bench.auxdata import AuxDataset, build_aux, to_batch
    from zsad_bench.synth import AUX_CATEGORIES, SynthSpec, ensure_synth

    root = tmp_path_factory.mktemp("data")
    ensure_synth(root / "synth_aux", SynthSpec(AUX_CATEGORIES, seed=1))
    aux = build_aux([{"name": "synth_aux", "root": str(root / "synth_aux")}], {"data_root": str(root)}, "test", 8)
    data = AuxDataset(aux, {"input_size": SIZE, "interpolation": "bicubic"})
    items = [data[i] for i in range(len(data))]
    return root, [to_batch(items[i : i + 8], aux, torch.device("cpu")) for i in range(0, len(items), 8)]


def mean_loss(m, batches) -> float:
    with torch.no_grad():
        return sum(float(sum(m.training_step(b).values())) for b in batches) / len(batches)


def test_a_few_steps_on_synth_lower_the_loss(ctx, aux_batches):
    from zsad_bench.train import TrainRecipe, fit_batches

    _, batches = aux_batches
    m = method(ctx)
    before = mean_loss(m, batches)
    losses = fit_batches(m, batches, TrainRecipe(epochs=2, batch_size=8, lr=1e-3, betas=(0.5, 0.999), seed=111))
    after = mean_loss(m, batches)
    assert len(losses) == 2
    assert all(math.isfinite(x) for x in losses)
    assert after < before - 0.05, (before, after)


def test_learnable_state_round_trips_through_safetensors(ctx, tmp_path):
    m = method(ctx)
    with torch.no_grad():
        for p in m.parameters_to_train():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    state = m.learnable_state()
    assert sorted(state) == ["compound_prompts_text.0", "compound_prompts_text.1", "compound_prompts_text.2",
                             "ctx_neg", "ctx_pos"]  # fmt: skip
    save_state(tmp_path / "p.safetensors", state)
    fresh = method(ctx)
    b = batch(seed=5)
    assert not torch.equal(fresh.predict(b).anomaly_maps, m.predict(b).anomaly_maps)
    fresh.load_learnable_state(load_state(tmp_path / "p.safetensors"))
    torch.testing.assert_close(fresh.predict(b).anomaly_maps, m.predict(b).anomaly_maps, rtol=0, atol=0)
    torch.testing.assert_close(fresh.predict(b).image_scores, m.predict(b).image_scores, rtol=0, atol=0)


def test_shared_trainer_checkpoint_is_reloaded_by_tag(aux_batches, tmp_path):
    from importlib import resources

    from omegaconf import OmegaConf

    from zsad_bench.train import train_or_load

    root, _ = aux_batches
    train = OmegaConf.load(str(resources.files("zsad_bench.conf") / "train" / "default.yaml"))
    cfg = OmegaConf.create({
        "method": {"name": "anomalyclip"},
        "backbone": TINY,
        "dataset": {"name": "synth", "categories": "all", "root": str(root / "synth"), "aux": "synth_aux"},
        "train": OmegaConf.merge(train, {"progress": False, "epochs": 1, "max_steps": 2, "max_per_category": 4}),
        "paths": {"data_root": str(root), "weights_root": str(tmp_path / "w"), "results_root": str(tmp_path / "r")},
        "seed": 0,
    })  # fmt: skip
    first_ctx = Context(device="cpu", seed=0, backbone_cfg=TINY)
    trained = method(first_ctx)
    record = train_or_load(trained, cfg, first_ctx)
    assert (record.tag, record.status, record.steps) == ("anomalyclip.synth_aux", "trained", 2)
    files = list(Path(record.folder).glob("*.safetensors"))
    assert len(files) == 1
    again = method(first_ctx)
    record2 = train_or_load(again, cfg, first_ctx)
    assert record2.status == "loaded"
    for key, value in trained.learnable_state().items():
        assert torch.equal(again.learnable_state()[key], value), key


def test_official_checkpoint_conversion(deep_ctx, tmp_path):
    m = method(deep_ctx)
    g = torch.Generator().manual_seed(1)
    official = {k: torch.randn(v.shape, generator=g).half() for k, v in m.learnable_state().items()}
    official.update({
        "token_prefix_pos": torch.zeros(1, 1, 1, 32),
        "tokenized_prompts_pos": torch.zeros(1, 1, 77, dtype=torch.int32),
        **{f"compound_prompt_projections.{i}.weight": torch.zeros(896, 32) for i in range(8)},
    })  # fmt: skip
    converted = convert_official_state(official)
    assert sorted(converted) == sorted(m.learnable_state())
    torch.save({"prompt_learner": official}, tmp_path / "epoch_15.pth")
    out = convert_official_checkpoint(tmp_path / "epoch_15.pth", tmp_path / "anomalyclip.safetensors")
    m.load_learnable_state(load_state(out))
    torch.testing.assert_close(m.prompts.ctx_pos.data, official["ctx_pos"].float(), rtol=0, atol=0)
    with pytest.raises(KeyError, match="ctx_pos"):
        convert_official_state({"compound_prompts_text.0": torch.zeros(4, 32)})
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        convert_official_checkpoint(tmp_path / "missing.pth", tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- the real architecture
@pytest.mark.slow
def test_real_vit_l14_336_architecture_shapes_and_a_step():
    """ViT-L-14-336 with random weights at 518 (37x37): the prompt shapes of the official code and one step."""
    cfg = {"name": "clip_vit_l14_336", "weights": "random", "activation": "quick_gelu", "pos_interp": "bilinear"}
    context = Context(device="cpu", seed=0, backbone_cfg=cfg)
    m = method(context)
    shapes = {k: tuple(v.shape) for k, v in m.learnable_state().items()}
    assert shapes["ctx_pos"] == shapes["ctx_neg"] == (1, 1, 12, 768)
    assert [shapes[f"compound_prompts_text.{i}"] for i in range(8)] == [(4, 768)] * 8
    assert sum(math.prod(s) for s in shapes.values()) == 2 * 12 * 768 + 8 * 4 * 768
    g = torch.Generator().manual_seed(0)
    b = Batch(torch.randn(1, 3, 518, 518, generator=g), [SampleRecord(Path("r.png"), 1, None, "x", "d", "test", "f")],
              ["x"], torch.tensor([1]), torch.zeros(1, 518, 518))  # fmt: skip
    b.masks[0, 100:200, 100:200] = 1
    terms = m.training_step(b)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.parameters_to_train())
    assert m.predict(b).anomaly_maps.shape == (1, 518, 518)
