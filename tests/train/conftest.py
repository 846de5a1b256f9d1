"""Fixtures of the trainer tests: the synthetic data (generated once) and a toy trainable method."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from zsad_bench.losses import binary_dice_loss, focal_loss
from zsad_bench.train import TrainRecipe
from zsad_bench.types import Batch, Method, Prediction


@dataclass
class ToyConfig:
    name: str = "toy_seg"
    hidden: int = 4


class ToySeg(Method):
    """A per-pixel two-layer classifier on the normalised RGB values (no backbone)."""

    Config = ToyConfig
    trainable = True

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg or ToyConfig())
        gen = torch.Generator().manual_seed(123)
        h = self.cfg.hidden
        self.head = torch.nn.Sequential(torch.nn.Conv2d(3, h, 1), torch.nn.ReLU(), torch.nn.Conv2d(h, 2, 1))
        with torch.no_grad():
            for p in self.head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.nan_at_call: int | None = None  # make training_step return NaN at this call
        self.interrupt_at_call: int | None = None  # raise KeyboardInterrupt at this call
        self.calls = 0

    def parameters_to_train(self):
        return list(self.head.parameters())

    def train_recipe(self, aux):
        return TrainRecipe(epochs=3, batch_size=8, lr=0.05, betas=(0.5, 0.999))

    def set_training(self, mode: bool) -> None:
        self.head.train(mode)

    def _probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images).softmax(dim=1)  # (B, 2, S, S)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.interrupt_at_call == self.calls:
            raise KeyboardInterrupt
        probs = self._probs(batch.images)
        terms = {"focal": focal_loss(probs, batch.masks), "dice": binary_dice_loss(probs[:, 1], batch.masks)}
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            terms["focal"] = terms["focal"] * float("nan")
        return terms

    def predict(self, batch: Batch) -> Prediction:
        maps = self._probs(batch.images)[:, 1]
        return Prediction(maps.flatten(1).amax(1), maps)

    def learnable_state(self):
        return dict(self.head.state_dict())

    def load_learnable_state(self, state) -> None:
        self.head.load_state_dict(dict(state))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding the generated ``synth`` and ``synth_aux`` copies."""
    from zsad_bench.synth import AUX_CATEGORIES, TEST_CATEGORIES, SynthSpec, ensure_synth

    root = tmp_path_factory.mktemp("data")
    ensure_synth(root / "synth", SynthSpec(TEST_CATEGORIES, seed=0))
    ensure_synth(root / "synth_aux", SynthSpec(AUX_CATEGORIES, seed=1))
    return root


@pytest.fixture
def toy():
    return ToySeg


@pytest.fixture
def make_cfg(data_root, tmp_path):
    """A composed-like config: conf/train/default.yaml + overrides, synth_aux → synth."""

    def make(results: Path | None = None, **train):
        train_default = OmegaConf.load(str(resources.files("zsad_bench.conf") / "train" / "default.yaml"))
        results = results or tmp_path / "results"
        return OmegaConf.create(
            {
                "method": {"name": "toy_seg", "hidden": 4},
                "backbone": {"name": "none", "input_size": 32},
                "dataset": {"name": "synth", "categories": "all", "root": str(data_root / "synth"), "aux": "synth_aux"},
                "train": OmegaConf.merge(train_default, {"progress": False, **train}),
                "paths": {
                    "data_root": str(data_root),
                    "weights_root": str(tmp_path / "weights"),
                    "results_root": str(results),
                    "cache_root": str(tmp_path / "cache"),
                },
                "seed": 0,
            }
        )

    return make
