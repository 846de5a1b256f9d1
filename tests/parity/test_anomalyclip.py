"""Parity with zqhang/AnomalyCLIP's ``test.py`` and ``train.py`` (fixture by ``tests/parity/drivers/anomalyclip.py``).

Two architectures (the driver's ``ARCHS``): ``full``, the real ViT-L-14-336 run at 518 on the parity
suite's shared seeded weights (``seeded_clip_file``, their digest checked against the recording), and
``reduced``, a width-64 24-block ViT at 70 px (the WinCLIP driver's seeded weights). Both sides:
QuickGELU and the positional embedding resized bilinearly without antialias (our side takes these
from ``conf/method/anomalyclip.yaml``); the weights reach our backbone through its weight
resolution from a file. The prompt values are written in the code's checkpoint format (the
layout of the reference's ``prompt_learner`` state dict, recorded) and loaded on our side through
:func:`convert_official_checkpoint`. The same PNG files go through the evaluation loop's
preprocessing. Inference: the text features, global image features, patch–text cosines, anomaly
maps and image scores of our ``anomalyclip`` defaults must equal the reference's. Training: from
the reference's initial prompts, our method stepped by the shared trainer's loop (Adam, lr 1e-3,
betas (0.5, 0.999)) on the reference's batches, in its shuffled order, must reproduce its losses,
the prompts' gradients and the prompts after every step (two steps ``reduced``, one ``full``).
Tolerances below; measured values in ``docs/fidelity.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "anomalyclip.npz"
METHOD_YAML = HERE.parents[1] / "conf" / "method" / "anomalyclip.yaml"
REGENERATE = "regenerate with: python tests/parity/drivers/anomalyclip.py --anomalyclip <AnomalyCLIP checkout>"
ATOL = {"reduced": 1e-5, "full": 1e-4}  # maps (range about [0, 1]) and scores
COS_ATOL = 1e-5  # patch-text and text-text cosines (behind the softmax of cos / 0.07)
EMBED_RTOL = 1e-4  # global image features, relative to their largest entry
# Gradients, relative to each tensor's largest entry. The deep prompts' gradients pass through the
# fp16 cast (the code's .half() per sentence, ours alike): an entry may round to the neighbouring fp16
# value (one fp16 step is at most 2^-10 ≈ 1e-3 of the largest entry): two steps allowed.
GRAD_RTOL = {"ctx": 1e-4, "deep": 2e-3}
# Prompts after each Adam step (lr 1e-3): Adam's first steps move every entry by about lr·g/(|g| + eps),
# so gradients equal up to such roundings give prompts equal to 1e-5 (1 % of lr).
PROMPT_ATOL, LR = 1e-5, 1e-3
pytestmark = pytest.mark.parity


class Setup:
    """Our method on the recorded weights and prompts, and the batch of the recorded images."""

    def __init__(self, drv, recorded, key: str, folder: Path, seeded_clip_file, pngs) -> None:
        import yaml

        from zsad_bench.context import Context
        from zsad_bench.feature_cache import FeatureCache
        from zsad_bench.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

        self.key, self.drv = key, drv
        self.rec = {k.removeprefix(f"{key}/"): v for k, v in recorded.items() if k.startswith(f"{key}/")}
        if not self.rec:
            pytest.skip(f"{FIXTURE} has no {key!r} recording: {REGENERATE} --arch {key}")
        arch = drv.ARCHS[key]
        options = yaml.safe_load(METHOD_YAML.read_text())["backbone"]  # QuickGELU, bilinear, no antialias
        if key == "full":
            path, digest = seeded_clip_file(arch.model, drv.april_gan_driver().SEED)
            bb = {"name": "clip_vit_l14_336", **options}
        else:
            path, digest = self._reduced_weights(folder)
            bb = {"name": "clip", "arch": arch.model, "pretrained": "", "input_size": arch.size, **options}
        assert digest == str(self.rec["weights_digest"]), f"seeded weights changed: {REGENERATE} --arch {key}"
        cache = FeatureCache(folder / "cache", dtype="fp32")  # each image's features computed once, stored exactly
        self.ctx = Context(device="cpu", seed=0, backbone_cfg={**bb, "weights": str(path)}, cache=cache)
        self.method = AnomalyCLIP(AnomalyCLIPConfig())
        self.method.setup(self.ctx)
        assert self.ctx.backbone.cfg.input_size == arch.size
        self.prompts = self._official_prompts(folder)
        self.method.load_learnable_state(self.prompts)
        self.inputs = drv.make_inputs(key)
        self.batch = self._batch(folder, pngs)

    def _reduced_weights(self, folder: Path) -> tuple[Path, str]:
        import open_clip
        from safetensors.torch import save_file

        if self.drv.MODEL not in open_clip.list_models():
            (folder / f"{self.drv.MODEL}.json").write_text(json.dumps(self.drv.CONFIG))
            open_clip.add_model_config(folder / f"{self.drv.MODEL}.json")
        weights, digest = self.drv.weights_of("reduced")
        path = folder / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
        return path, digest

    def _official_prompts(self, folder: Path) -> dict[str, torch.Tensor]:
        """The recorded checkpoint layout with the driver's prompt values, through the converter."""
        from zsad_bench.checkpoints import load_state
        from zsad_bench.methods.anomalyclip import convert_official_checkpoint

        ours = self.drv.prompt_values(self.ctx.backbone.text_width)
        layout = json.loads(str(self.rec["checkpoint_layout"]))
        state = {k: ours[k] if k in ours else torch.zeros(shape) for k, shape in layout.items()}
        torch.save({"prompt_learner": state}, folder / "epoch_1.pth")
        loaded = load_state(convert_official_checkpoint(folder / "epoch_1.pth", folder / "prompts.safetensors"))
        assert sorted(loaded) == sorted(ours), sorted(loaded)
        return loaded

    def _batch(self, folder: Path, pngs):
        """PNG files → the evaluation loop's preprocessing → one Batch of all test images."""
        from zsad_bench.types import Batch, SampleRecord

        paths = [folder / f"test_{i}.png" for i in range(len(self.inputs))]
        recs = [
            SampleRecord(path, int(mask is not None), None, category, "x", "test", "mvtec_ad")
            for path, (category, _, _, mask) in zip(paths, self.inputs, strict=True)
        ]
        images = pngs(self.ctx.backbone, [img for _, _, img, _ in self.inputs], paths)
        return Batch(images, recs, [r.category for r in recs])

    def sub_batch(self, idx, masks: np.ndarray | None = None):
        """The test images ``idx`` (same files: cached features), with training masks and labels."""
        from zsad_bench.types import Batch

        b = Batch(
            self.batch.images[idx], [self.batch.records[i] for i in idx], [self.batch.class_names[i] for i in idx]
        )
        if masks is not None:
            b.masks = torch.from_numpy(masks[:, 0].astype(np.float32))  # (B, S, S) train.py's thresholded gt
            b.labels = (b.masks.flatten(1).amax(dim=1) > 0.5).long()
            assert b.labels.tolist() == [r.label for r in b.records]
        return b

    def check_maps(self, ours: np.ndarray) -> float:
        """Compare with the recorded maps (all, or every SUB-th pixel plus one in full); max difference."""
        if "maps" in self.rec:
            diff = np.abs(ours - self.rec["maps"]).max()
        else:
            sub = self.drv.SUB
            full = ours[int(self.rec["map_full_index"])]
            diff = max(
                np.abs(ours[:, ::sub, ::sub] - self.rec["maps_sub"]).max(), np.abs(full - self.rec["map_full"]).max()
            )
        assert diff <= ATOL[self.key], f"maps differ by {diff}"
        return float(diff)


@pytest.fixture(scope="module", params=["reduced", "full"])
def s(request, drv, recorded, tmp_path_factory, seeded_clip_file, pngs):
    folder = tmp_path_factory.mktemp(f"anomalyclip_{request.param}")
    return Setup(drv, recorded, request.param, folder, seeded_clip_file, pngs)


def test_recordings_are_informative(s):
    maps = s.rec.get("maps", s.rec.get("maps_sub"))
    spread = np.ptp(maps.reshape(len(maps), -1), axis=1)
    assert (spread > 100 * ATOL[s.key]).all(), spread  # agreement to ATOL constrains these maps
    cos = s.rec["cosines"]
    assert np.ptp(cos[..., 1] - cos[..., 0]) > 100 * COS_ATOL  # the patches' normal/anomalous margins vary
    moved = np.abs(s.rec["step0.ctx_pos"] - s.rec["init.ctx_pos"]).max()
    assert moved > 0.5 * LR, moved  # training moved the prompts


def test_preprocessed_inputs_equal_the_code(s):
    ours = s.batch.images.numpy()
    if "test_inputs" in s.rec:
        ref = s.rec["test_inputs"]
    else:
        ours, ref = ours[:, :, :: s.drv.SUB, :: s.drv.SUB], s.rec["inputs_sub"]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    print(f"{s.key}: largest input difference {np.abs(ours - ref).max():.1e}")


def test_text_global_features_and_cosines_equal_the_code(s):
    import torch.nn.functional as F

    m = s.method
    with torch.no_grad():
        text = m.text_features().numpy()  # (2, E) normalised
    ref_text = s.rec["text"] / np.linalg.norm(s.rec["text"], axis=-1, keepdims=True)
    np.testing.assert_allclose(text, ref_text, rtol=0, atol=COS_ATOL)
    patches, global_feat = m.image_features(s.batch)
    scale = float(np.abs(s.rec["embed"]).max())
    np.testing.assert_allclose(global_feat.numpy(), s.rec["embed"], rtol=0, atol=EMBED_RTOL * scale)
    (tokens,) = patches.values()  # layer 24 only (the code's scripts)
    cos = (F.normalize(tokens, dim=-1) @ torch.from_numpy(ref_text).T).numpy()  # (B, N, 2)
    np.testing.assert_allclose(cos, s.rec["cosines"], rtol=0, atol=COS_ATOL)
    # the image scores' logits: cos(global, text) / 0.07 (random CLIP puts the scores near 0.5)
    ref_global = s.rec["embed"] / np.linalg.norm(s.rec["embed"], axis=-1, keepdims=True)
    global_cos = F.normalize(global_feat, dim=-1).numpy() @ text.T  # (B, 2)
    np.testing.assert_allclose(global_cos, ref_global @ ref_text.T, rtol=0, atol=COS_ATOL)
    gaps = [np.abs(text - ref_text).max(), np.abs(global_feat.numpy() - s.rec["embed"]).max() / scale]
    gaps += [np.abs(cos - s.rec["cosines"]).max(), np.abs(global_cos - ref_global @ ref_text.T).max()]
    print(f"{s.key}: text {gaps[0]:.1e}, global (relative) {gaps[1]:.1e}, cosines {gaps[2]:.1e}, {gaps[3]:.1e}")


def test_inference_equals_the_official_test_py(s):
    cats = s.rec["test_categories"]
    maps, scores = np.zeros_like(s.batch.images[:, 0].numpy()), np.zeros(len(cats), np.float32)
    for c in dict.fromkeys(cats):  # one batch per class, as the evaluation loop does
        idx = [i for i, x in enumerate(cats) if x == c]
        pred = s.method.predict(s.sub_batch(idx))
        maps[idx], scores[idx] = pred.anomaly_maps.numpy(), pred.image_scores.numpy()
    gap = s.check_maps(maps)
    np.testing.assert_allclose(scores, s.rec["scores"], rtol=0, atol=ATOL[s.key])
    print(f"{s.key}: largest map and score differences: {gap:.2e}, {np.abs(scores - s.rec['scores']).max():.2e}")


def test_training_steps_equal_the_official_train_py(s):
    from zsad_bench.train import TrainRecipe
    from zsad_bench.trainloop import Loop

    m = s.method
    init = {k[len("init.") :]: torch.from_numpy(v) for k, v in s.rec.items() if k.startswith("init.")}
    m.load_learnable_state(init)
    loop = Loop(m, TrainRecipe(epochs=1, batch_size=2, lr=1e-3, betas=(0.5, 0.999)), torch.device("cpu"), amp=False)
    order = s.rec["train_order"]
    m.set_training(True)
    worst: dict[str, float] = {}
    try:
        for step in range(len(s.rec["train_losses"])):
            sl = slice(2 * step, 2 * step + 2)
            loss, _ = loop.step(s.sub_batch(list(order[sl]), s.rec["train_masks"][sl]), f"step {step}")
            ref_loss = float(s.rec["train_losses"][step])
            assert loss == pytest.approx(ref_loss, rel=1e-5)  # losses ≈ 5–7
            worst["loss"] = max(worst.get("loss", 0.0), abs(loss - ref_loss))
            _check_step(m, s.rec, step, worst)
    finally:
        m.set_training(False)
        m.load_learnable_state(s.prompts)
    print(f"{s.key}: largest differences (gradients relative to their tensor's maximum, prompts absolute): {worst}")


def _check_step(m, rec: dict[str, np.ndarray], step: int, worst: dict[str, float]) -> None:
    """The prompts' gradients and values after ``step`` against the recording; updates ``worst``."""
    params = dict(m.prompts.named_parameters())
    for key, value in m.learnable_state().items():
        kind = "ctx" if key.startswith("ctx") else "deep"
        grad, ref_grad = params[key].grad.numpy(), rec[f"step{step}.grad.{key}"]
        scale = float(np.abs(ref_grad).max())
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=GRAD_RTOL[kind] * scale, err_msg=f"grad {key}")
        diff = float(np.abs(value.numpy() - rec[f"step{step}.{key}"]).max())
        assert diff <= PROMPT_ATOL, (key, step, diff)
        worst[f"grad_{kind}"] = max(worst.get(f"grad_{kind}", 0.0), float(np.abs(grad - ref_grad).max()) / scale)
        worst[kind] = max(worst.get(kind, 0.0), diff)
