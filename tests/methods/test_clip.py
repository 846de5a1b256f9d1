"""The plain CLIP baselines against open_clip's own forward on the tiny random CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zsad_bench.build import build_method
from zsad_bench.context import Context
from zsad_bench.types import Batch, SampleRecord

SIZE = 64


@pytest.fixture(scope="module")
def ctx():
    return Context(device="cpu", seed=0, backbone_cfg={"name": "tiny_clip", "weights": "random", "input_size": SIZE})


def make(ctx, name, **kw):
    m = build_method({"name": name, **kw})
    m.setup(ctx)
    return m


def batch(n=2):
    images = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    recs = [SampleRecord(Path(f"c{i}.png"), 0, None, "metal_nut", "good", "test", "fake") for i in range(n)]
    return Batch(images, recs, ["metal nut"] * n)


def test_sentences(ctx):
    normal, anomalous = make(ctx, "clip").sentences("metal nut")
    assert normal == ["a photo of a normal metal nut."]
    assert anomalous == ["a photo of an anomalous metal nut."]
    normal, anomalous = make(ctx, "clip_ac").sentences("apple")
    assert len(normal) == len(anomalous) == 35
    assert "a bad photo of an anomalous apple." in anomalous
    assert "there is a normal apple in the scene." in normal


@pytest.mark.parametrize("name", ["clip", "clip_ac"])
def test_scores_and_maps_equal_open_clip_forward(ctx, name):
    """Image score = softmax(100 cos(encode_image, text)); map = the same on ln_post(patches) @ proj, upsampled."""
    m = make(ctx, name)
    b = batch()
    pred = m.predict(b)
    model = ctx.backbone.model
    normal, anomalous = m.sentences("metal nut")
    tok = ctx.backbone.tokenize
    with torch.no_grad():
        text = torch.stack(
            [F.normalize(F.normalize(model.encode_text(tok(s)), dim=-1).mean(0), dim=-1) for s in (normal, anomalous)]
        )  # (2, E)
        model.visual.output_tokens = True
        pooled, tokens = model.visual(b.images)  # (B, E), (B, N, D) after ln_post
        model.visual.output_tokens = False
    img = (100 * F.normalize(pooled, dim=-1) @ text.T).softmax(-1)[:, 1]
    torch.testing.assert_close(pred.image_scores, img, rtol=0, atol=1e-5)
    patch = (100 * F.normalize(tokens @ model.visual.proj, dim=-1) @ text.T).softmax(-1)[..., 1]  # (B, N)
    g = SIZE // 16
    expected = F.interpolate(patch.reshape(-1, 1, g, g), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pred.anomaly_maps, expected[:, 0], rtol=0, atol=1e-5)


def test_unknown_prompt_list_fails_at_build():
    with pytest.raises(KeyError, match="clip_templates"):
        build_method({"name": "clip", "templates": "clip_template"})
