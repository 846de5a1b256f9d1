"""The method contract, for EVERY registered method on its family's tiny random backbone (CPU).

Each method builds from its own ``conf/method/<name>.yaml`` composed by Hydra; ``setup`` →
(``fit`` one epoch for trainable methods) → (``set_references`` for few-shot methods) →
``predict`` on a fake batch gives a valid :class:`Prediction` of float tensors at the input
resolution, finite, on the CPU, and the same numbers again from a fresh build with the same seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zsad_bench.build import build_method
from zsad_bench.context import Context
from zsad_bench.registry import BACKBONES, METHODS
from zsad_bench.types import Batch, Prediction, SampleRecord

REPO = Path(__file__).resolve().parents[2]
METHOD_NAMES = METHODS.list()
SEED = 0
SMALL_INPUT = {"tiny_clip": 112}  # a 7×7 patch grid keeps every method's test fast (the yaml default is 224)


def tiny_backbone(method: str) -> str:
    """``tiny_<family>`` of the method's default backbone (tiny_clip when it names none)."""
    default = METHODS.card(method).backbone
    family = BACKBONES.card(default).family if default in BACKBONES else "clip"
    name = f"tiny_{family}"
    return name if name in BACKBONES else "tiny_clip"


def composed(method: str):
    """The composed app config for ``method`` on its tiny backbone (the yaml as users get it)."""
    from hydra import compose, initialize_config_module

    yaml = REPO / "conf" / "method" / f"{method}.yaml"
    if not yaml.is_file():
        pytest.fail(f"registered method {method!r} has no {yaml.relative_to(REPO)}")
    tiny = tiny_backbone(method)
    overrides = [f"method={method}", f"backbone={tiny}"]
    if tiny in SMALL_INPUT:
        overrides.append(f"backbone.input_size={SMALL_INPUT[tiny]}")
    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def fake_batch(size: int, n: int = 2, seed: int = 1, labels: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)  # roughly normalised pixels
    recs = [SampleRecord(Path(f"img{i}.png"), i % 2, None, "bottle", "good", "test", "fake") for i in range(n)]
    batch = Batch(images=images, records=recs, class_names=["bottle"] * n)
    if labels:
        batch.labels = torch.tensor([i % 2 for i in range(n)])
        batch.masks = torch.zeros(n, size, size)
        batch.masks[1::2, size // 4 : size // 2, size // 4 : size // 2] = 1.0
    return batch


def run_once(method_name: str) -> tuple[Prediction, Prediction | None, int]:
    """Build, set up, (fit,) predict zero-shot and, for few-shot methods, with references."""
    from omegaconf import OmegaConf

    cfg = composed(method_name)
    method = build_method(cfg.method)
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    ctx = Context(device="cpu", seed=SEED, backbone_cfg=backbone_cfg, categories=["bottle"], work_dir=Path.cwd())
    method.setup(ctx)
    size = int(ctx.backbone.input_size)
    if method.trainable:
        fit_one_epoch(method, fake_batch(size, labels=True, seed=3))
    batch = fake_batch(size)
    zero = method.predict(batch)
    few = None
    shots = [k for k in METHODS.card(method_name).shots if k > 0]
    if shots:
        method.set_references(fake_batch(size, n=min(shots), seed=2))
        few = method.predict(batch)
    return zero, few, size


def fit_one_epoch(method, batch: Batch) -> None:
    try:
        from zsad_bench.train import TrainRecipe, fit_batches
    except ImportError:
        pytest.skip("no trainer API (zsad_bench.train) yet")
    losses = fit_batches(method, [batch], TrainRecipe(epochs=1, batch_size=len(batch)))
    assert len(losses) == 1
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses)


def check(pred: Prediction, n: int, size: int) -> None:
    assert isinstance(pred, Prediction)
    pred.validate(n)
    assert pred.image_scores.shape == (n,)
    assert pred.anomaly_maps.shape == (n, size, size)
    assert pred.image_scores.dtype == torch.float32
    assert pred.anomaly_maps.dtype == torch.float32
    assert pred.image_scores.device.type == "cpu"
    assert pred.anomaly_maps.device.type == "cpu"
    assert torch.isfinite(pred.image_scores).all()
    assert torch.isfinite(pred.anomaly_maps).all()


def test_every_method_is_covered():
    assert {"clip", "clip_ac", "winclip"} <= set(METHOD_NAMES)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_contract(name):
    zero, few, size = run_once(name)
    check(zero, 2, size)
    if few is not None:
        check(few, 2, size)
    again_zero, again_few, _ = run_once(name)  # a fresh build with the same seed
    torch.testing.assert_close(again_zero.image_scores, zero.image_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(again_zero.anomaly_maps, zero.anomaly_maps, rtol=0, atol=1e-6)
    if few is not None:
        torch.testing.assert_close(again_few.anomaly_maps, few.anomaly_maps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_card_is_complete(name):
    card = METHODS.card(name)
    assert card.title, name
    assert card.shots, name
    assert 0 in card.shots or card.trainable, f"{name}: a training-free method must support zero-shot"
    assert card.backbone in BACKBONES, f"{name}: default backbone {card.backbone!r} is not registered"
