"""What a job keeps besides its metrics: image scores, example maps and curve data.

* ``scores.csv``: every evaluated image's score (image-level ROC/PR curves, re-analysis).
* ``maps/<category>.safetensors``: the raw anomaly maps of a few example images per
  category (float16, at most ``eval.example_size`` pixels a side), chosen deterministically
  from the record list so that every method of a sweep saves the same images; metadata
  ``examples`` (JSON) names each image, mask, label and score. Plus ``maps/<category>/*.png``
  previews (image, ground truth, map normalised per image).
* ``curves/<category>.npz``: image scores and labels, and (with masks) every map
  area-downsampled to ``eval.curve_size`` squared with its mask max-pooled to the same grid
  (so that no defect region vanishes); the pixel ROC/PR/PRO curves of ``zsad-bench plot
  curves`` come from these, so they approximate the full-resolution ones in the tables.
* ``map_range`` of each category (min and max of every map value at evaluation
  resolution), for the per-dataset normalisation of map grids.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zsad_bench.results import write_scores_csv

if TYPE_CHECKING:
    from zsad_bench.types import SampleRecord

__all__ = ["JobRecorder", "choose_examples", "read_curves", "read_examples", "safe_name"]

logger = logging.getLogger(__name__)


def safe_name(text: str) -> str:
    """A file-name-safe version of a category or record key.

    Example:
        >>> safe_name("synth/bottle_like/test/hole/000.png")
        'synth_bottle_like_test_hole_000.png'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def choose_examples(records: Sequence[SampleRecord], n: int) -> list[int]:
    """Indices of up to ``n`` example records: anomalous ones of distinct defect types first, then one normal.

    Example:
        >>> from pathlib import Path
        >>> from zsad_bench.types import SampleRecord
        >>> rs = [SampleRecord(Path(f"{d}{i}.png"), int(d != "good"), None, "c", d, "test")
        ...       for d in ("good", "hole", "scratch") for i in range(2)]
        >>> choose_examples(rs, 3)
        [2, 4, 0]
    """
    if n <= 0:
        return []
    order = sorted(range(len(records)), key=lambda i: records[i].key)
    anomalous = [i for i in order if records[i].label == 1]
    normal = [i for i in order if records[i].label == 0]
    picked: list[int] = []
    seen: set[str] = set()
    for i in anomalous:  # one per defect type, in key order
        if len(picked) < n - 1 and records[i].defect_type not in seen:
            picked.append(i)
            seen.add(records[i].defect_type)
    for i in anomalous:  # then more of the same types
        if len(picked) < n - 1 and i not in picked:
            picked.append(i)
    picked += normal[: n - len(picked)]
    picked += [i for i in anomalous if i not in picked][: n - len(picked)]
    return picked


def _pool(x: torch.Tensor, hw: tuple[int, int], mode: str) -> torch.Tensor:
    """(H, W) → hw by area averaging ("avg") or max pooling ("max"); never upsamples."""
    hw = (min(hw[0], x.shape[0]), min(hw[1], x.shape[1]))
    if tuple(x.shape) == hw:
        return x
    pool = torch.nn.functional.adaptive_max_pool2d if mode == "max" else torch.nn.functional.adaptive_avg_pool2d
    return pool(x[None, None].float(), hw)[0, 0]


def _fit(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """The size of ``hw`` scaled so that its longer side is at most ``side`` (aspect kept)."""
    scale = min(1.0, side / max(hw))
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


class JobRecorder:
    """Collects scores, example maps and curve data while a job runs, and writes them.

    Args:
        out: the job folder.
        eval_cfg: the ``eval`` config (``examples_per_category``, ``example_size``,
            ``save_curves``, ``curve_size``).
        has_masks: whether the dataset has pixel ground truth.
        mask_threshold: the dataset's mask threshold (kept with the examples for plotting).
    """

    def __init__(self, out: Path, eval_cfg: Mapping[str, Any], has_masks: bool, mask_threshold: int = 0) -> None:
        self.mask_threshold = int(mask_threshold)
        self.out = Path(out)
        self.n_examples = int(eval_cfg.get("examples_per_category", 3))
        self.example_size = int(eval_cfg.get("example_size", 256))
        self.save_curves = bool(eval_cfg.get("save_curves", True))
        self.curve_size = int(eval_cfg.get("curve_size", 64))
        self.has_masks = has_masks
        self.scores: list[tuple[str, str, str, int, float]] = []

    def start_category(self, category: str, records: Sequence[SampleRecord]) -> None:
        """Reset the per-category state and pick the example images."""
        self.examples: dict[str, dict[str, Any]] = {
            records[i].key: {} for i in choose_examples(records, self.n_examples)
        }
        self.lo, self.hi = float("inf"), float("-inf")
        self.curve: dict[str, list[Any]] = {"scores": [], "labels": [], "maps": [], "masks": []}

    def add(
        self,
        category: str,
        records: Sequence[SampleRecord],
        scores: torch.Tensor,
        maps: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor] | None,
    ) -> None:
        """Record evaluated images: scores (B,), maps B × (H, W) at evaluation resolution, masks or None."""
        for i, (record, amap) in enumerate(zip(records, maps, strict=True)):
            score = float(scores[i])
            self.scores.append((record.key, category, record.defect_type, record.label, score))
            self.lo, self.hi = min(self.lo, float(amap.min())), max(self.hi, float(amap.max()))
            if record.key in self.examples:
                small = _pool(amap, _fit((amap.shape[0], amap.shape[1]), self.example_size), "avg").half()
                self.examples[record.key] = {"record": record, "score": score, "map": small}
            if self.save_curves:
                self.curve["scores"].append(score)
                self.curve["labels"].append(record.label)
                if masks is not None:
                    side = (self.curve_size, self.curve_size)  # squashed: one grid for every image
                    self.curve["maps"].append(_pool(amap, side, "avg").half().numpy())
                    self.curve["masks"].append(_pool(masks[i].float(), side, "max").bool().numpy())

    def end_category(self, category: str) -> list[float] | None:
        """Write the category's example maps and curve data; return its map value range."""
        self._write_examples(category)
        if self.save_curves and self.curve["scores"]:
            self._write_curves(category)
        return [self.lo, self.hi] if self.lo <= self.hi else None

    def _write_examples(self, category: str) -> None:
        from safetensors.torch import save_file

        done = [(k, v) for k, v in self.examples.items() if v]
        if not done:
            return
        folder = self.out / "maps"
        folder.mkdir(parents=True, exist_ok=True)
        meta = [
            {
                "key": k,
                "image_path": str(v["record"].image_path),
                "mask_path": str(v["record"].mask_path) if v["record"].mask_path else None,
                "mask_threshold": self.mask_threshold,
                "label": v["record"].label,
                "defect_type": v["record"].defect_type,
                "score": v["score"],
            }
            for k, v in done
        ]
        tensors = {str(i): v["map"].contiguous() for i, (_, v) in enumerate(done)}
        save_file(tensors, str(folder / f"{safe_name(category)}.safetensors"), metadata={"examples": json.dumps(meta)})
        self._previews(folder / safe_name(category), meta, [v["map"] for _, v in done])

    def _previews(self, folder: Path, meta: list[dict[str, Any]], maps: list[torch.Tensor]) -> None:
        from zsad_bench.plots import save_example_png

        for m, amap in zip(meta, maps, strict=True):
            try:
                name = safe_name(f"{m['defect_type']}_{Path(m['image_path']).stem}")
                save_example_png(folder / f"{name}.png", m, amap.float().numpy())
            except Exception as exc:  # a preview must never fail the job
                logger.warning("could not write the preview of %s: %s", m["key"], exc)

    def _write_curves(self, category: str) -> None:
        c = self.curve
        arrays: dict[str, np.ndarray] = {
            "scores": np.asarray(c["scores"], np.float64),
            "labels": np.asarray(c["labels"], np.int8),
        }
        shapes = {a.shape for a in c["maps"]}
        if c["maps"] and len(shapes) == 1:  # native maps of different sizes are not stacked
            arrays["maps"] = np.stack(c["maps"])
            arrays["masks"] = np.stack(c["masks"])
        folder = self.out / "curves"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / f"{safe_name(category)}.npz", **arrays)  # type: ignore[arg-type]

    def finish(self, result: Mapping[str, Any]) -> None:
        """Write ``scores.csv`` for every evaluated image of the job."""
        write_scores_csv(self.out / "scores.csv", self.scores)


def read_examples(path: Path) -> list[dict[str, Any]]:
    """Read ``maps/<category>.safetensors``: each example's metadata with its ``map`` (float32 numpy)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["examples"])
        for i, m in enumerate(meta):
            m["map"] = f.get_tensor(str(i)).astype(np.float32)
    return meta


def read_curves(path: Path) -> dict[str, np.ndarray]:
    """Read ``curves/<category>.npz`` (scores, labels, and maps/masks when saved)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
