"""Parity with gaobb/AdaptCLIP's ``test.py``, zero-shot and 1-shot (fixture by ``tests/parity/drivers/adaptclip.py``).

Same seeded weights of a 24-block CLIP ViT with a 768-d joint embedding (trained size 56, run at 70:
the positional embedding is resized bilinearly on both sides), same preprocessed pixels, same seeded
adapters: the official checkpoint's tensors go through :func:`convert_official_checkpoint` into our
``adaptclip`` defaults (fp32 features). Our branches' image logits and maps (visual adapter, textual
adapter, the prompt-query adapter's four layers and align maps) and the fused maps and image scores
must match what the reference computed (measured values in ``docs/fidelity.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "adaptclip.npz"
ATOL = 1e-5  # probabilities, maps, scores; logits: times max(1, their largest magnitude)
pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def method(recorded, drv, seeded_tiny_clip):
    """Our adaptclip on the recorded CLIP weights and the converted official adapters."""
    from zsad_bench.context import Context
    from zsad_bench.methods.adaptclip import AdaptCLIP, AdaptCLIPConfig, convert_official_checkpoint

    native = drv.CONFIG["vision_cfg"]["image_size"]
    cfg, path = seeded_tiny_clip(native, activation="quick_gelu", pos_interp="bilinear", pos_antialias=False)
    ctx = Context(device="cpu", seed=0, backbone_cfg={**cfg, "weights": str(path)})
    m = AdaptCLIP(AdaptCLIPConfig(feature_dtype="fp32"))
    m.setup(ctx)
    official: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in drv.adapter_state(json.loads(str(recorded["adapter_layout"]))).items():
        group, name = key.split(".", 1)
        official.setdefault(group, {})[name] = value
    state = m.learnable_state()
    converted = convert_official_checkpoint(official)
    floats = {k for k, v in state.items() if v.is_floating_point()}
    assert floats == set(converted), sorted(floats ^ set(converted))  # every learnable tensor comes from the file
    m.load_learnable_state({**state, **converted})
    m.set_training(False)
    return m


def batch_of(images, categories):
    from zsad_bench.types import Batch, SampleRecord

    recs = [SampleRecord(Path(f"p{i}.png"), 0, None, str(c), "x", "test", "mvtec") for i, c in enumerate(categories)]
    return Batch(torch.from_numpy(images), recs, [str(c) for c in categories])


def close(ours: torch.Tensor, ref: np.ndarray, what: str, scale: float = 1.0) -> float:
    gap = float(np.abs(ours.detach().float().numpy() - ref).max())
    assert gap <= ATOL * scale, f"{what}: largest difference {gap:.2e}"
    return gap


def test_recordings_are_informative(recorded):
    for shots in (0, 1):
        spread = np.ptp(recorded[f"shot{shots}.maps"].reshape(4, -1), axis=1)
        assert (spread > 100 * ATOL).all(), spread  # agreement to ATOL constrains these maps
        assert np.ptp(recorded[f"shot{shots}.scores"]) > 100 * ATOL
    assert np.abs(recorded["shot1.maps"] - recorded["shot0.maps"]).max() > 100 * ATOL  # the shot matters


def test_zero_shot_equals_the_official_test_py(recorded, method):
    batch = batch_of(recorded["test_inputs"], recorded["test_categories"])
    with torch.no_grad():
        feats = method.image_features(batch)
        branches = method.zero_shot_branches(feats, batch.images.shape[-1])
    gaps = {}
    for ours, ref in (("visual", "va"), ("textual", "ta")):
        probs, logits = branches[ours]
        scale = float(np.abs(recorded[f"shot0.{ref}_logits"]).max())
        gaps[f"{ref}_logits"] = close(logits, recorded[f"shot0.{ref}_logits"], f"{ours} logits", max(1.0, scale))
        gaps[f"{ref}_maps"] = close(probs[:, 1], recorded[f"shot0.{ref}_maps"], f"{ours} maps")
    pred = method.predict(batch)
    gaps["maps"] = close(pred.anomaly_maps, recorded["shot0.maps"], "fused maps")
    gaps["scores"] = close(pred.image_scores, recorded["shot0.scores"], "image scores")
    print(f"zero-shot largest differences: {gaps}")


def test_one_shot_equals_the_official_test_py(recorded, method, drv):
    cats = recorded["test_categories"]
    gaps: dict[str, float] = {}
    try:
        for j, category in enumerate(drv.CLASSES):
            method.set_references(batch_of(recorded["prompt_inputs"][j : j + 1], [category]))
            idx = [i for i, c in enumerate(cats) if c == category]
            batch = batch_of(recorded["test_inputs"][idx], cats[idx])
            with torch.no_grad():
                layers = method.pqa_layers(method.image_features(batch), method._batch_memory(batch), drv.SIZE)
            for name, ours in (("pq_maps", torch.stack([p[:, 1] for p, _, _ in layers], 1)),
                               ("pq_logits", torch.stack([g for _, g, _ in layers], 1)),
                               ("pq_align", torch.stack([a for _, _, a in layers], 1))):  # fmt: skip
                ref = recorded[f"shot1.{name}"][idx]
                scale = max(1.0, float(np.abs(ref).max())) if name == "pq_logits" else 1.0
                gaps[name] = max(gaps.get(name, 0.0), close(ours, ref, f"{category} {name}", scale))
            pred = method.predict(batch)
            for name, ours in (("maps", pred.anomaly_maps), ("scores", pred.image_scores)):
                gaps[name] = max(gaps.get(name, 0.0), close(ours, recorded[f"shot1.{name}"][idx], f"{category} {name}"))
    finally:
        method.clear_references()
    print(f"1-shot largest differences: {gaps}")


def test_converter_refuses_unknown_tensors():
    from zsad_bench.methods.adaptclip import convert_official_checkpoint

    with pytest.raises(KeyError, match=r"visual_learner\.bogus"):
        convert_official_checkpoint({"visual_learner": {"bogus.fc.0.weight": torch.zeros(1)}})
