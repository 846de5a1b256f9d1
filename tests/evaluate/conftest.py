"""Fixtures for the evaluation-loop tests: throwaway methods, a test config dir and composed configs.

The methods below are registered for the duration of a test (and unregistered after). Hydra
finds their ``conf/method/<name>.yaml`` and a tiny ``test_tiny`` backbone config through an
extra search path (``hydra.searchpath=[file://<tmp conf>]``), the documented way to add
config groups without touching the packaged ``zsad_bench.conf``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from zsad_bench.registry import METHODS
from zsad_bench.types import Batch, Method, Prediction

CATEGORIES = ("bottle_like", "skin_like")
SIZE = 32


def intensity_maps(images: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference method's output: map = channel mean of the normalised image, score = map max."""
    maps = images.mean(1) * scale  # (B, S, S)
    return maps.flatten(1).max(1).values, maps


class MeanIntensity(Method):
    """Maps are a known function of the pixels, so the metrics can be recomputed independently."""

    calls = 0

    @dataclass
    class Config:
        scale: float = 1.0
        delay: float = 0.0  # seconds per batch (to kill a sweep mid-way in a test)

    def predict(self, batch: Batch) -> Prediction:
        MeanIntensity.calls += 1
        time.sleep(self.cfg.delay)
        assert batch.labels is None
        assert batch.masks is None
        return Prediction(*intensity_maps(batch.images, self.cfg.scale))


class Flaky(Method):
    """Fails where told: on one defect type, on a category, in setup, or returns NaN maps."""

    @dataclass
    class Config:
        fail_defect: str = ""
        nan_defect: str = ""
        fail_category: str = ""
        fail_setup: bool = False

    def setup(self, ctx: object) -> None:
        if self.cfg.fail_setup:
            raise RuntimeError("deliberately broken job")
        super().setup(ctx)

    def predict(self, batch: Batch) -> Prediction:
        if any(r.defect_type == self.cfg.fail_defect for r in batch.records):
            raise RuntimeError(f"cannot score {self.cfg.fail_defect}")
        if any(r.category == self.cfg.fail_category for r in batch.records):
            raise RuntimeError(f"category {self.cfg.fail_category} is broken")
        scores, maps = intensity_maps(batch.images)
        for i, r in enumerate(batch.records):
            if r.defect_type == self.cfg.nan_defect:
                maps[i, 0, 0] = float("nan")
        return Prediction(scores, maps)


class FewShotProbe(Method):
    """Few-shot: distance of each pixel to the mean reference image."""

    references: ClassVar[list[list[str]]] = []

    @dataclass
    class Config:
        pass

    def set_references(self, normals: Batch) -> None:
        FewShotProbe.references.append([r.key for r in normals.records])
        self.mean = normals.images.mean(0)  # (3, S, S)

    def predict(self, batch: Batch) -> Prediction:
        maps = (batch.images - self.mean).abs().mean(1)  # (B, S, S)
        return Prediction(maps.flatten(1).max(1).values, maps)


METHOD_YAML = {
    "mean_intensity": "name: mean_intensity\nscale: 1.0\ndelay: 0.0\n",
    "flaky": "name: flaky\nfail_defect: ''\nnan_defect: ''\nfail_category: ''\nfail_setup: false\n",
    "fewshot_probe": "name: fewshot_probe\n",
}
EXTRA_YAML = {  # options that are not separate methods
    "broken": "name: flaky\nfail_defect: ''\nnan_defect: ''\nfail_category: ''\nfail_setup: true\n",
}
BACKBONE_YAML = f"name: test_tiny\ninput_size: {SIZE}\nrandom_weights: true\ninterpolation: bicubic\n"


def register_test_methods() -> None:
    """Register the throwaway methods (also used by ``sweep_runner.py`` in a subprocess)."""
    MeanIntensity.calls = 0
    FewShotProbe.references = []
    METHODS.add("mean_intensity", MeanIntensity, shots=(0,))
    METHODS.add("flaky", Flaky, shots=(0,))
    METHODS.add("fewshot_probe", FewShotProbe, shots=(0, 1, 2))


def _unregister() -> None:
    for name in METHOD_YAML:
        METHODS.unregister(name)


@pytest.fixture
def test_methods():
    """Register the throwaway methods for one test."""
    register_test_methods()
    yield
    _unregister()


@pytest.fixture(scope="module")
def module_methods():
    """Register the throwaway methods for a whole test module."""
    register_test_methods()
    yield
    _unregister()


@pytest.fixture(scope="session")
def conf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extra Hydra config dir with the test methods and the ``test_tiny`` backbone."""
    root = tmp_path_factory.mktemp("conf")
    (root / "method").mkdir()
    (root / "backbone").mkdir()
    for name, text in {**METHOD_YAML, **EXTRA_YAML}.items():
        (root / "method" / f"{name}.yaml").write_text(text)
    (root / "backbone" / "test_tiny.yaml").write_text(BACKBONE_YAML)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic data, generated once per session."""
    from zsad_bench.registry import DATASETS

    root = tmp_path_factory.mktemp("data")
    family = DATASETS.get("synth")()
    for c in CATEGORIES:
        family.records(root / "synth", c, "test")
    return root


@pytest.fixture(scope="session")
def cfg_factory(conf_dir: Path, data_root: Path):
    """Compose the real config with test overrides into ``results`` (a folder)."""
    from hydra import compose, initialize_config_module

    def make(results: Path, *overrides: str):
        base = [
            f"hydra.searchpath=[file://{conf_dir}]",
            "method=mean_intensity",
            "backbone=test_tiny",
            f"paths.data_root={data_root}",
            f"paths.results_root={results}",
            f"paths.cache_root={results}/cache",
            "device=cpu",
            "eval.num_workers=0",
            "eval.feature_cache=false",
            "eval.examples_per_category=2",
            f"dataset.categories=[{','.join(CATEGORIES)}]",
        ]
        with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
            return compose(config_name="config", overrides=[*base, *overrides])

    return make


@pytest.fixture
def make_cfg(cfg_factory, tmp_path: Path):
    """``make_cfg("method=flaky", "method.fail_setup=true", results=None)`` → a composed config."""

    def make(*overrides: str, results: Path | None = None):
        return cfg_factory(results or tmp_path / "results", *overrides)

    return make
