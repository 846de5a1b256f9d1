"""Parity with the official APRIL-GAN ``test.py`` (fixture recorded by ``tests/parity/drivers/april_gan.py``).

Same seeded random CLIP weights (loaded from a file through the library's weight resolution), the
same linear layers (the official checkpoint converted by :func:`from_official_checkpoint`), the same
PNG files read through the evaluation loop's preprocessing, our ``april_gan`` with its defaults (the
official configuration): text embeddings, global embeddings, per-layer logits, anomaly maps and image
scores, zero-shot and 1-shot, must equal what the official code computed, for ``full`` (ViT-L-14-336
at 518) and ``reduced`` (a width-64 ViT-L structure at 84 px, 24 blocks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "april_gan.npz"
DRIVER = HERE / "drivers" / "april_gan.py"
ATOL = 1e-4  # maps (range [0, 4], 1-shot [0, 12]) and scores
REGENERATE = "regenerate with: python tests/parity/drivers/april_gan.py --april-gan <VAND-APRIL-GAN checkout>"
pytestmark = pytest.mark.parity


class Setup:
    """Our method on the recorded weights, and the batches of the recorded images."""

    def __init__(self, drv, recorded, key: str, folder: Path, seeded_clip_file, pngs) -> None:
        from zsad_bench.context import Context
        from zsad_bench.feature_cache import FeatureCache
        from zsad_bench.methods.april_gan import APRILGAN, APRILGANConfig, from_official_checkpoint

        self.rec = {k.removeprefix(f"{key}/"): v for k, v in recorded.items() if k.startswith(f"{key}/")}
        if not self.rec:
            pytest.skip(f"{FIXTURE} has no {key!r} recording: {REGENERATE} --arch {key}")
        arch = drv.ARCHS[key]
        model_cfg = self._model_config(arch, folder)
        with torch.device("meta"):
            import open_clip

            shapes = {k: tuple(v.shape) for k, v in open_clip.model.CLIP(**model_cfg).state_dict().items()}
        assert sorted(shapes) == list(self.rec["keys"]), "open_clip's state-dict names differ from the code's"
        path, digest = seeded_clip_file(arch.model, drv.SEED)
        assert digest == str(self.rec["weights_digest"]), f"seeded weights changed: {REGENERATE}"
        if arch.config:
            bb = {"name": "clip", "arch": arch.model, "pretrained": "", "input_size": arch.size}
            bb.update(activation="gelu", pos_interp="bicubic", pos_antialias=True)  # as the code's factory
        else:
            bb = {"name": "clip_vit_l14_336"}  # its registered defaults are the code's (518, GELU, bicubic + antialias)
        cache = FeatureCache(folder / "cache", dtype="fp32")  # each image's tokens computed once, stored exactly
        self.ctx = Context(device="cpu", seed=0, backbone_cfg={**bb, "weights": str(path)}, cache=cache)
        self.method = APRILGAN(APRILGANConfig())
        self.method.setup(self.ctx)
        official = drv.linear_checkpoint(model_cfg["vision_cfg"]["width"], model_cfg["embed_dim"])
        assert drv.tensor_digest(official["trainable_linearlayer"]) == str(self.rec["linear_digest"]), REGENERATE
        self.method.load_learnable_state(from_official_checkpoint(official, self.method.cfg.layers))
        self.pngs = pngs
        tests, ref = drv.make_inputs(arch.hw)
        self.test_batch = self._batch(drv, [img for _, img, _ in tests], folder, "test")
        self.ref_batch = self._batch(drv, [ref], folder, "train")
        self.size, self.sub = arch.size, drv.SUB

    @staticmethod
    def _model_config(arch, folder: Path) -> dict:
        import json

        import open_clip

        if arch.config and arch.model not in open_clip.list_models():
            (folder / f"{arch.model}.json").write_text(json.dumps(arch.config))
            open_clip.add_model_config(folder / f"{arch.model}.json")
        return open_clip.get_model_config(arch.model)

    def _batch(self, drv, images, folder: Path, split: str):
        """PNG files → the evaluation loop's preprocessing → a Batch (class words differ from the folder)."""
        from zsad_bench.types import Batch, SampleRecord

        paths = [folder / f"{split}_{i}.png" for i in range(len(images))]
        recs = [SampleRecord(path, 0, None, drv.CLASS, "x", split, "mvtec_ad") for path in paths]
        return Batch(self.pngs(self.ctx.backbone, images, paths), recs, [drv.CLASS.replace("_", " ")] * len(images))

    def logits(self) -> np.ndarray:
        """Per-layer logits before upsampling, as the code lays them out: (B, L, 2, g, g)."""
        import torch.nn.functional as F

        from zsad_bench.heads import apply_layers

        m = self.method
        tokens, _ = m._features(self.test_batch)
        text = m._text_for(self.test_batch)  # (B, 2, E)
        grid = self.ctx.backbone.grid_size
        with torch.no_grad():
            out = [
                (m.cfg.logit_scale * F.normalize(t, dim=-1) @ text.transpose(1, 2))
                .transpose(1, 2)
                .reshape(-1, 2, *grid)
                for t in apply_layers(m.proj, tokens).values()
            ]
        return torch.stack(out, dim=1).numpy()

    def memory_distances(self) -> np.ndarray:
        """Per-layer min over the memory of (1 − cos), before upsampling: (B, L, g, g)."""
        import torch.nn.functional as F

        m = self.method
        tokens, _ = m._features(self.test_batch)
        grid = self.ctx.backbone.grid_size
        with torch.no_grad():
            out = [(1 - F.normalize(t, dim=-1) @ m._memory[layer].T).amin(dim=-1) for layer, t in tokens.items()]
        return torch.stack(out, dim=1).reshape(-1, len(out), *grid).numpy()

    def check_maps(self, ours: np.ndarray, mode: str) -> float:
        """Compare with the recorded maps (every pixel, or every SUB-th plus one image in full); max difference."""
        if f"{mode}/maps" in self.rec:
            diff = np.abs(ours - self.rec[f"{mode}/maps"]).max()
        else:
            sub = ours[:, :: self.sub, :: self.sub]
            diff = max(
                np.abs(sub - self.rec[f"{mode}/maps_sub"]).max(), np.abs(ours[1] - self.rec[f"{mode}/map1"]).max()
            )
        assert diff <= ATOL, f"{mode} maps differ by {diff}"
        return float(diff)


ARCH_PARAMS = ["reduced", "full"]


@pytest.fixture(scope="module", params=ARCH_PARAMS)
def s(request, drv, recorded, tmp_path_factory, seeded_clip_file, pngs):
    folder = tmp_path_factory.mktemp(f"april_gan_{request.param}")
    return Setup(drv, recorded, request.param, folder, seeded_clip_file, pngs)


def test_recordings_are_informative(s):
    assert np.ptp(s.rec["zero/scores"]) > 10 * ATOL, s.rec["zero/scores"]  # full: random CLIP puts them near 0.5
    maps = s.rec.get("zero/maps", s.rec.get("zero/maps_sub"))
    assert (np.ptp(maps.reshape(len(maps), -1), axis=1) > 100 * ATOL).all()


def test_text_and_global_embeddings_equal_the_code(s):
    text = s.method._text_for(s.test_batch)[0].numpy()  # (2, E)
    np.testing.assert_allclose(text.T, s.rec["zero/text"], rtol=0, atol=1e-5)
    _, embed = s.method._features(s.test_batch)
    np.testing.assert_allclose(embed.numpy(), s.rec["zero/embed"], rtol=1e-4, atol=1e-4)


def test_per_layer_logits_equal_the_code(s):
    # logits are 100 · cos: compare the cosines (narrow range) to 1e-5
    np.testing.assert_allclose(s.logits() / 100.0, s.rec["zero/logits"] / 100.0, rtol=0, atol=1e-5)


def test_zero_shot_maps_and_scores_equal_the_code(s):
    pred = s.method.predict(s.test_batch)
    s.check_maps(pred.anomaly_maps.numpy(), "zero")
    np.testing.assert_allclose(pred.image_scores.numpy(), s.rec["zero/scores"], rtol=0, atol=ATOL)


def test_one_shot_maps_and_scores_equal_the_code(s):
    m = s.method
    m.set_references(s.ref_batch)
    try:
        dists = s.memory_distances()
        pred = m.predict(s.test_batch)
        m.cfg.fewshot_image = "zero_shot"
        zero = m.predict(s.test_batch).image_scores.numpy()
    finally:
        m.cfg.fewshot_image = "max_scaled"
        m._memory = None
    maps = pred.anomaly_maps.numpy()
    np.testing.assert_allclose(dists, s.rec["few/dists"], rtol=0, atol=1e-5)  # per layer, before upsampling
    s.check_maps(maps, "few")
    # the code's image score: 0.5 · (zero-shot score + per-class min-max of the map maxima over the test set)
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    transductive = 0.5 * (zero + (peaks - peaks.min()) / (peaks.max() - peaks.min()))
    np.testing.assert_allclose(transductive, s.rec["few/scores"], rtol=0, atol=ATOL)
    # ours (max_scaled, inductive): 0.5 · (zero-shot score + max(map) / number of layers)
    np.testing.assert_allclose(pred.image_scores.numpy(), 0.5 * (zero + peaks / 4), rtol=0, atol=1e-6)


def test_converter_rejects_foreign_checkpoints():
    from zsad_bench.methods.april_gan import from_official_checkpoint

    with pytest.raises(KeyError, match="fc"):
        from_official_checkpoint({"trainable_linearlayer": {"head.0.weight": torch.zeros(1)}}, [6])
    with pytest.raises(ValueError, match="layers"):
        from_official_checkpoint({"fc.0.weight": torch.zeros(1), "fc.0.bias": torch.zeros(1)}, [6, 12])
