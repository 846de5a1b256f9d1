"""One evaluation job: dataset × method → predictions → metrics → ``results/<sweep>/<job>/``.

:func:`run_job` is what the ``zsad-bench`` Hydra app calls for every job. It never raises
for a problem of the job itself (so a Hydra multirun goes on): a failed image is recorded
and skipped, a failed category is recorded and the job goes on, a failed job writes a
``metrics.json`` with ``status: failed`` and its error. Only ``KeyboardInterrupt`` and
``SystemExit`` pass through, leaving no result, so the job runs again on resume.

Per category the loop: draws the k-shot references (``shots > 0``), decodes the test
images in a background ``DataLoader``, calls ``method.predict`` on batches without labels
or masks, brings maps to the evaluation resolution and feeds the metrics engine.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import random
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsad_bench.jobfiles import JobRecorder
from zsad_bench.results import (
    METRICS_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    config_fingerprint,
    finished_result,
    metric_entry,
    write_category_csv,
    write_json_atomic,
)
from zsad_bench.sweep import job_dir, job_variant

__all__ = ["run_job", "select_categories"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- entry point
def run_job(cfg: Any) -> dict[str, Any]:
    """Run (or, on resume, skip) one job and return its brief: status, folder, summary values.

    Args:
        cfg: the composed config (``method``, ``backbone``, ``dataset``, ``train``, ``eval``,
            ``paths``, ``seed``, ``shots``, ``device``, ``sweep``).
    """
    out = job_dir(cfg)
    fingerprint = config_fingerprint(cfg)
    if cfg.eval.get("resume", True):
        done = finished_result(out, fingerprint, retry_failed=cfg.eval.get("retry_failed", True))
        if done is not None:
            logger.info("skipping %s: finished (%s) earlier; eval.resume=false re-runs it", out, done["status"])
            return _brief(done, out)
    result = _header(cfg, out, fingerprint)
    start = time.perf_counter()
    job = _Job(cfg, out, result)
    try:
        job.run()
    except Exception as exc:
        logger.exception("job %s failed", out)
        result["status"] = "failed"
        result["error"] = _error(exc)
    finally:
        job.close()
    result["timings"]["total_s"] = round(time.perf_counter() - start, 3)
    _write(out, result)
    return _brief(result, out)


def _brief(result: dict[str, Any], out: Path) -> dict[str, Any]:
    summary = {k: v.get("value") for k, v in result["summary"].items()}
    return {"status": result["status"], "dir": str(out), "summary": summary, "error": result.get("error")}


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=20)}


def _write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_category_csv(out / "per_category.csv", result)
    write_json_atomic(out / METRICS_FILE, result)  # last: its presence marks the job done


# ----------------------------------------------------------------------------- result header
def _code_version() -> dict[str, Any]:
    import zsad_bench

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(zsad_bench.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "zsad_bench": zsad_bench.__version__,
        "git_commit": commit or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _header(cfg: Any, out: Path, fingerprint: str) -> dict[str, Any]:
    """The result as far as the config alone tells; :class:`_Job` fills in the rest."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "status": "failed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "job": {"sweep": str(cfg.sweep), "dir": str(out), "variant": job_variant(), "config_fingerprint": fingerprint},
        "method": {"name": str(cfg.method.name), "config": _plain(cfg.method), "card": None},
        "backbone": {"name": str(cfg.backbone.get("name", "")), "config": _plain(cfg.backbone)},
        "train": {"trainable": None, "config": _plain(cfg.get("train", {}))},
        "test": {"dataset": str(cfg.dataset.name), "categories": []},
        "shots": int(cfg.shots),
        "seed": int(cfg.seed),
        "device": str(cfg.get("device", "cpu")),
        "evaluation": {"config": _plain(cfg.eval)},
        "metric_definitions": {},
        "code": _code_version(),
        "timings": {},
        "categories": {},
        "summary": {},
        "skipped": [],
        "error": None,
    }


# ----------------------------------------------------------------------------- helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - methods that use the legacy global generator
    torch.manual_seed(seed)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
    return name


def select_categories(info: Any, wanted: Any, available: Any = None) -> list[str]:
    """The categories of a run: ``all`` or a list (unknown names raise).

    Args:
        info: the dataset's info.
        wanted: ``all`` or a list of names.
        available: the categories found on disk (``meta_json`` and ``folder`` datasets read
            them from the data); ``info.categories`` when None.

    Raises:
        KeyError: naming the unknown categories and the dataset's categories.
    """
    known = list(info.categories if available is None else available)
    if wanted in (None, "all"):
        return known
    names = [wanted] if isinstance(wanted, str) else [str(c) for c in wanted]
    unknown = [c for c in names if c not in known]
    if unknown:
        raise KeyError(f"{info.name} has no categories {unknown}; categories: {', '.join(known)}")
    return names


def _backbone_facts(ctx: Any, cfg: Any) -> dict[str, Any]:
    """Weights fingerprint and random-weight flag from the built backbone (None if the method never built it)."""
    bb = ctx._backbone
    declared = cfg.backbone.get("weights", None)  # tiny test backbones say `weights: random`
    random_cfg = cfg.backbone.get("random_weights", declared == "random" if declared is not None else None)
    return {
        "built": bb is not None,
        "weights_fingerprint": getattr(bb, "weights_fingerprint", None),
        "random_weights": bool(getattr(bb, "random_weights", random_cfg)) if bb is not None else random_cfg,
    }


def _train(method: Any, cfg: Any, ctx: Any) -> dict[str, Any]:
    from zsad_bench.train import train_or_load

    info = train_or_load(method, cfg, ctx)
    if hasattr(info, "to_dict"):  # a TrainRecord
        return info.to_dict()
    return _plain(info) if isinstance(info, dict) else {"result": str(info)}


# ----------------------------------------------------------------------------- the job
class _Job:
    """The state of one running job; :meth:`run` fills ``result`` in place."""

    def __init__(self, cfg: Any, out: Path, result: dict[str, Any]) -> None:
        self.cfg, self.out, self.result = cfg, out, result
        self.timings = result["timings"]
        self.timings.update(setup_s=0.0, fit_s=0.0, predict_s=0.0, loop_s=0.0, images=0)
        self.engine_values: dict[str, dict[str, Any]] = {}
        self.method: Any = None
        self.ctx: Any = None

    def run(self) -> None:
        """Set up, train if needed, evaluate every category, summarise."""
        from zsad_bench.build import build_dataset
        from zsad_bench.registry import METHODS

        cfg, result = self.cfg, self.result
        _seed_everything(int(cfg.seed))
        self.device = _device(str(cfg.get("device", "auto")))
        result["device"] = self.device
        self.family = build_dataset(cfg.dataset.name, cfg.dataset.get("options"))
        self.info = self.family.info()
        available = self.family.available_categories(Path(cfg.dataset.root))
        self.categories = select_categories(self.info, cfg.dataset.get("categories", "all"), available)
        result["test"].update(self._test_facts())
        card = METHODS.card(cfg.method.name)
        result["method"]["card"] = dataclasses.asdict(card)
        if int(cfg.shots) not in card.shots:
            result["status"] = "unsupported"
            message = f"{card.name} supports shots {list(card.shots)}, not {cfg.shots}"
            result["error"] = {"type": "Unsupported", "message": message}
            return
        self._setup()
        for category in self.categories:
            result["categories"][category] = self._category(category)
        self._finish()

    def close(self) -> None:
        """Record the backbone facts and cache statistics (also after a failure); free GPU memory."""
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            self.result["backbone"].update(_backbone_facts(ctx, self.cfg))
            stats = getattr(ctx.cache, "stats", None)
            if stats is not None:
                self.timings["feature_cache"] = dict(stats)
        self.method = self.ctx = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next job of a sweep may load another backbone

    def _test_facts(self) -> dict[str, Any]:
        info = self.info
        return {
            "root": str(self.cfg.dataset.get("root", "")),
            "categories": self.categories,
            "domain": info.domain,
            "category_domains": {c: info.domain_of(c) for c in self.categories},
            "has_masks": info.has_masks,
            "has_image_labels": info.has_image_labels,
        }

    def _setup(self) -> None:
        from zsad_bench.build import build_method
        from zsad_bench.context import Context
        from zsad_bench.preprocess import PreprocessSpec

        cfg = self.cfg
        self.spec = PreprocessSpec.from_cfg(cfg.backbone, cfg.eval.get("resolution", "input"), self.info.mask_threshold)
        self.result["evaluation"].update(self.spec.describe())
        t = time.perf_counter()
        self.method = build_method(cfg.method)
        self.ctx = Context(
            device=self.device,
            seed=int(cfg.seed),
            backbone_cfg=_plain(cfg.backbone),
            dataset=self.info,
            categories=self.categories,
            work_dir=self.out,
            cache=self._cache(),
        )
        self.method.setup(self.ctx)
        self.timings["setup_s"] = round(time.perf_counter() - t, 3)
        self.result["train"]["trainable"] = bool(self.method.trainable)
        if self.method.trainable:
            t = time.perf_counter()
            self.result["train"]["info"] = _train(self.method, cfg, self.ctx)
            self.timings["fit_s"] = round(time.perf_counter() - t, 3)
        self.recorder = JobRecorder(self.out, self.cfg.eval, self.info.has_masks, self.info.mask_threshold)

    def _cache(self) -> Any:
        if not self.cfg.eval.get("feature_cache", True):
            return None
        from zsad_bench.features import FeatureCache

        return FeatureCache(root=Path(self.cfg.paths.cache_root))

    def _category(self, category: str) -> dict[str, Any]:
        from zsad_bench.category_run import CategoryRun

        domain = self.info.domain_of(category)
        try:
            t = time.perf_counter()
            out = CategoryRun(self, category).run()
            self.timings["loop_s"] += time.perf_counter() - t
            return {"status": "ok", "domain": domain, **out, "error": None}
        except Exception as exc:
            logger.exception("category %s failed", category)
            return {"status": "failed", "domain": domain, "metrics": {}, "error": _error(exc)}

    def _finish(self) -> None:
        from zsad_bench.metrics import summarize

        result, cats = self.result, self.result["categories"]
        ok = {c: self.engine_values[c] for c, v in cats.items() if v["status"] == "ok"}
        summary = summarize(ok) if ok else {}
        result["summary"] = {k: metric_entry(v.value, v.reason, v.bound) for k, v in summary.items()}
        result["status"] = "ok" if len(ok) == len(cats) else ("partial" if ok else "failed")
        if not ok:
            message = "every category failed; see categories.*.error"
            result["error"] = {"type": "AllCategoriesFailed", "message": message}
        self.recorder.finish(result)
        t = self.timings
        t["loop_s"] = round(t["loop_s"], 3)
        t["predict_s"] = round(t["predict_s"], 3)
        t["images_per_s"] = round(t["images"] / t["loop_s"], 3) if t["loop_s"] > 0 else None
        t["predict_images_per_s"] = round(t["images"] / t["predict_s"], 3) if t["predict_s"] > 0 else None
