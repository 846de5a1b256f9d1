"""Parity with gaobb/AdaptCLIP's ``test.py``, zero-shot and 1-shot (fixture by ``tests/parity/drivers/adaptclip.py``).

For ``full`` (ViT-L/14@336 at 518, positional embedding resized 24→37 bilinearly, QuickGELU: the
released scripts' model) and ``reduced`` (a width-64 24-block ViT at 70 px): the same seeded CLIP weights
(loaded from a file through the library's weight resolution; full size: the suite's shared file,
checked by digest), the same PNG files through our evaluation loop's preprocessing (checked against
the pixels the reference's encoder received), the same seeded adapters (the official checkpoint's
tensors through :func:`convert_official_checkpoint` into our ``adaptclip`` defaults, fp32 features).
Our branches' image logits and maps (visual adapter, textual adapter, the prompt-query adapter's four
layers and align maps) and the fused maps and image scores must match what the reference computed
(measured values in ``docs/fidelity.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "adaptclip.npz"
ATOL = 1e-5  # probabilities, maps, scores; logits as cosines (see `Setup.close`); the spreads are 0.01-0.3
REGENERATE = (
    "regenerate with: python tests/parity/drivers/adaptclip.py --adaptclip <gaobb/AdaptCLIP at 354d9e33> --arch"
)
pytestmark = pytest.mark.parity


class Setup:
    """Our method on the recorded weights and adapters, and the batches of the recorded images."""

    def __init__(self, drv, recorded, key: str, folder: Path, seeded_clip_file, pngs) -> None:
        from zsad_bench.context import Context
        from zsad_bench.feature_cache import FeatureCache
        from zsad_bench.methods.adaptclip import AdaptCLIP, AdaptCLIPConfig

        self.rec = {k.removeprefix(f"{key}/"): v for k, v in recorded.items() if k.startswith(f"{key}/")}
        if not self.rec:
            pytest.skip(f"{FIXTURE} has no {key!r} recording: {REGENERATE} {key}")
        self.key, self.arch, self.atol, self.drv = key, drv.ARCHS[key], ATOL, drv
        shapes = drv.clip_shapes(key)
        layout_ok = drv.winclip_driver().keys_digest(shapes) == str(self.rec["keys_digest"])
        assert layout_ok, f"open_clip's state-dict layout differs from the recorded one: {REGENERATE} {key}"
        if self.arch.full:
            path, digest = seeded_clip_file(self.arch.model, self.arch.seed)
            bb = {"name": "clip_vit_l14_336"}  # 518, the code's mean/std and bicubic resize
        else:
            path, digest = self._write_weights(drv, key, folder)
            bb = {"name": "clip", "arch": self.arch.model, "pretrained": "", "input_size": self.arch.size}
        assert digest == str(self.rec["weights_digest"]), f"seeded CLIP weights changed: {REGENERATE} {key}"
        bb.update(activation="quick_gelu", pos_interp="bilinear", pos_antialias=False, weights=str(path))
        cache = FeatureCache(folder / "cache", dtype="fp32")  # each image's tokens computed once, stored exactly
        self.ctx = Context(device="cpu", seed=0, backbone_cfg=bb, cache=cache)
        self.method = AdaptCLIP(AdaptCLIPConfig(feature_dtype="fp32"))
        self.method.setup(self.ctx)
        self._load_adapters(drv)
        tests, prompts = drv.make_inputs(key)
        self.categories = [c for c, *_ in tests]
        self.pngs = pngs
        self.test_batch = self._batch([img for _, _, img, _ in tests], self.categories, folder, "test")
        self.prompt_batch = self._batch([img for _, img in prompts], [c for c, _ in prompts], folder, "train")

    @staticmethod
    def _write_weights(drv, key: str, folder: Path) -> tuple[Path, str]:
        from safetensors.torch import save_file

        weights = drv.clip_weights(key)
        path = folder / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
        return path, drv.april_gan_driver().tensor_digest(weights)

    def _load_adapters(self, drv) -> None:
        """The official checkpoint's seeded tensors, converted; every float tensor of ours must come from it."""
        from zsad_bench.methods.adaptclip import convert_official_checkpoint

        layout = json.loads(str(self.rec["adapter_layout"]))
        tensors = drv.adapter_state(layout)
        digest = drv.april_gan_driver().tensor_digest(tensors)
        assert digest == str(self.rec["adapter_digest"]), f"seeded adapters changed: {REGENERATE} {self.key}"
        official: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            group, name = key.split(".", 1)
            official.setdefault(group, {})[name] = value
        m = self.method
        state = m.learnable_state()
        converted = convert_official_checkpoint(official)
        floats = {k for k, v in state.items() if v.is_floating_point()}
        assert floats == set(converted), sorted(floats ^ set(converted))
        m.load_learnable_state({**state, **converted})
        m.set_training(False)

    def _batch(self, images, categories, folder: Path, split: str):
        """PNG files → the evaluation loop's preprocessing → a Batch."""
        from zsad_bench.types import Batch, SampleRecord

        paths = [folder / f"{split}_{i}.png" for i in range(len(images))]
        recs = [
            SampleRecord(path, 0, None, category, "x", split, "mvtec_ad")
            for path, category in zip(paths, categories, strict=True)
        ]
        return Batch(self.pngs(self.ctx.backbone, images, paths), recs, list(categories))

    def subset(self, batch, category: str):
        """The items of one category (references are per category)."""
        from zsad_bench.types import Batch

        idx = [i for i, r in enumerate(batch.records) if r.category == category]
        return Batch(batch.images[idx], [batch.records[i] for i in idx], [batch.categories[i] for i in idx]), idx

    def ref(self, name: str, idx: list[int] | None = None) -> np.ndarray:
        """A recorded array (its subsampled form at full size), rows ``idx``."""
        value = self.rec[f"{name}_sub"] if f"{name}_sub" in self.rec else self.rec[name]
        return value if idx is None else value[idx]

    def sub(self, ours: np.ndarray, name: str) -> np.ndarray:
        """Our array subsampled as the driver stored the recorded one."""
        step = self.drv.sub_step(name) if self.arch.full else 1
        return ours if step == 1 else ours[..., ::step, ::step]

    def close(self, ours: torch.Tensor, name: str, idx: list[int] | None = None, logits: bool = False) -> float:
        """Largest difference to the recording (subsampled as recorded); fails above the tolerance.

        Image logits of VA and TA are cos/0.07 (compared as cosines: × 0.07); the prompt-query
        adapter's logits relative to their largest magnitude (at least 1).
        """
        ref = self.ref(name, idx)
        ours_np = self.sub(ours.detach().float().numpy(), name)
        scale = 1.0
        if logits:
            scale = 1 / 0.07 if "pq_" not in name else max(1.0, float(np.abs(ref).max()))
        gap = float(np.abs(ours_np - ref).max())
        assert gap <= self.atol * scale, f"{self.key} {name}: largest difference {gap:.2e}"
        return gap / scale


@pytest.fixture(scope="module", params=["reduced", "full"])
def s(request, drv, recorded, tmp_path_factory, seeded_clip_file, pngs):
    folder = tmp_path_factory.mktemp(f"adaptclip_{request.param}")
    return Setup(drv, recorded, request.param, folder, seeded_clip_file, pngs)


def test_recordings_are_informative(s):
    for shots in (0, 1):
        maps = s.ref(f"shot{shots}.maps")
        spread = np.ptp(maps.reshape(len(maps), -1), axis=1)
        assert (spread > 100 * s.atol).all(), spread  # agreement to atol constrains these maps
        assert np.ptp(s.rec[f"shot{shots}.scores"]) > 100 * s.atol
    assert np.abs(s.ref("shot1.maps") - s.ref("shot0.maps")).max() > 100 * s.atol  # the shot matters


def test_pixels_equal_what_the_reference_encoded(s):
    for name, batch in (("test_inputs", s.test_batch), ("prompt_inputs", s.prompt_batch)):
        np.testing.assert_allclose(s.sub(batch.images.numpy(), name), s.ref(name), rtol=0, atol=1e-6)


def test_zero_shot_equals_the_official_test_py(s):
    m, batch = s.method, s.test_batch
    with torch.no_grad():
        branches = m.zero_shot_branches(m.image_features(batch), batch.images.shape[-1])
    gaps = {}
    for ours, ref in (("visual", "va"), ("textual", "ta")):
        probs, logits = branches[ours]
        gaps[f"{ref}_logits"] = s.close(logits, f"shot0.{ref}_logits", logits=True)
        gaps[f"{ref}_maps"] = s.close(probs[:, 1], f"shot0.{ref}_maps")
    pred = m.predict(batch)
    gaps["maps"] = s.close(pred.anomaly_maps, "shot0.maps")
    gaps["scores"] = s.close(pred.image_scores, "shot0.scores")
    print(f"{s.key} zero-shot largest differences: {gaps}")


def test_one_shot_equals_the_official_test_py(s):
    m, gaps = s.method, {}

    def keep(name: str, gap: float) -> None:
        gaps[name] = max(gaps.get(name, 0.0), gap)

    try:
        for category in sorted(set(s.categories)):
            m.set_references(s.subset(s.prompt_batch, category)[0])
            batch, idx = s.subset(s.test_batch, category)
            with torch.no_grad():
                layers = m.pqa_layers(m.image_features(batch), m._batch_memory(batch), s.arch.size)
            keep("pq_maps", s.close(torch.stack([p[:, 1] for p, _, _ in layers], 1), "shot1.pq_maps", idx))
            keep("pq_logits", s.close(torch.stack([g for _, g, _ in layers], 1), "shot1.pq_logits", idx, logits=True))
            keep("pq_align", s.close(torch.stack([a for _, _, a in layers], 1), "shot1.pq_align", idx))
            pred = m.predict(batch)
            keep("maps", s.close(pred.anomaly_maps, "shot1.maps", idx))
            keep("scores", s.close(pred.image_scores, "shot1.scores", idx))
            if "shot1.map1" in s.rec and 1 in idx:  # full size: the defective image's map, every pixel
                keep("map1", s.close(pred.anomaly_maps[idx.index(1)], "shot1.map1"))
    finally:
        m.clear_references()
    print(f"{s.key} 1-shot largest differences: {gaps}")


def test_converter_refuses_unknown_tensors():
    from zsad_bench.methods.adaptclip import convert_official_checkpoint

    with pytest.raises(KeyError, match=r"visual_learner\.bogus"):
        convert_official_checkpoint({"visual_learner": {"bogus.fc.0.weight": torch.zeros(1)}})
