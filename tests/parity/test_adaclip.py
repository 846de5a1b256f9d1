"""Parity with the official AdaCLIP code (fixture recorded by ``tests/parity/drivers/adaclip.py``).

Same seeded random CLIP ViT-B/16 weights (224 px, GELU, layers 3/6/9/12), the same learnable
parameters (the code's names converted by :func:`from_official_state_dict`), the same pixels and the
code's k-means labels replayed through ``ctx.hooks["adaclip.kmeans"]``: the smoothed anomaly maps and
image scores of three images (one batch on our side, three batches of 1 on the code's) and the
training loss of one image must agree. Runs a ViT-B/16 on CPU: opt in with ``-m parity`` or ``-m slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "adaclip.npz"
pytestmark = [pytest.mark.parity, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(recorded, drv, tmp_path_factory):
    """Our AdaCLIP on the recorded weights, parameters and k-means labels; the batch of recorded images."""
    from safetensors.torch import save_file

    from zsad_bench.context import Context
    from zsad_bench.methods.adaclip import KMEANS_HOOK, AdaCLIP, AdaCLIPConfig, from_official_state_dict
    from zsad_bench.types import Batch, SampleRecord

    base = {"name": "clip_vit_b16", "input_size": drv.SIZE, "activation": "gelu", "pos_antialias": False}
    probe = Context(device="cpu", seed=0, backbone_cfg={**base, "weights": "random"})
    shapes = {k: tuple(v.shape) for k, v in probe.backbone.model.state_dict().items()}
    assert drv.keys_digest(shapes) == str(recorded["keys_digest"]), "the code's CLIP and open_clip's differ"
    path = tmp_path_factory.mktemp("weights") / "vit_b16_seeded.safetensors"
    save_file({k: v.contiguous() for k, v in drv.random_state_dict(shapes).items()}, str(path))

    labels = list(recorded["kmeans_labels"])

    def replay(data, n_clusters, random_state):
        assert (data.shape[0], n_clusters) == (len(labels[0]), 20)
        return labels.pop(0)

    method = AdaCLIP(AdaCLIPConfig())
    ctx = Context(device="cpu", seed=0, backbone_cfg={**base, "weights": str(path)}, hooks={KMEANS_HOOK: replay})
    method.setup(ctx)
    assert method.layers == drv.LAYERS
    shapes = {k: tuple(v) for k, v in json.loads(str(recorded["learnable_shapes"])).items()}
    method.load_learnable_state(from_official_state_dict(drv.learnable_values(shapes), method.layers))

    names = [str(n) for n in recorded["class_names"]]
    records = [SampleRecord(Path(f"{i}.png"), 1, None, n, "defect", "test", "parity") for i, n in enumerate(names)]
    batch = Batch(drv.to_tensor(recorded["images"]), records, names)
    return method, batch, labels, drv


def test_maps_and_scores_match_the_official_code(setup, recorded):
    method, batch, _, _ = setup
    pred = method.predict(batch)  # all three images in one batch
    np.testing.assert_allclose(pred.anomaly_maps.numpy(), recorded["maps"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(pred.image_scores.numpy(), recorded["scores"], rtol=0, atol=2e-5)


def test_training_loss_matches_the_official_code(setup, recorded):
    method, batch, labels, drv = setup
    if len(labels) != 1:
        pytest.skip("needs the predictions test's k-means labels consumed first")
    one = type(batch)(batch.images[:1], batch.records[:1], batch.class_names[:1])
    one.labels = torch.tensor([1])
    one.masks = torch.from_numpy(drv.mask_of(0))[None]
    labels.append(labels[0].copy())  # the same clustering again for the control below
    method.set_training(True)
    with torch.no_grad():
        loss = float(sum(method.training_step(one).values()))
        method.cfg.dice = "image"  # control: the per-image dice the loss was written for
        per_image = float(sum(method.training_step(one).values()))
    method.cfg.dice = "row"
    method.set_training(False)
    np.testing.assert_allclose(loss, float(recorded["train_loss"]), rtol=1e-5)
    assert abs(per_image - loss) > 1e-3 * loss  # the code's batch-1 dice is per mask row
