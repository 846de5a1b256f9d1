"""Run the ``zsad-bench`` Hydra app with the test methods registered (used by test_sweep.py in a subprocess)."""

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("evaluate_conftest", Path(__file__).with_name("conftest.py"))
conftest = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = conftest  # dataclasses look their module up
spec.loader.exec_module(conftest)
conftest.register_test_methods()

from zsad_bench import cli  # noqa: E402

sys.argv = [sys.argv[0], *sys.argv[1:]]
cli._hydra_app()
