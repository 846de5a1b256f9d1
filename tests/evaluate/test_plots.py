"""Figures from real job outputs: map grids, curves, bar charts (PNG and PDF), and the plot command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zsad_bench.commands import plot as command
from zsad_bench.evaluate import run_job
from zsad_bench.jobfiles import choose_examples, read_curves, read_examples
from zsad_bench.leaderboard import leaderboard_table, load_results
from zsad_bench.plots import bar_chart, curve_figure, map_grid, normalise, pro_curve


@pytest.fixture(scope="module")
def two_jobs(module_methods, cfg_factory, tmp_path_factory) -> list[Path]:
    results = tmp_path_factory.mktemp("plots") / "results"
    return [Path(run_job(cfg_factory(results, f"method={m}"))["dir"]) for m in ("mean_intensity", "flaky")]


def _written(paths: list[Path]) -> set[str]:
    assert all(p.stat().st_size > 1000 for p in paths)
    return {p.suffix for p in paths}


def test_saved_examples_and_curve_data(two_jobs):
    examples = read_examples(two_jobs[0] / "maps" / "bottle_like.safetensors")
    assert [e["label"] for e in examples] == [1, 0]  # an anomalous image first, then a normal one
    assert examples[0]["map"].shape == (32, 32)
    curves = read_curves(two_jobs[0] / "curves" / "bottle_like.npz")
    assert curves["scores"].shape == (10,)
    assert curves["maps"].shape == (10, 32, 32)  # 32 < curve_size: kept as is
    assert curves["masks"].dtype == bool


@pytest.mark.parametrize("norm", ["per_image", "per_dataset"])
def test_map_grid(two_jobs, tmp_path, norm):
    assert _written(map_grid(two_jobs, tmp_path / "grid", norm=norm)) == {".png", ".pdf"}


@pytest.mark.parametrize(("kind", "level"), [("roc", "image"), ("pr", "pixel"), ("pro", "pixel")])
def test_curves(two_jobs, tmp_path, kind, level):
    assert _written(curve_figure(two_jobs, tmp_path / kind, kind, level)) == {".png", ".pdf"}


def test_pro_at_image_level_is_refused(two_jobs, tmp_path):
    with pytest.raises(ValueError, match="PRO exists only at pixel level"):
        curve_figure(two_jobs, tmp_path / "x", "pro", "image")


def test_bar_chart_from_the_leaderboard(two_jobs, tmp_path):
    table = leaderboard_table(load_results(two_jobs[0].parents[3]), ["image_auroc"])
    assert _written(bar_chart(table, "image_auroc", tmp_path / "bar")) == {".png", ".pdf"}


def test_plot_command_all(two_jobs, capsys):
    root = two_jobs[0].parents[3]
    assert command.main(["all", str(root)]) == 0
    printed = capsys.readouterr().out.split()
    assert {Path(p).name for p in printed} >= {"grid_synth_per_image.png", "roc_image_synth.pdf", "bar_image_auroc.png"}


def test_plot_command_without_results(tmp_path, capsys):
    assert command.main(["grid", str(tmp_path)]) == 1
    assert "no finished job" in capsys.readouterr().err


def test_normalise():
    m = np.array([[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_allclose(normalise(m, "per_image"), [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(normalise(m, "per_dataset", (1.0, 3.0)), [[0, 0.5], [1.0, 1.0]])
    assert not normalise(np.ones((2, 2)), "per_image").any()
    with pytest.raises(ValueError, match="value range"):
        normalise(m, "per_dataset")


def test_pro_curve_hand_computed():
    # one image: a region of two pixels scored 0.9 and 0.1; negatives 0.5 and 0.2
    maps = np.array([[[0.9, 0.1, 0.5, 0.2]]])
    masks = np.array([[[True, True, False, False]]])
    fpr, pro = pro_curve(maps, masks, fpr_limit=1.0, steps=3)  # thresholds 0.5, 0.35, 0.2
    np.testing.assert_allclose(fpr, [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(pro, [0.0, 0.5, 0.5, 0.5])


def test_choose_examples_is_deterministic_and_balanced():
    from zsad_bench.types import SampleRecord

    recs = [
        SampleRecord(Path(f"{d}/{i}.png"), int(d != "good"), None, "c", d, "test")
        for d in ("hole", "good", "crack")
        for i in range(3)
    ]
    picked = choose_examples(recs, 3)
    assert [recs[i].defect_type for i in picked] == ["crack", "hole", "good"]
    assert choose_examples(list(reversed(recs)), 3) != picked  # indices move with the list ...
    assert [recs[i].key for i in picked] == [
        list(reversed(recs))[i].key for i in choose_examples(list(reversed(recs)), 3)
    ]
