"""Parity with zqhang/AnomalyCLIP's ``test.py`` and ``train.py`` (fixture by ``tests/parity/drivers/anomalyclip.py``).

Same seeded weights of a 24-block CLIP ViT (trained size 56, run at 70: the positional embedding is
resized bilinearly on both sides), same preprocessed pixels. Inference: our ``anomalyclip`` defaults
with the fixture's prompt values must reproduce the maps and image scores the reference hands to its
metrics. Training: from the reference's initial prompts, our method stepped by the shared trainer's
loop (Adam, lr 1e-3, betas (0.5, 0.999)) on the reference's batches, in its shuffled order, must
reproduce its losses, the prompts' gradients and the prompts after every step (tolerances below;
measured values in ``docs/fidelity.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "anomalyclip.npz"
ATOL = 1e-5  # maps and scores
# Gradients, relative to each tensor's largest entry. The deep prompts' gradients pass through the
# fp16 cast (the code's .half(), ours alike) and carry fp16 rounding on both sides.
GRAD_RTOL = {"ctx": 1e-4, "compound": 4e-3}
# Prompts after each Adam step: the first steps move every entry by about lr·g/(|g| + eps) ≈ ±lr, so an
# entry whose gradient is tiny or fp16-rounded to another value moves differently: the learned contexts
# must agree to 1e-5 (1 % of lr 1e-3); of the deep prompts (fp16 gradients) at most 1 % of the entries may
# differ by more than that, none by more than one step per step.
PROMPT_ATOL, DEEP_FRACTION, LR = 1e-5, 0.01, 1e-3
pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def ctx(drv, seeded_tiny_clip):
    """A context on the recorded weights (QuickGELU, bilinear positional-embedding resize, as the yaml sets)."""
    from zsad_bench.context import Context

    native = drv.CONFIG["vision_cfg"]["image_size"]
    cfg, path = seeded_tiny_clip(native, activation="quick_gelu", pos_interp="bilinear", pos_antialias=False)
    return Context(device="cpu", seed=0, backbone_cfg={**cfg, "weights": str(path)})


def method(ctx, state):
    from zsad_bench.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

    m = AnomalyCLIP(AnomalyCLIPConfig())
    m.setup(ctx)
    m.load_learnable_state({k: torch.as_tensor(v) for k, v in state.items()})
    return m


def batch_of(images, categories, masks=None):
    from zsad_bench.types import Batch, SampleRecord

    recs = [SampleRecord(Path(f"p{i}.png"), 0, None, str(c), "x", "test", "mvtec") for i, c in enumerate(categories)]
    b = Batch(torch.from_numpy(images), recs, [str(c) for c in categories])
    if masks is not None:
        b.masks = torch.from_numpy(masks[:, 0])  # (B, S, S)
        b.labels = (b.masks.flatten(1).amax(dim=1) > 0.5).long()
        b.records = [SampleRecord(r.image_path, int(y), None, r.category, "x", "test", "mvtec")
                     for r, y in zip(recs, b.labels.tolist(), strict=True)]  # fmt: skip
    return b


def test_recordings_are_informative(recorded):
    spread = np.ptp(recorded["maps"].reshape(4, -1), axis=1)
    assert (spread > 100 * ATOL).all(), spread  # agreement to ATOL constrains these maps
    moved = np.abs(recorded["step1.ctx_pos"] - recorded["init.ctx_pos"]).max()
    assert moved > 100 * 1e-7, moved  # training moved the prompts


def test_inference_equals_the_official_test_py(recorded, ctx, drv):
    m = method(ctx, drv.prompt_values())
    cats = recorded["test_categories"]
    maps, scores = [], []
    for c in drv.CLASSES:  # one batch per class, as the evaluation loop does
        idx = [i for i, x in enumerate(cats) if x == c]
        pred = m.predict(batch_of(recorded["test_inputs"][idx], cats[idx]))
        maps.append(pred.anomaly_maps.numpy())
        scores.append(pred.image_scores.numpy())
    maps, scores = np.concatenate(maps), np.concatenate(scores)
    np.testing.assert_allclose(maps, recorded["maps"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(scores, recorded["scores"], rtol=0, atol=ATOL)
    gaps = np.abs(maps - recorded["maps"]).max(), np.abs(scores - recorded["scores"]).max()
    print(f"largest map and score differences: {gaps[0]:.2e}, {gaps[1]:.2e}")


def test_training_steps_equal_the_official_train_py(recorded, ctx, drv):
    from zsad_bench.train import TrainRecipe
    from zsad_bench.trainloop import Loop

    init = {k[len("init.") :]: v for k, v in recorded.items() if k.startswith("init.")}
    m = method(ctx, init)
    loop = Loop(m, TrainRecipe(epochs=1, batch_size=2, lr=1e-3, betas=(0.5, 0.999)), torch.device("cpu"), amp=False)
    cats = np.array([c for c, *_ in drv.make_inputs()])[recorded["train_order"]]
    m.set_training(True)
    worst: dict[str, float] = {}
    for step in range(len(recorded["train_losses"])):
        sl = slice(2 * step, 2 * step + 2)
        b = batch_of(recorded["train_inputs"][sl], cats[sl], recorded["train_masks"][sl])
        loss, _ = loop.step(b, f"step {step}")
        assert loss == pytest.approx(float(recorded["train_losses"][step]), rel=1e-5)  # losses ≈ 6
        worst["loss"] = max(worst.get("loss", 0.0), abs(loss - float(recorded["train_losses"][step])))
        params = dict(m.prompts.named_parameters())
        for key, value in m.learnable_state().items():
            grad, ref_grad = params[key].grad.numpy(), recorded[f"step{step}.grad.{key}"]
            scale = float(np.abs(ref_grad).max())
            tol = GRAD_RTOL["ctx" if key.startswith("ctx") else "compound"] * scale
            np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=tol, err_msg=f"grad {key}")
            diff = np.abs(value.numpy() - recorded[f"step{step}.{key}"])
            if key.startswith("ctx"):
                assert diff.max() <= PROMPT_ATOL, (key, step, diff.max())
            else:
                assert (diff > PROMPT_ATOL).mean() <= DEEP_FRACTION, (key, step, (diff > PROMPT_ATOL).mean())
                assert diff.max() <= LR * (step + 1), (key, step, diff.max())
            kind = "ctx" if key.startswith("ctx") else "deep"
            worst[f"grad_{kind}"] = max(worst.get(f"grad_{kind}", 0.0), float(np.abs(grad - ref_grad).max()) / scale)
            worst[kind] = max(worst.get(kind, 0.0), float(diff.max()))
            worst[f"{kind}_over"] = max(worst.get(f"{kind}_over", 0.0), float((diff > PROMPT_ATOL).mean()))
    print(f"largest differences (gradients relative to their tensor's maximum, prompts absolute): {worst}")
