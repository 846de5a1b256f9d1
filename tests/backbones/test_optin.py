"""Opt-in checks: a CUDA device (``-m gpu``) and a real download (``-m network``)."""

from __future__ import annotations

import pytest
import torch

from zsad_bench.backbones import build_backbone


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_autocast_matches_fp32(precision):
    x = torch.randn(2, 3, 224, 224)
    ref = build_backbone({"name": "tiny_clip", "seed": 1}, device="cuda").image_tokens(x, [24])
    low = build_backbone({"name": "tiny_clip", "seed": 1, "precision": precision}, device="cuda")
    out = low.image_tokens(x, [24])
    assert low.effective_precision == precision
    assert out.layers[24].dtype == torch.float32
    torch.testing.assert_close(out.layers[24], ref.layers[24], rtol=0.05, atol=0.05)
    vv = low.vv_tokens(x, [24], first_block=2)
    assert torch.isfinite(vv.vv[24]).all()


@pytest.mark.network
def test_dinov2_weights_download_and_load(tmp_path):
    bb = build_backbone({"name": "dinov2_vits14", "weights_root": str(tmp_path), "input_size": 224})
    assert bb.weights.source in ("hub", "cache")  # "cache" when the HF cache already holds it
    assert not bb.random_weights
    out = bb.image_tokens(torch.zeros(1, 3, 224, 224), [3, 6, 9, 12])
    assert out.layers[12].shape == (1, 1 + 16 * 16, 384)
    again = build_backbone({"name": "dinov2_vits14", "weights_root": str(tmp_path)})
    assert again.weights.source == "cache"
    assert again.weights_fingerprint == bb.weights_fingerprint
