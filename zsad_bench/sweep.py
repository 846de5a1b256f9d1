"""Deterministic job folders, the resume rule and the Hydra callback that summarises a sweep.

Job folder (``conf/config.yaml``, ``hydra.run.dir`` and ``hydra.sweep.dir``/``subdir``)::

    <paths.results_root>/<sweep>/<method>/<dataset>/<backbone>/[<variant>/]k<shots>_s<seed>

``<variant>`` is Hydra's ``override_dirname`` of the job's remaining command-line overrides
(``method.k=3``), empty for the defaults. Method, dataset, backbone, shots and seed are
spelled out by their own path segments, and execution-only keys (device, paths, number of
workers ...) are excluded, so the same job always lands in the same folder.

Resume: :func:`zsad_bench.evaluate.run_job` skips a job whose folder holds a finished
``metrics.json`` written by the same config fingerprint (see
:func:`zsad_bench.results.finished_result`). Re-running a killed sweep therefore runs only
the missing jobs. A job killed mid-way leaves no ``metrics.json`` (it is written last and
atomically) and is run again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

__all__ = ["SweepSummary", "default_job_dir", "job_dir", "job_variant"]

logger = logging.getLogger(__name__)


def default_job_dir(cfg: Any, variant: str = "") -> Path:
    """The job folder of ``cfg`` computed without Hydra (same layout as the Hydra config)."""
    base = Path(cfg.paths.results_root) / str(cfg.sweep)
    parts = [cfg.method.name, cfg.dataset.name, cfg.backbone.name, *([variant] if variant else [])]
    return base.joinpath(*map(str, parts), f"k{int(cfg.shots)}_s{int(cfg.seed)}")


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def job_variant() -> str:
    """Hydra's ``override_dirname`` of the running job ("" outside Hydra or without extra overrides)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return str(HydraConfig.get().job.override_dirname or "")


def job_dir(cfg: Any) -> Path:
    """The running job's folder: Hydra's output dir inside Hydra, else :func:`default_job_dir`."""
    return _hydra_output_dir() or default_job_dir(cfg)


def _sweep_dir(config: Any) -> Path:
    return Path(str(config.hydra.sweep.dir))


class SweepSummary(Callback):
    """Hydra callback: after a multirun, log the failed jobs and write ``<sweep dir>/summary.csv``.

    The leaderboard reads only the job files; this summary is a convenience (one row per job
    and metric, from :func:`zsad_bench.leaderboard.load_results`).
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Summarise the sweep folder; never raises (a summary must not fail a finished sweep)."""
        try:
            self._summarise(_sweep_dir(config))
        except Exception as exc:
            logger.warning("could not summarise the sweep: %s", exc)

    def _summarise(self, folder: Path) -> None:
        from zsad_bench.leaderboard import load_results

        results = load_results(folder)
        if results.jobs.empty:
            logger.info("sweep %s: no job results", folder)
            return
        results.long.to_csv(folder / "summary.csv", index=False)
        counts = results.jobs["status"].value_counts().to_dict()
        logger.info("sweep %s: %s; summary.csv written", folder, ", ".join(f"{n} {s}" for s, n in counts.items()))
        for row in results.jobs[results.jobs["status"] == "failed"].itertuples():
            logger.warning("failed job %s: %s", row.job, row.error)
        logger.info("tables: zsad-bench leaderboard %s", folder)
