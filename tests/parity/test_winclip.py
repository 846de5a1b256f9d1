"""Parity with anomalib's WinClipModel (fixture recorded by ``tests/parity/drivers/winclip.py``).

Same seeded random ViT-B-16-plus-240 weights, same pixels (anomalib's pre-processor on
non-square images), anomalib's defaults on our side (``variant=anomalib``): text, image, window
and patch embeddings, zero-shot and few-shot grids, image scores and upsampled maps must agree.
Runs the real architecture on CPU (about half a minute on 2 cores), in the default suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "winclip.npz"
pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def ours(recorded, drv, tmp_path_factory):
    """Our WinCLIP on the same weights and pixels: intermediates and predictions."""
    import open_clip
    from safetensors.torch import save_file

    from zsad_bench.context import Context
    from zsad_bench.methods.winclip import WinCLIP, WinCLIPConfig
    from zsad_bench.types import Batch, SampleRecord

    with torch.device("meta"):  # names and shapes only
        shapes = drv.shapes_of(open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16-plus-240")).state_dict())
    assert drv.keys_digest(shapes) == str(recorded["keys_digest"]), "open_clip state-dict layouts differ"
    path = tmp_path_factory.mktemp("weights") / "vit_b16_plus_240_seeded.safetensors"
    save_file({k: v.contiguous() for k, v in drv.random_state_dict(shapes).items()}, str(path))
    ctx = Context(device="cpu", seed=0, backbone_cfg={"name": "clip_vit_b16_plus_240", "weights": str(path)})

    queries = drv.preprocess(drv.make_images(drv.QUERY_SIZES, drv.SEED))
    refs = drv.preprocess(drv.make_images(drv.REFERENCE_SIZES, drv.SEED + 1))
    np.testing.assert_allclose([queries.double().sum().item(), refs.double().sum().item()], recorded["input_sum"])

    def batch(images, tag):
        n = len(images)
        recs = [SampleRecord(Path(f"{tag}{i}.png"), 0, None, "metal_nut", "good", "test", "p") for i in range(n)]
        return Batch(images, recs, [drv.CLASS_NAME] * len(images))

    m = WinCLIP(WinCLIPConfig(cache=False))
    m.setup(ctx)
    qb = batch(queries, "q")
    feats = m.features(qb, patches=True)
    out = {"text": m.text_embeddings(drv.CLASS_NAME), "feats": feats, "zero": m.predict(qb)}
    m.set_references(batch(refs, "r"))
    out["few"] = m.predict(qb)
    out["step"] = json.loads(str(recorded["meta"]))["window_step"]
    return out


MAP_ATOL = 1e-6  # scores and maps (values ~0.3-0.5, spread ~1e-2); the issue asks 1e-4
EMB_TOL = 1e-4  # embeddings (entries up to ~4): absolute and relative


def close(actual, expected, atol=MAP_ATOL, rtol=0.0):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float32), expected, atol=atol, rtol=rtol)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_text_embeddings(recorded, ours):
    close(unit(ours["text"]), unit(recorded["text_embeddings"]), atol=1e-6)


def test_image_window_and_patch_embeddings(recorded, ours):
    f, step = ours["feats"], ours["step"]
    close(f["embed"], recorded["image_embeddings"], atol=EMB_TOL, rtol=EMB_TOL)
    close(f["windows"][0][0, ::step], recorded["windows2_image0"], atol=EMB_TOL, rtol=EMB_TOL)
    close(f["windows"][1][0, ::step], recorded["windows3_image0"], atol=EMB_TOL, rtol=EMB_TOL)
    close(f["patches"][0, ::step], recorded["patch_embeddings_image0"], atol=EMB_TOL, rtol=EMB_TOL)


def test_scores_spread_enough_to_mean_something(recorded):
    """Guard against a degenerate fixture: the maps must vary far more than the tolerance.

    With random weights the zero-shot probabilities stay near 0.5 (spread ~9e-3), so the maps are
    compared at MAP_ATOL = 1e-6 (measured agreement: 2.4e-7), not only at the issue's 1e-4.
    """
    assert np.ptp(recorded["zero_grid"]) > 1000 * MAP_ATOL
    assert np.ptp(recorded["few_grid"]) > 1000 * MAP_ATOL


def test_zero_shot_scores_and_maps(recorded, ours):
    zero = ours["zero"]
    close(zero.image_scores, recorded["zero_image_scores"])
    close(zero.anomaly_maps[0], recorded["zero_map_image0"])


def test_few_shot_scores_and_maps(recorded, ours):
    few = ours["few"]
    close(few.image_scores, recorded["few_image_scores"])
    close(few.anomaly_maps[0], recorded["few_map_image0"])


def test_grids(recorded, ours):
    """The 15×15 maps before upsampling: zero-shot, and few-shot = 2·final − zero-shot."""
    import torch.nn.functional as F

    zero_grid = torch.from_numpy(recorded["zero_grid"])
    up = F.interpolate(zero_grid[:, None], size=(240, 240), mode="bilinear", align_corners=False)[:, 0]
    close(ours["zero"].anomaly_maps, up.numpy())
    few_final = (zero_grid + torch.from_numpy(recorded["few_grid"])) / 2
    up = F.interpolate(few_final[:, None], size=(240, 240), mode="bilinear", align_corners=False)[:, 0]
    close(ours["few"].anomaly_maps, up.numpy())
