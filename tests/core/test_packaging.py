"""The wheel holds every plugin module and every config; plugins import with the network blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contains_every_plugin_module_and_yaml(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("zsad_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"zsad_bench/methods/{p.name}" for p in (REPO / "methods").glob("*.py")}
    expected |= {f"zsad_bench/datasets/{p.name}" for p in (REPO / "datasets").glob("*.py")}
    expected |= {
        f"zsad_bench/conf/{p.relative_to(REPO / 'conf').as_posix()}"
        for p in (REPO / "conf").rglob("*.yaml")
        if "local" not in p.parts
    }
    expected |= {
        f"zsad_bench/{p.relative_to(REPO / 'zsad_bench').as_posix()}" for p in (REPO / "zsad_bench").rglob("*.py")
    }
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    assert not any(n.startswith(("methods/", "datasets/", "conf/")) for n in names), "top-level plugin folder in wheel"


BLOCK_NETWORK = """
import socket
def _blocked(*a, **k):
    raise RuntimeError("network access during plugin import")
socket.socket.connect = _blocked
socket.create_connection = _blocked
import sys, time
t = time.time()
from zsad_bench.registry import METHODS, DATASETS, BACKBONES
n = len(METHODS) + len(DATASETS) + len(BACKBONES)
heavy = [m for m in ("open_clip", "timm", "segment_anything", "transformers") if m in sys.modules]
print(n, heavy, round(time.time() - t, 2))
"""


def test_plugins_import_cheaply_with_the_network_blocked(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_NETWORK],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert out.returncode == 0, out.stderr
    count, heavy, _ = out.stdout.split(" ", 1)[0], out.stdout.split("[", 1)[1].split("]")[0], None
    assert int(count) > 0
    assert heavy == "", f"plugin import pulled in heavy packages: {heavy}"
