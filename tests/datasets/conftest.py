"""Fixtures of the dataset tests: the fake-layout writers of ``tests/fakes`` (imported as ``fakes.*``)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:
    sys.path.append(TESTS)  # appended: never shadows an installed package
