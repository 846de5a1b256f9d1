"""One category of an evaluation job: references, background decoding, predictions, metrics.

Used by :mod:`zsad_bench.evaluate` (``job`` is its running-job object: ``cfg``, ``family``,
``info``, ``spec``, ``method``, ``device``, ``recorder``, ``result``, ``timings``).

* A file that cannot be decoded, a ``predict`` that raises on an image (a failing batch is
  retried image by image) and a non-finite score or map are recorded in ``skipped`` and left
  out; more than ``eval.max_skip_fraction`` of a category skipped fails the category.
* The method sees ``Batch(images, records, class_names)`` only: no labels, no masks.
* ``resolution: input`` feeds (B, S, S) maps and masks to the metrics engine, an integer ``N``
  (B, N, N) ones; ``native`` resizes each map to its own mask.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from zsad_bench.preprocess import RecordDataset, make_loader, resize_maps
from zsad_bench.results import metric_entry

__all__ = ["CategoryRun"]

logger = logging.getLogger(__name__)


class CategoryRun:
    """Evaluate one category of a job: references, loader, predictions, metrics."""

    def __init__(self, job: Any, category: str) -> None:
        self.job, self.category = job, category
        self.root = Path(str(job.cfg.dataset.root))
        self.records = job.family.records(self.root, category, "test")
        self.prompt = job.info.prompt_name(category)
        self.n_skipped = 0
        self.n_anomalous = 0
        self.n_images = 0

    def run(self) -> dict[str, Any]:
        """Metrics, counts and references of the category; raises when the category cannot be scored."""
        job, e = self.job, self.job.cfg.eval
        if not self.records:
            raise ValueError(f"no test images for {self.category} under {self.root}")
        references = self._references() if int(job.cfg.shots) > 0 else []
        evaluator = self._evaluator()
        job.recorder.start_category(self.category, self.records)
        dataset = RecordDataset(self.records, job.spec, with_masks=job.info.has_masks)
        for loaded in make_loader(dataset, int(e.get("batch_size", 8)), int(e.get("num_workers", 0))):
            for index, reason in loaded.failed:
                self._skip(index, "decode", reason)
            if loaded.images is not None:
                self._update(evaluator, loaded, *self._predict(loaded))
        self._check_skips()
        values = evaluator.compute()
        job.engine_values[self.category] = values
        job.result["metric_definitions"].update(evaluator.definitions())
        return {
            "n_images": self.n_images,
            "n_anomalous": self.n_anomalous,
            "n_skipped": self.n_skipped,
            "references": references,
            "map_range": job.recorder.end_category(self.category),
            "metrics": {k: metric_entry(v.value, v.reason, v.bound) for k, v in values.items()},
        }

    def _evaluator(self) -> Any:
        from zsad_bench.metrics import CategoryEvaluator

        e, info = self.job.cfg.eval, self.job.info
        options: dict[str, Any] = {
            "image_metrics": tuple(e.image_metrics),
            "pixel_metrics": tuple(e.pixel_metrics),
            "aupro": str(e.aupro),
            "ap": str(e.ap),
            "mode": str(e.mode),
            "fpr_limit": float(e.fpr_limit),
            "connectivity": int(e.connectivity),
        }
        self.job.result["evaluation"]["metrics"] = options
        return CategoryEvaluator(**options, has_image_labels=info.has_image_labels, has_masks=info.has_masks)

    def _references(self) -> list[str]:
        from zsad_bench.shots import reference_batch, sample_shots

        job = self.job
        train = job.family.records(self.root, self.category, "train")
        refs = sample_shots(train, int(job.cfg.shots), int(job.cfg.seed), self.records)
        batch = reference_batch(refs, job.spec, self.prompt)
        batch.images = batch.images.to(job.device)
        job.method.set_references(batch)
        return [r.key for r in refs]

    def _skip(self, index: int, stage: str, reason: str) -> None:
        record = self.records[index]
        logger.warning("skipping %s (%s): %s", record.image_path, stage, reason)
        self.n_skipped += 1
        self.job.result["skipped"].append(
            {
                "key": record.key,
                "path": str(record.image_path),
                "category": self.category,
                "stage": stage,
                "reason": reason,
            }
        )

    def _check_skips(self) -> None:
        limit = float(self.job.cfg.eval.get("max_skip_fraction", 0.05))
        total = len(self.records)
        if self.n_images == 0 or self.n_skipped > limit * total:
            first = next((s for s in self.job.result["skipped"] if s["category"] == self.category), None)
            detail = f" (first: {first['path']}: {first['reason']})" if first else ""
            raise ValueError(
                f"{self.n_skipped} of {total} images of {self.category} failed{detail}; the category is not scored. "
                f"Fix the files, or raise eval.max_skip_fraction (now {limit})."
            )

    # ------------------------------------------------------------------------- predict
    def _call(self, indices: list[int], images: torch.Tensor) -> Any:
        from zsad_bench.types import Batch

        job = self.job
        batch = Batch(
            images=images, records=[self.records[i] for i in indices], class_names=[self.prompt] * len(indices)
        )
        t = time.perf_counter()
        with torch.no_grad():
            pred = job.method.predict(batch).validate(len(indices))
        if str(job.device).startswith("cuda"):
            torch.cuda.synchronize()
        job.timings["predict_s"] += time.perf_counter() - t
        return pred

    def _predict(self, loaded: Any) -> tuple[list[int], torch.Tensor | None, torch.Tensor | None]:
        """(kept positions in the loaded batch, scores (B',), maps (B', h, w)); a failed batch is retried per image."""
        images = loaded.images.to(self.job.device)
        try:
            pred = self._call(loaded.indices, images)
            return list(range(len(loaded.indices))), pred.image_scores, pred.anomaly_maps
        except Exception as exc:
            if len(loaded.indices) == 1:
                self._skip(loaded.indices[0], "predict", f"{type(exc).__name__}: {exc}")
                return [], None, None
            logger.warning("a batch of %s failed (%s); retrying image by image", self.category, exc)
        kept, scores, maps = [], [], []
        for pos, index in enumerate(loaded.indices):
            try:
                pred = self._call([index], images[pos : pos + 1])
            except Exception as exc:
                self._skip(index, "predict", f"{type(exc).__name__}: {exc}")
                continue
            kept.append(pos)
            scores.append(pred.image_scores)
            maps.append(pred.anomaly_maps)
        if not kept:
            return [], None, None
        return kept, torch.cat(scores), torch.cat(maps)

    # ------------------------------------------------------------------------- metrics
    def _update(self, evaluator: Any, loaded: Any, kept: list[int], scores: Any, maps: Any) -> None:
        if not kept:
            return
        scores = scores.detach().float().cpu()  # (B',)
        maps = maps.detach().float().cpu()  # (B', h, w)
        finite = torch.isfinite(scores) & torch.isfinite(maps).flatten(1).all(1)
        for pos in [p for p, ok in zip(kept, finite.tolist(), strict=True) if not ok]:
            self._skip(loaded.indices[pos], "predict", "non-finite image score or anomaly map")
        keep = [i for i, ok in enumerate(finite.tolist()) if ok]
        if not keep:
            return
        positions = [kept[i] for i in keep]
        scores, maps = scores[keep], maps[keep]
        records = [self.records[loaded.indices[p]] for p in positions]
        labels = torch.tensor([r.label for r in records], dtype=torch.long)  # (B',)
        masks = [loaded.masks[p] for p in positions] if loaded.masks is not None else None
        if masks is None:
            per_image = [maps[i] for i in range(len(positions))]
            evaluator.update(scores, labels, None, None)
        elif (n := self.job.spec.eval_size) is not None:
            maps = resize_maps(maps, (n, n))  # (B', N, N)
            per_image = list(maps)
            evaluator.update(scores, labels, maps, torch.stack(masks))
        else:  # native: each map to its own mask's size
            per_image = [resize_maps(maps[i : i + 1], tuple(m.shape))[0] for i, m in enumerate(masks)]
            for i, (amap, mask) in enumerate(zip(per_image, masks, strict=True)):
                evaluator.update(scores[i : i + 1], labels[i : i + 1], amap[None], mask[None])
        self.job.recorder.add(self.category, records, scores, per_image, masks)
        self.n_images += len(records)
        self.n_anomalous += int(labels.sum())
        self.job.timings["images"] += len(records)
