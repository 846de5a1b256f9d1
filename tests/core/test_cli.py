"""The `zsad-bench` app: sub-command dispatch, one-line errors, help, the plugin-package guard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from zsad_bench.cli import check_choices, config_options

REPO = Path(__file__).resolve().parents[2]


def zsad(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    code = f"from zsad_bench.cli import main; main({list(args)!r})"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, check=False)


def test_unknown_method_fails_in_one_line_with_close_matches(tmp_path):
    out = zsad("method=synht", "dataset=synth", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("zsad-bench: unknown method 'synht'.")
    assert "Available: " + ", ".join(config_options("method")) in lines[0]


def test_unknown_dataset_in_a_sweep_is_caught_with_a_suggestion():
    msg = check_choices(["-m", "dataset=synth,synht_aux"])
    assert msg is not None
    assert "unknown dataset 'synht_aux'" in msg
    assert "Did you mean synth_aux" in msg
    assert check_choices(["dataset=synth,synth_aux", "seed=0,1"]) is None


def test_every_group_option_matches_a_registered_name():
    from zsad_bench.registry import BACKBONES, DATASETS, METHODS

    for group, reg in (("method", METHODS), ("dataset", DATASETS), ("backbone", BACKBONES)):
        options = config_options(group)
        assert options, group
        missing = [o for o in options if o not in reg]
        assert not missing, f"conf/{group}/ has yaml without a registered {group}: {missing}"


def test_list_methods_prints_a_table(tmp_path):
    out = zsad("list", "methods", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "zsad-bench methods" in out.stdout
    assert "trainable" in out.stdout


def test_list_datasets_shows_domain_and_counts(tmp_path):
    out = zsad("list", "datasets", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "synth" in out.stdout
    assert "mixed" in out.stdout
    assert "24/36" in out.stdout  # synth: 6 categories x (4 normal, 6 anomalous) test images


def test_help_shows_groups_and_subcommands(tmp_path):
    out = zsad("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for word in ("method:", "dataset:", "backbone:", "Sub-commands", "leaderboard"):
        assert word in out.stdout


def test_importing_methods_from_the_repo_root_fails_with_the_guard_message():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    for pkg in ("methods", "datasets", "conf"):
        out = subprocess.run(
            [sys.executable, "-c", f"import {pkg}"], capture_output=True, text=True, cwd=REPO, env=env, check=False
        )
        assert out.returncode != 0
        assert f"'{pkg}' was imported as '{pkg}'" in out.stderr
        assert f"Import 'zsad_bench.{pkg}' instead" in out.stderr
