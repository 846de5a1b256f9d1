"""The CLIP backbone against open_clip and hand-written references (tiny random models)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.backbones import build_backbone, make_windows
from zsad_bench.backbones.prompts import append_prompts, overwrite_prompts, replace_token_embeddings

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _images(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.input_size, bb.input_size, generator=g)


# ----------------------------------------------------------------------------- image tokens
def test_image_tokens_equal_open_clip_intermediates(tiny_clip):
    x = _images(tiny_clip)
    out = tiny_clip.image_tokens(x, [6, 12, 18, 24])
    ref = tiny_clip.model.visual.forward_intermediates(
        x, indices=[0, 1, 2, 3], output_fmt="NLC", output_extra_tokens=True
    )
    for i, layer in enumerate([6, 12, 18, 24]):
        expected = torch.cat([ref["image_intermediates_prefix"][i], ref["image_intermediates"][i]], dim=1)
        torch.testing.assert_close(out.layers[layer], expected, **TOL)
    torch.testing.assert_close(out.embed, ref["image_features"], **TOL)
    torch.testing.assert_close(tiny_clip.encode_image(x), tiny_clip.model.encode_image(x), **TOL)
    assert out.grid == (14, 14)
    assert out.patches(24).shape == (2, 196, 64)
    assert out.patch_map(24).shape == (2, 64, 14, 14)


def test_norm_and_proj_are_ln_post_and_proj(tiny_clip):
    x = _images(tiny_clip)
    raw = tiny_clip.image_tokens(x, [12]).layers[12]
    both = tiny_clip.image_tokens(x, [12], norm=True, proj=True).layers[12]
    v = tiny_clip.model.visual
    with torch.no_grad():
        torch.testing.assert_close(both, v.ln_post(raw) @ v.proj, **TOL)
    assert both.shape[-1] == tiny_clip.embed_dim


def test_outputs_can_enter_a_training_graph(tiny_clip):
    feats = tiny_clip.image_tokens(_images(tiny_clip), [24]).layers[24]
    w = torch.nn.Parameter(torch.ones(64))
    (feats * w).sum().backward()
    assert w.grad is not None


def test_wrong_image_size_is_refused(tiny_clip):
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        tiny_clip.image_tokens(torch.zeros(1, 3, 240, 240), [1])


# ----------------------------------------------------------------------------- switches
def test_activation_switch_changes_both_towers():
    import open_clip

    gelu = build_backbone({"name": "tiny_clip"})
    quick = build_backbone({"name": "tiny_clip", "activation": "quick_gelu"})
    for tower in (quick.model.visual.transformer, quick.model.transformer):
        assert all(isinstance(b.mlp.gelu, open_clip.transformer.QuickGELU) for b in tower.resblocks)
    assert all(isinstance(b.mlp.gelu, torch.nn.GELU) for b in gelu.model.visual.transformer.resblocks)
    x = _images(gelu)
    assert not torch.allclose(gelu.encode_image(x), quick.encode_image(x))
    assert gelu.weights_fingerprint == quick.weights_fingerprint  # same weights, different option
    assert gelu.signature() != quick.signature()


def _manual_resize(native_pos, size, mode, antialias):
    grid = native_pos[1:].reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    return torch.cat([native_pos[:1], grid.permute(0, 2, 3, 1).reshape(size * size, -1)])


@pytest.mark.parametrize(("mode", "antialias"), [("bicubic", True), ("bicubic", False), ("bilinear", False)])
def test_positional_embedding_interpolation_modes(mode, antialias, checkpoints):
    path, saved = checkpoints["tiny_clip"]
    native = saved["visual.positional_embedding"]  # (1 + 7·7, 64)
    bb = build_backbone({"name": "tiny_clip", "weights": str(path), "pos_interp": mode, "pos_antialias": antialias})
    pos = bb.model.visual.positional_embedding.detach()
    torch.testing.assert_close(pos, _manual_resize(native, 14, mode, antialias), rtol=0, atol=1e-6)
    assert torch.equal(pos[0], native[0])  # the class position is kept


def test_interpolation_modes_really_differ(checkpoints):
    native = checkpoints["tiny_clip"][1]["visual.positional_embedding"]
    a = _manual_resize(native, 14, "bicubic", True)
    assert (a - _manual_resize(native, 14, "bicubic", False)).abs().max() > 1e-3  # antialias matters upsampling
    assert (a - _manual_resize(native, 14, "bilinear", False)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- V-V path
def _reference_vv(bb, images, first):
    """Dual path written out head by head (AnomalyCLIP's ``AnomalyCLIP_lib/AnomalyCLIP.py``)."""
    v = bb.model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    vv, outs = None, {}
    for i, blk in enumerate(v.transformer.resblocks, start=1):
        if i < first:
            x = blk(x)
            continue
        y = blk.ln_1(x)
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        d, h = w.shape[1], blk.attn.num_heads
        hd = d // h
        q, k, val = (y @ w[j * d : (j + 1) * d].T + b[j * d : (j + 1) * d] for j in range(3))
        ori_heads, vv_heads = [], []
        for head in range(h):
            s = slice(head * hd, (head + 1) * hd)
            qh, kh, vh = q[..., s], k[..., s], val[..., s]
            ori_heads.append(torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ vh)
            vv_heads.append(torch.softmax(vh @ vh.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ vh)
        out_w, out_b = blk.attn.out_proj.weight, blk.attn.out_proj.bias
        a_ori = torch.cat(ori_heads, dim=-1) @ out_w.T + out_b
        a_vv = torch.cat(vv_heads, dim=-1) @ out_w.T + out_b
        vv = (x if vv is None else vv) + a_vv
        x = x + a_ori
        x = x + blk.mlp(blk.ln_2(x))
        outs[i] = vv.clone()
    return outs, x


@pytest.mark.parametrize("first", [1, 2])
def test_vv_path_equals_hand_written_reference(two_layer_clip, first):
    bb = two_layer_clip
    x = _images(bb)
    layers = [i for i in (1, 2) if i >= first]
    out = bb.vv_tokens(x, layers, first)
    with torch.no_grad():
        ref, final = _reference_vv(bb, bb.check_images(x), first)
    for layer in layers:
        torch.testing.assert_close(out.vv[layer], ref[layer], **TOL)
    torch.testing.assert_close(out.cls, final[:, 0], **TOL)


def test_vv_original_stream_is_vanilla_clip_and_layers_are_not_aliased(tiny_clip):
    x = _images(tiny_clip)
    vv = tiny_clip.vv_tokens(x, [12, 18, 24], first_block=6, norm=True, proj=True)
    plain = tiny_clip.image_tokens(x, [12, 24], norm=True, proj=True)
    torch.testing.assert_close(vv.ori[24], plain.layers[24], **TOL)
    torch.testing.assert_close(vv.embed, plain.embed, **TOL)
    assert not torch.allclose(vv.vv[12], vv.vv[24])
    assert not torch.allclose(vv.vv[18], vv.vv[24])
    assert not torch.allclose(vv.vv[24], vv.ori[24])
    with pytest.raises(ValueError, match="before the first V-V block"):
        tiny_clip.vv_tokens(x, [6], first_block=12)


# ----------------------------------------------------------------------------- windows
def _window_loop(bb, images, windows):
    v = bb.model.visual
    x0 = bb.embed_patches(bb.check_images(images))
    out = []
    for idx in windows:
        seq = torch.cat([x0[:, :1], x0[:, 1 + idx]], dim=1)
        h = v.ln_pre(seq)
        for blk in v.transformer.resblocks:
            h = blk(h)
        out.append(v.ln_post(h[:, 0]) @ v.proj)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("scale", [2, 3])
def test_windowed_encoding_equals_a_per_window_loop(two_layer_clip, scale):
    bb = two_layer_clip  # 6x6 grid: 25 windows at scale 2, 16 at scale 3
    x = _images(bb)
    windows = make_windows(bb.grid_size, scale)
    batched = bb.window_embeddings(x, windows)
    small_chunks = bb.window_embeddings(x, windows, chunk_size=7)
    with torch.no_grad():
        ref = _window_loop(bb, x, windows)
    assert batched.shape == (2, windows.shape[0], bb.embed_dim)
    torch.testing.assert_close(batched, ref, **TOL)
    torch.testing.assert_close(small_chunks, ref, **TOL)


def test_make_windows_counts_and_errors():
    assert make_windows(15, 2).shape == (196, 4)
    assert make_windows(15, 3).shape == (169, 9)
    assert make_windows((2, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5]]
    with pytest.raises(ValueError, match="does not fit"):
        make_windows(3, 4)


def test_window_indices_are_checked(tiny_clip):
    with pytest.raises(ValueError, match="patch indices"):
        tiny_clip.window_embeddings(_images(tiny_clip, 1), torch.tensor([[0, 196]]))


# ----------------------------------------------------------------------------- learnable tokens
class _Recorder:
    def __init__(self):
        self.seen = {}

    def __call__(self, block, x):
        self.seen[block] = x.detach().clone()
        return x


def test_image_prompts_are_appended_then_replaced_and_excluded(tiny_clip):
    x = _images(tiny_clip)
    prompts = [torch.nn.Parameter(torch.randn(3, 64) * 0.1) for _ in range(2)]
    rec_after = _Recorder()
    hook = append_prompts(prompts)

    def both(block, t):
        return rec_after(block, hook(block, t))

    out = tiny_clip.image_tokens(x, [6, 24], prompts=both)
    lengths = {b: t.shape[1] for b, t in rec_after.seen.items()}
    assert lengths == {1: 200, 2: 200, 3: 200, 4: 200}  # 197 tokens + 3 prompts from block 1 on
    assert torch.equal(rec_after.seen[1][:, -3:], prompts[0].detach().expand(2, -1, -1))
    assert torch.equal(rec_after.seen[2][:, -3:], prompts[1].detach().expand(2, -1, -1))
    assert not torch.equal(rec_after.seen[3][:, -3:], prompts[1].detach().expand(2, -1, -1))  # propagated
    assert out.layers[24].shape == (2, 197, 64)
    plain = tiny_clip.image_tokens(x, [24])
    assert not torch.allclose(out.embed, plain.embed)  # the CLS sees the prompts
    out.layers[24].sum().backward()
    assert prompts[0].grad is not None
    assert prompts[1].grad is not None
    assert all(p.grad is None for p in tiny_clip.model.parameters())


def test_text_prompts_overwrite_positions_after_sot_from_block_two(tiny_clip):
    deep = [torch.nn.Parameter(torch.randn(4, 64) * 0.1) for _ in range(3)]  # blocks 2, 3, 4
    rec = _Recorder()
    hook = overwrite_prompts(deep, first_block=2, start=1)

    def both(block, t):
        return rec(block, hook(block, t))

    tokens = tiny_clip.tokenize(["a photo of a damaged bottle.", "a photo of a bottle."])
    out = tiny_clip.encode_text(tokens, prompts=both)
    first_input = tiny_clip.token_embeddings(tokens) + tiny_clip.model.positional_embedding
    length = rec.seen[1].shape[1]
    torch.testing.assert_close(rec.seen[1], first_input[:, :length], **TOL)  # block 1 untouched
    for j, block in enumerate((2, 3, 4)):
        assert torch.equal(rec.seen[block][:, 1:5], deep[j].detach().expand(2, -1, -1))
    assert not torch.allclose(out, tiny_clip.encode_text(tokens))
    out.sum().backward()
    assert all(p.grad is not None for p in deep)


# ----------------------------------------------------------------------------- text
def test_encode_text_equals_open_clip(tiny_clip):
    texts = ["a photo of a cat.", "a cropped photo of the damaged metal nut for anomaly detection.", "x"]
    tokens = tiny_clip.tokenize(texts)
    ref = tiny_clip.model.encode_text(tokens)
    torch.testing.assert_close(tiny_clip.encode_text(texts), ref, **TOL)
    torch.testing.assert_close(tiny_clip.encode_text(texts, truncate=False), ref, **TOL)
    torch.testing.assert_close(tiny_clip.encode_text(texts, batch_size=2), ref, **TOL)


def test_prompt_ensemble(tiny_clip):
    normal, anomalous = ["flawless bottle.", "perfect bottle."], ["damaged bottle.", "bottle with flaw.", "broken."]
    ens = tiny_clip.encode_prompt_ensemble([normal, anomalous])
    assert ens.shape == (2, 64)
    for row, group in zip(ens, (normal, anomalous), strict=True):
        e = F.normalize(tiny_clip.model.encode_text(tiny_clip.tokenize(group)), dim=-1)
        torch.testing.assert_close(row, F.normalize(e.mean(0), dim=0), **TOL)
    raw = tiny_clip.encode_prompt_ensemble(anomalous, normalize_each=False)
    e = tiny_clip.model.encode_text(tiny_clip.tokenize(anomalous))
    torch.testing.assert_close(raw, F.normalize(e.mean(0), dim=0), **TOL)


def test_learned_token_embeddings(tiny_clip):
    placeholder = "X X X X object."
    tokens = tiny_clip.tokenize([placeholder])
    emb = tiny_clip.token_embeddings(tokens)
    same = replace_token_embeddings(emb, emb[0, 1:5].clone(), start=1)
    torch.testing.assert_close(
        tiny_clip.encode_token_embeddings(same, tiny_clip.eot_index(tokens)), tiny_clip.model.encode_text(tokens), **TOL
    )
    ctx = torch.nn.Parameter(torch.randn(4, 64) * 0.02)
    out = tiny_clip.encode_token_embeddings(replace_token_embeddings(emb, ctx), tiny_clip.eot_index(tokens))
    out.sum().backward()
    assert ctx.grad is not None
    assert ctx.grad.abs().sum() > 0
