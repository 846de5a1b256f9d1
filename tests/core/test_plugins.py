"""Registering methods: a module of the user's, a third-party entry point, the guide's example."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zsad_bench.commands.listing import method_rows
from zsad_bench.registry import METHODS
from zsad_bench.types import Batch, Prediction, SampleRecord

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "adding-a-method.md"


def guide_block(lang: str) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)[0]


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def guide_module(tmp_path):
    path = tmp_path / "zsad_guide_example.py"
    path.write_text(guide_block("python"))
    module = import_file(path, "zsad_guide_example")
    yield module
    METHODS.unregister("brightness_deviation")
    sys.modules.pop("zsad_guide_example", None)


def test_guide_example_registers_and_predicts(guide_module):
    assert "brightness_deviation" in [r["name"] for r in method_rows()]
    cls = METHODS.get("brightness_deviation")
    yaml_text = guide_block("yaml")
    assert "kernel: 5" in yaml_text
    method = cls(cls.Config(kernel=5))
    images = torch.zeros(2, 3, 16, 16)
    images[1, :, 8, 8] = 1.0  # one bright pixel
    rec = SampleRecord(Path("x.png"), 0, None, "c", "good", "test")
    pred = method.predict(Batch(images, [rec, rec], ["c", "c"])).validate(2)
    assert isinstance(pred, Prediction)
    assert pred.image_scores[0] == 0
    assert pred.anomaly_maps[1].argmax() == 8 * 16 + 8


def test_duplicate_name_fails_with_both_modules(guide_module, tmp_path):
    other = tmp_path / "zsad_other_plugin.py"
    other.write_text(
        "from zsad_bench.registry import register_method\n"
        "from zsad_bench.types import Method\n"
        "@register_method('brightness_deviation')\n"
        "class Impostor(Method):\n    pass\n"
    )
    with pytest.raises(ValueError, match=r"zsad_guide_example:BrightnessDeviation and by zsad_other_plugin:Impostor"):
        import_file(other, "zsad_other_plugin")
    sys.modules.pop("zsad_other_plugin", None)


def write_dist(site: Path, module_source: str) -> None:
    """A minimal installed distribution with an entry point, as pip would leave it."""
    (site / "zsad_thirdparty_plugin.py").write_text(module_source)
    info = site / "zsad_thirdparty-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zsad-thirdparty\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zsad_bench.methods]\nbrightness_deviation = zsad_thirdparty_plugin\n")


def test_entry_point_plugin_appears_in_list(tmp_path):
    write_dist(tmp_path, guide_block("python"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "250"}
    out = subprocess.run(
        [sys.executable, "-c", "from zsad_bench.cli import main; main(['list', 'methods'])"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "brightness_deviation" in out.stdout
    assert "zsad_thirdparty_plugin" in out.stdout
