"""Fixtures of the metrics tests: the reference implementations, loaded by path (importlib mode)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def refs() -> ModuleType:
    """Slow references written from the definitions (tests/metrics/references.py)."""
    return _load("zsad_metrics_test_references", HERE / "references.py")


@pytest.fixture(scope="session")
def bench() -> ModuleType:
    """benchmarks/metrics.py: the straightforward MVTec-style AUPRO and the cflow-200 loop."""
    return _load("zsad_metrics_benchmark", HERE.parents[1] / "benchmarks" / "metrics.py")
