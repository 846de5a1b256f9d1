"""The ``Example:`` blocks of the metrics modules run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["functional", "regions", "streaming", "summary"]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name: str) -> None:
    module = importlib.import_module(f"zsad_bench.metrics.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
