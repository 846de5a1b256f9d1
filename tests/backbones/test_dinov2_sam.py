"""DINOv2 (timm) and SAM (segment-anything) multi-layer tokens on tiny configurations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.backbones import build_backbone

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _images(size, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_dinov2_tokens_equal_a_manual_block_loop(checkpoints):
    bb = build_backbone({"name": "tiny_dinov2", "weights": str(checkpoints["tiny_dinov2"][0])})
    x = _images(112)
    out = bb.image_tokens(x, [3, 6, 9, 12])
    m = bb.model
    with torch.no_grad():
        h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        ref = []
        for blk in m.blocks:
            h = blk(h)
            ref.append(h)
        final = m.norm(h)
    for i, layer in enumerate([3, 6, 9, 12]):
        torch.testing.assert_close(out.layers[layer], ref[i], **TOL)
    torch.testing.assert_close(out.embed, final[:, 0], **TOL)
    normed = bb.image_tokens(x, [6], norm=True).layers[6]
    torch.testing.assert_close(normed, m.norm(ref[1]), **TOL)
    assert out.grid == (8, 8)
    assert out.num_prefix_tokens == 1
    assert out.patches(12).shape == (2, 64, 64)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_dinov2_positional_embedding_is_resampled_from_the_checkpoint(checkpoints, mode):
    path, saved = checkpoints["tiny_dinov2"]
    bb = build_backbone({"name": "tiny_dinov2", "weights": str(path), "pos_interp": mode, "pos_antialias": False})
    native = saved["pos_embed"]  # (1, 1 + 4·4, 64) at native_size 56
    grid = native[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(8, 8), mode=mode, align_corners=False).permute(0, 2, 3, 1).reshape(1, 64, -1)
    torch.testing.assert_close(bb.model.pos_embed.detach(), torch.cat([native[:, :1], grid], dim=1), **TOL)


def test_dinov2_refuses_projection_and_prompts():
    bb = build_backbone({"name": "tiny_dinov2"})
    with pytest.raises(ValueError, match="no projection"):
        bb.image_tokens(_images(112, 1), [3], proj=True)


def test_sam_tokens_equal_the_encoder_blocks(checkpoints):
    bb = build_backbone({"name": "tiny_sam", "weights": str(checkpoints["tiny_sam"][0])})
    x = _images(128)
    out = bb.image_tokens(x, [6, 12, 18, 24])
    m = bb.model
    with torch.no_grad():
        h = m.patch_embed(x) + m.pos_embed
        ref = []
        for blk in m.blocks:
            h = blk(h)
            ref.append(h.flatten(1, 2))
        neck = m(x)  # the full encoder runs the same blocks, then the neck
    for i, layer in enumerate([6, 12, 18, 24]):
        torch.testing.assert_close(out.layers[layer], ref[i], **TOL)
    assert out.embed is None
    assert out.num_prefix_tokens == 0
    assert out.grid == (8, 8)
    assert neck.shape == (2, 256, 8, 8)
    assert [b.window_size for b in m.blocks] == [4, 0, 4, 0]  # windowed and global attention blocks


def test_sam_loads_a_full_sam_checkpoint_and_resizes_positions(tmp_path, checkpoints):
    from safetensors.torch import save_file

    _, saved = checkpoints["tiny_sam"]
    full = {f"image_encoder.{k}": v for k, v in saved.items()} | {"mask_decoder.w": torch.zeros(2)}
    save_file(full, str(tmp_path / "sam.safetensors"))
    bb = build_backbone({"name": "tiny_sam", "weights": str(tmp_path / "sam.safetensors"), "input_size": 160})
    assert tuple(bb.model.pos_embed.shape) == (1, 10, 10, 64)
    assert torch.equal(bb.model.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert bb.image_tokens(_images(160, 1), [-1]).layers[-1].shape == (1, 100, 64)
    with pytest.raises(ValueError, match="no final norm"):
        bb.image_tokens(_images(160, 1), [1], norm=True)
