"""Hydra sweeps: deterministic job folders, resume, a broken job that does not stop the sweep, launchers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsad_bench.commands import leaderboard as lb_command
from zsad_bench.evaluate import run_job
from zsad_bench.results import read_result

RUNNER = Path(__file__).with_name("sweep_runner.py")


def _sweep_args(conf_dir: Path, data_root: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(RUNNER),
        "-m",
        f"hydra.searchpath=[file://{conf_dir}]",
        "backbone=test_tiny",
        f"paths.data_root={data_root}",
        f"paths.results_root={results}",
        "device=cpu",
        "eval.num_workers=0",
        "eval.feature_cache=false",
        "eval.examples_per_category=0",
        "dataset.categories=[bottle_like]",
        "sweep=t",
        *extra,
    ]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _leaderboard(folder: Path) -> str:
    assert lb_command.main([str(folder), "--quiet", "--no-reported"]) == 0
    return (folder / "leaderboard" / "leaderboard.md").read_text()


def test_sweep_with_a_broken_job_goes_on_and_resumes(conf_dir, data_root, tmp_path):
    args = _sweep_args(conf_dir, data_root, tmp_path, "method=mean_intensity,broken", "seed=0", "shots=0")
    _run(args)
    sweep = tmp_path / "t"
    jobs = {p.parent.relative_to(sweep).as_posix(): read_result(p)["status"] for p in sweep.rglob("metrics.json")}
    variant = "dataset.categories=[bottle_like]"  # other overrides name a sub-folder (results differ)
    assert jobs == {
        f"mean_intensity/synth/test_tiny/{variant}/k0_s0": "ok",
        f"flaky/synth/test_tiny/{variant}/k0_s0": "failed",
    }
    assert (sweep / "summary.csv").is_file()  # the SweepSummary callback ran
    table = _leaderboard(sweep)
    assert "| mean_intensity‡ |" in table
    assert "deliberately broken job" in (sweep / "leaderboard" / "failures.md").read_text()

    # a job "killed" before writing its result: only it runs again; the tables do not change
    (sweep / f"mean_intensity/synth/test_tiny/{variant}/k0_s0/metrics.json").unlink()
    second = _run([*args, "eval.retry_failed=false"])
    assert second.stdout.count("skipping") + second.stderr.count("skipping") == 1  # the failed job, kept
    assert read_result(sweep / f"mean_intensity/synth/test_tiny/{variant}/k0_s0/metrics.json")["status"] == "ok"
    assert _leaderboard(sweep) == table


def test_resume_skips_finished_jobs_with_the_same_config(test_methods, make_cfg):
    from zsad_bench.registry import METHODS

    cls = METHODS.get("mean_intensity")
    first = run_job(make_cfg())
    calls = cls.calls
    path = Path(first["dir"]) / "metrics.json"
    mtime = path.stat().st_mtime_ns
    assert run_job(make_cfg("eval.num_workers=1")) == first  # execution knobs do not change results
    assert cls.calls == calls
    assert path.stat().st_mtime_ns == mtime
    run_job(make_cfg("method.scale=2.0"))  # same folder (not a sweep override here), other config: re-run
    assert cls.calls > calls
    run_job(make_cfg("method.scale=2.0", "eval.resume=false"))
    assert path.stat().st_mtime_ns > mtime


def test_unfinished_or_corrupt_results_are_rerun(test_methods, make_cfg):
    from zsad_bench.registry import METHODS

    cls = METHODS.get("mean_intensity")
    first = run_job(make_cfg())
    path = Path(first["dir"]) / "metrics.json"
    path.write_text(path.read_text()[:100])  # a torn write (cannot happen with the atomic rename, but a disk can)
    calls = cls.calls
    assert run_job(make_cfg())["status"] == "ok"
    assert cls.calls > calls


def test_failed_jobs_are_retried_unless_told_not_to(test_methods, make_cfg):
    run_job(make_cfg("method=flaky", "method.fail_setup=true"))
    again = run_job(make_cfg("method=flaky", "method.fail_setup=true", "eval.retry_failed=false"))
    assert again["status"] == "failed"  # reused
    fixed = run_job(make_cfg("method=flaky"))  # config changed: the job runs again and succeeds
    assert fixed["status"] == "ok"


@pytest.mark.slow
def test_killed_sweep_resumes_to_identical_tables(conf_dir, data_root, tmp_path):
    common = ["method=mean_intensity", "seed=0,1,2,3", "method.delay=0.3"]
    _run(_sweep_args(conf_dir, data_root, tmp_path / "ref", *common))
    args = _sweep_args(conf_dir, data_root, tmp_path / "cut", *common)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep = tmp_path / "cut" / "t"
    deadline = time.time() + 120
    while not list(sweep.rglob("metrics.json")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(sweep.rglob("metrics.json")))
    assert 1 <= done < 4
    _run(args)
    assert len(list(sweep.rglob("metrics.json"))) == 4
    assert _leaderboard(sweep) == _leaderboard(tmp_path / "ref" / "t")


def _compose(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=["method=winclip", "backbone=tiny_clip", *overrides],
                       return_hydra_config=True)  # fmt: skip


def test_parallel_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = _compose("hydra/launcher=parallel", "hydra.launcher.n_jobs=3")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 3
    assert cfg.hydra.launcher.backend == "loky"


def test_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "sweep=s")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert cfg.hydra.launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"


def test_sweep_folder_layout_in_config():
    cfg = _compose("sweep=abc", "seed=3", "shots=0")
    assert cfg.hydra.sweep.dir.endswith("abc")
    assert cfg.hydra.job.config.override_dirname.exclude_keys[:5] == ["method", "dataset", "backbone", "shots", "seed"]
    assert {c._target_ for c in cfg.hydra.callbacks.values()} == {"zsad_bench.sweep.SweepSummary"}


def test_demo_experiment_composes_every_method():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=demo", "method=clip"], return_hydra_config=True)
    assert cfg.backbone.name == "tiny_clip"
    assert cfg.device == "cpu"
    assert cfg.sweep == "demo"
    # the sweep covers every method but the heads, which the noxfile's demo runs on their own tiny backbones
    assert cfg.hydra.sweeper.params.method == "glob(*,exclude=[dinov2_head,sam_head])"
    noxfile = (Path(__file__).resolve().parents[2] / "noxfile.py").read_text()
    for head, backbone in (("dinov2_head", "tiny_dinov2"), ("sam_head", "tiny_sam")):
        assert f'("{head}", "{backbone}")' in noxfile
