"""Parity with caoyunkang/WinClip's ``WinClipAD`` (fixture recorded by ``tests/parity/drivers/winclip_caoyunkang.py``).

Same seeded random ViT-B-16-plus-240 weights (the shared ``seeded_clip_file``, loaded from a file through
the library's weight resolution), the same PNG files read through the evaluation loop's preprocessing
(equal to the code's own PIL transform), our ``winclip`` with ``variant=caoyunkang``: text features,
window embeddings, the textual (zero-shot) and visual (1-shot) 15×15 grids, maps and image scores must
equal what the code computed, in fp32.

Two quirks of the code (both in ``docs/fidelity.md``): its zero-shot map is ``1/(1/t + 1/t) = t/2`` (the
1-shot fusion applied with the textual map standing in for the missing visual one: a uniform factor, no
metric changes; reproduced here on top of our outputs), and its 1-shot loop switches to the 3×3
reference gallery one window late, so the first 3×3 window (top-left) is scored against the 2×2 gallery:
our ``late_gallery=true`` reproduces it; with the default (false) our maps equal the code's wherever that
window has no influence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "winclip_caoyunkang.npz"
DRIVER = HERE / "drivers" / "winclip_caoyunkang.py"
REGENERATE = (
    "regenerate with: python tests/parity/drivers/winclip_caoyunkang.py --winclip <caoyunkang/WinClip checkout>"
)
ATOL = 1e-5  # grids, maps and scores (values 0.1-0.7, spread > 0.05; logit scale 100): the issue asks 1e-4
EMB_TOL = 1e-6  # unit-norm window and text embeddings (640 entries, |x| < 0.2)
QUIRK_PATCHES = 3  # the late-switched 3×3 window covers patches [0, 3)² of the 15×15 grid
pytestmark = pytest.mark.parity


class Setup:
    """Our WinCLIP (``variant=caoyunkang``) on the recorded weights and the recorded images."""

    def __init__(self, drv, rec: dict, folder: Path, seeded_clip_file, pngs) -> None:
        import open_clip

        from zsad_bench.context import Context
        from zsad_bench.feature_cache import FeatureCache
        from zsad_bench.methods.winclip import WinCLIP, WinCLIPConfig

        with torch.device("meta"):
            meta = open_clip.model.CLIP(**open_clip.get_model_config(drv.MODEL)).state_dict()
        assert sorted(meta) == list(rec["keys"]), "open_clip's state-dict names differ from the code's"
        path, digest = seeded_clip_file(drv.MODEL, drv.seed())
        assert digest == str(rec["weights_digest"]), f"seeded weights changed: {REGENERATE}"
        cache = FeatureCache(folder / "cache", dtype="fp32")  # query features computed once for both modes
        bb = {"name": "clip_vit_b16_plus_240", "weights": str(path)}
        self.ctx = Context(device="cpu", seed=0, backbone_cfg=bb, cache=cache)
        self.m = WinCLIP(WinCLIPConfig(variant="caoyunkang"))
        self.m.setup(self.ctx)
        self.pngs = pngs
        queries, refs = drv.make_inputs()
        self.qb = self._batch(drv, queries, folder, "test")
        rb = self._batch(drv, refs, folder, "train")
        sums = [self.qb.images.double().sum().item(), rb.images.double().sum().item()]
        np.testing.assert_allclose(sums, rec["input_sum"], rtol=1e-12, err_msg="pixels differ from the code's")
        with torch.no_grad():
            self.text = self.m.text_embeddings(drv.CLASS)  # (2, 640)
            self.feats = self.m.features(self.qb)
            self.zero = self.m.predict(self.qb)
            self.m.set_references(rb)
            self.few = self.m.predict(self.qb)
            self.m.cfg.late_gallery = True
            self.few_late = self.m.predict(self.qb)
            self.m.cfg.late_gallery = False
            self.ref_feats = self.m.features(rb)
        self.step = drv.WINDOW_STEP

    def _batch(self, drv, images: list[np.ndarray], folder: Path, split: str):
        """PNG files → the evaluation loop's preprocessing → a Batch (class words ``metal_nut`` verbatim)."""
        from zsad_bench.types import Batch, SampleRecord

        paths = [folder / f"{split}_{i}.png" for i in range(len(images))]
        recs = [SampleRecord(path, 0, None, drv.CLASS, "x", split, "mvtec_ad") for path in paths]
        return Batch(self.pngs(self.ctx.backbone, images, paths), recs, [drv.CLASS] * len(images))

    def textual_grid(self) -> torch.Tensor:
        """Our zero-shot 15×15 grids (B, 15, 15)."""
        from zsad_bench.methods.winclip import zero_shot_scores

        text = self.text[None].expand(len(self.qb), -1, -1)
        grid = self.ctx.backbone.grid_size
        return zero_shot_scores(self.feats, text, self.m.covers, grid, self.m.settings)[1]

    def visual_grid(self, late_switch: bool) -> torch.Tensor:
        """Our 1-shot 15×15 grids; ``late_switch``: the code's first 3×3 window against the 2×2 gallery."""
        from zsad_bench.methods.winclip import mean_over_windows, visual_association

        memory = [w.reshape(-1, w.shape[-1]) for w in self.ref_feats["windows"]]
        per_scale = []
        for k, (w_emb, cover) in enumerate(zip(self.feats["windows"], self.m.covers, strict=True)):
            scores = visual_association(w_emb, memory[k])  # (B, W)
            if late_switch and k == 1:
                scores[:, 0] = visual_association(w_emb[:, :1], memory[0])[:, 0]
            per_scale.append(mean_over_windows(scores, cover))
        return torch.stack(per_scale).mean(dim=0).reshape(-1, *self.ctx.backbone.grid_size)

    def fused_maps(self, visual: torch.Tensor) -> torch.Tensor:
        """The code's fusion 1/(1/t + 1/v) and bilinear upsampling of the grids, (B, 240, 240)."""
        fused = 1.0 / (1.0 / self.textual_grid() + 1.0 / visual)
        size = tuple(self.qb.images.shape[-2:])
        return torch.nn.functional.interpolate(fused[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@pytest.fixture(scope="module")
def s(drv, recorded, tmp_path_factory, seeded_clip_file, pngs):
    return Setup(drv, recorded, tmp_path_factory.mktemp("winclip_caoyunkang"), seeded_clip_file, pngs)


def diff(actual, expected) -> float:
    return float(np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64)).max())


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def unaffected(size: int, grid: int) -> np.ndarray:
    """(size, size) pixels whose bilinear sources avoid the patches [0, QUIRK_PATCHES)² of the grid."""
    src = np.floor((np.arange(size) + 0.5) * grid / size - 0.5)  # the lower source index of each pixel
    clear = src >= QUIRK_PATCHES  # both sources (src, src + 1) are clear of the first patches
    return clear[:, None] | clear[None, :]


def test_recording_is_informative(recorded):
    for key in ("zero/textual_grid", "few/visual_grid", "zero/maps", "few/maps"):
        assert np.ptp(recorded[key]) > 1000 * ATOL, (key, np.ptp(recorded[key]))
    assert abs(recorded["zero/scores"][0] - recorded["zero/scores"][1]) > 10 * ATOL


def test_text_features(s, recorded):
    assert diff(unit(s.text), recorded["text_features"]) <= EMB_TOL


def test_window_embeddings(s, recorded):
    for k, key in enumerate(("windows2", "windows3")):
        assert diff(unit(s.feats["windows"][k][:, :: s.step]), recorded[key]) <= EMB_TOL, key


def test_zero_shot_grid(s, recorded):
    assert diff(s.textual_grid(), recorded["zero/textual_grid"]) <= ATOL
    assert diff(s.textual_grid(), recorded["few/textual_grid"]) <= ATOL


def test_zero_shot_maps_and_scores(s, recorded):
    """The code's zero-shot map is half the textual map (1/(1/t + 1/t)); its image score the map's maximum."""
    assert diff(s.zero.anomaly_maps / 2, recorded["zero/maps"]) <= ATOL
    assert diff(s.zero.image_scores / 2, recorded["zero/scores"]) <= ATOL


def test_one_shot_visual_grid(s, recorded):
    ours = s.visual_grid(late_switch=False).numpy()
    rec = recorded["few/visual_grid"]
    clear = np.ones(ours.shape[1:], bool)
    clear[:QUIRK_PATCHES, :QUIRK_PATCHES] = False
    assert diff(ours[:, clear], rec[:, clear]) <= ATOL
    assert diff(ours[:, ~clear], rec[:, ~clear]) > 100 * ATOL  # the late switch is real, and visible here
    assert diff(s.visual_grid(late_switch=True), rec) <= ATOL


def test_one_shot_maps_and_scores(s, recorded):
    rec = recorded["few/maps"]
    ours = s.few.anomaly_maps.numpy()
    clear = unaffected(ours.shape[-1], s.ctx.backbone.grid_size[0])
    assert diff(ours[:, clear], rec[:, clear]) <= ATOL
    assert diff(s.fused_maps(s.visual_grid(late_switch=False)), ours) <= ATOL  # our pieces are our predict
    assert diff(s.few.image_scores, ours.reshape(len(ours), -1).max(axis=1)) == 0.0
    assert diff(s.fused_maps(s.visual_grid(late_switch=True)), s.few_late.anomaly_maps) <= ATOL


def test_late_gallery_switch_equals_the_code_everywhere(s, recorded):
    assert diff(s.few_late.anomaly_maps, recorded["few/maps"]) <= ATOL
    assert diff(s.few_late.image_scores, recorded["few/scores"]) <= ATOL
