"""Figures from job result files: anomaly-map grids, ROC / PR / PRO curves, leaderboard bar charts.

Everything is drawn on ``matplotlib.figure.Figure`` objects (no pyplot, no display needed)
and saved as PNG and PDF. Random-weight results carry "‡ random weights" in their labels.

Map normalisation (``norm``):

* ``per_image``: each map is scaled to [0, 1] by its own min and max (shows where a method
  looks, not how confident it is; the papers' usual figures).
* ``per_dataset``: every map of a method is scaled by the min and max of *all* that method's
  map values on the dataset (``map_range`` in ``metrics.json``), so brightness is comparable
  across images of one method.

Curves pool the images of the chosen categories (all by default); the tables' values are
means of per-category values, so a pooled curve's area can differ from the table. Pixel
curves come from the downsampled ``curves/*.npz`` (see :mod:`zsad_bench.jobfiles`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from zsad_bench.tables import Table

__all__ = [
    "NORMS",
    "bar_chart",
    "curve_figure",
    "map_grid",
    "normalise",
    "pro_curve",
    "save_example_png",
    "save_figure",
]

logger = logging.getLogger(__name__)

NORMS = ("per_image", "per_dataset")
CMAP = "jet"


# ----------------------------------------------------------------------------- basics
def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``<stem>.pdf``; return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{fmt}") for fmt in formats]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


def normalise(amap: np.ndarray, norm: str, value_range: Sequence[float] | None = None) -> np.ndarray:
    """Scale a map to [0, 1] (see the module docstring); a constant map becomes zeros.

    Example:
        >>> normalise(np.array([[1.0, 3.0]]), "per_image").tolist()
        [[0.0, 1.0]]
        >>> normalise(np.array([[1.0, 3.0]]), "per_dataset", (0.0, 4.0)).tolist()
        [[0.25, 0.75]]
    """
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not one of {NORMS}")
    if norm == "per_dataset":
        if value_range is None:
            raise ValueError("per_dataset normalisation needs the dataset's map value range")
        lo, hi = float(value_range[0]), float(value_range[1])
    else:
        lo, hi = float(np.min(amap)), float(np.max(amap))
    if not hi > lo:
        return np.zeros_like(amap, dtype=np.float64)
    return np.clip((amap.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _image_and_mask(meta: dict[str, Any], hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The example's image (H, W, 3) uint8 and mask (H, W) bool, resized to the map's size."""
    from PIL import Image

    from zsad_bench.imageio import load_image, load_mask

    image = np.asarray(load_image(Path(meta["image_path"])).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))
    mask = None
    if meta.get("mask_path"):
        raw = load_mask(Path(meta["mask_path"]), int(meta.get("mask_threshold", 0)))
        mask = (
            np.asarray(Image.fromarray(raw.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.Resampling.NEAREST))
            > 127
        )
    elif meta.get("label") == 0:
        mask = np.zeros(hw, bool)
    return image, mask


def _show(ax: Any, data: np.ndarray | None, title: str = "", cmap: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if data is None:
        ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.imshow(data, cmap=cmap, vmin=0, vmax=1 if cmap else None, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)


def save_example_png(path: Path, meta: dict[str, Any], amap: np.ndarray) -> Path:
    """A preview of one example: image, ground truth, map normalised per image (PNG only)."""
    from matplotlib.figure import Figure

    image, mask = _image_and_mask(meta, amap.shape)
    fig = Figure(figsize=(6, 2.2))
    axes = fig.subplots(1, 3)
    _show(axes[0], image, meta["key"].split("/", 1)[-1])
    _show(axes[1], None if mask is None else mask.astype(float), "ground truth", "gray")
    _show(axes[2], normalise(amap, "per_image"), f"score {meta['score']:.3g} (per-image norm.)", CMAP)
    return save_figure(fig, Path(path).with_suffix(""), ("png",))[0]


# ----------------------------------------------------------------------------- job access
def _job(job_dir: Path) -> dict[str, Any]:
    from zsad_bench.results import METRICS_FILE, read_result

    data = read_result(Path(job_dir) / METRICS_FILE)
    data["_dir"] = Path(job_dir)
    return data


def _label(data: dict[str, Any]) -> str:
    random = " ‡ random weights" if data["backbone"].get("random_weights") else ""
    shots = f" {data['shots']}-shot" if data["shots"] else ""
    return f"{data['method']['name']}{shots}{random}"


def _dataset_range(data: dict[str, Any]) -> tuple[float, float] | None:
    ranges = [c["map_range"] for c in data["categories"].values() if c.get("map_range")]
    if not ranges:
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _examples(data: dict[str, Any], categories: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    from zsad_bench.jobfiles import read_examples, safe_name

    out: dict[str, dict[str, Any]] = {}
    for cat in categories or list(data["categories"]):
        path = data["_dir"] / "maps" / f"{safe_name(cat)}.safetensors"
        if path.is_file():
            out.update({m["key"]: m for m in read_examples(path)})
    return out


# ----------------------------------------------------------------------------- map grid
def map_grid(
    job_dirs: Sequence[Path],
    out: Path,
    categories: Sequence[str] | None = None,
    norm: str = "per_image",
    max_rows: int = 6,
) -> list[Path]:
    """A paper-style grid: one row per example image, columns image, ground truth, then one per job (method).

    Args:
        job_dirs: the jobs to compare (same dataset; one column each, in this order).
        out: output path without suffix (PNG and PDF are written).
        categories: restrict to these categories (default: all).
        norm: "per_image" or "per_dataset" (module docstring).
        max_rows: at most this many example images (the ones every job saved, first job's order).

    Raises:
        ValueError: when the jobs share no example image.
    """
    from matplotlib.figure import Figure

    jobs = [_job(d) for d in job_dirs]
    examples = [_examples(j, categories) for j in jobs]
    keys = [k for k in examples[0] if all(k in e for e in examples[1:])][:max_rows]
    if not keys:
        raise ValueError("these jobs saved no example map in common; were they run on the same dataset and categories?")
    fig = Figure(figsize=(1.6 * (2 + len(jobs)), 1.6 * len(keys)))
    axes = np.atleast_2d(fig.subplots(len(keys), 2 + len(jobs), squeeze=False))
    for r, key in enumerate(keys):
        first = examples[0][key]
        image, mask = _image_and_mask(first, first["map"].shape)
        _show(axes[r, 0], image, "image" if r == 0 else "")
        _show(axes[r, 1], None if mask is None else mask.astype(float), "ground truth" if r == 0 else "", "gray")
        axes[r, 0].set_ylabel(key.split("/")[1] if "/" in key else key, fontsize=7)
        for c, (job, ex) in enumerate(zip(jobs, examples, strict=True)):
            amap = normalise(ex[key]["map"], norm, _dataset_range(job))
            _show(axes[r, 2 + c], amap, _label(job).replace(" ‡", "\n‡") if r == 0 else "", CMAP)
    fig.suptitle(f"{jobs[0]['test']['dataset']}: anomaly maps ({norm.replace('_', ' ')} normalisation)", fontsize=9)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------- curves
def pro_curve(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, steps: int = 200) -> tuple[Any, Any]:
    """(FPR, PRO) at ``steps`` thresholds spanning FPR 0..``fpr_limit`` (8-connected regions).

    Args:
        maps: (N, H, W) scores.
        masks: (N, H, W) booleans.
        fpr_limit: the largest false-positive rate plotted.
        steps: number of thresholds.
    """
    from scipy import ndimage

    regions = []
    for amap, mask in zip(maps, masks, strict=True):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [np.sort(amap[labels == i]) for i in range(1, n + 1)]
    neg = np.sort(maps[~masks].astype(np.float64))
    if not regions or neg.size == 0:
        return np.array([]), np.array([])
    quantiles = 1.0 - np.linspace(0.0, fpr_limit, steps)
    thresholds = np.unique(np.quantile(neg, quantiles))[::-1]
    fpr = 1.0 - np.searchsorted(neg, thresholds, "left") / neg.size
    pro = np.mean([1.0 - np.searchsorted(r, thresholds, "left") / r.size for r in regions], axis=0)
    keep = fpr <= fpr_limit + 1e-12
    return np.concatenate([[0.0], fpr[keep]]), np.concatenate([[0.0], pro[keep]])


def _curve_data(data: dict[str, Any], categories: Sequence[str] | None, level: str) -> tuple[Any, Any] | None:
    from zsad_bench.jobfiles import read_curves, safe_name

    scores, truth = [], []
    for cat in categories or list(data["categories"]):
        path = data["_dir"] / "curves" / f"{safe_name(cat)}.npz"
        if not path.is_file():
            continue
        arrays = read_curves(path)
        if level == "image":
            scores.append(arrays["scores"])
            truth.append(arrays["labels"].astype(bool))
        elif "maps" in arrays:
            scores.append(arrays["maps"].astype(np.float32))
            truth.append(arrays["masks"].astype(bool))
    if not scores:
        return None
    return np.concatenate(scores), np.concatenate(truth)


def _xy(kind: str, level: str, scores: np.ndarray, truth: np.ndarray) -> tuple[Any, Any, float]:
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    if kind == "pro":
        x, y = pro_curve(scores, truth) if level == "pixel" else (np.array([]), np.array([]))
        return x, y, (auc(x, y) / 0.3 if x.size > 1 else math.nan)
    flat_s, flat_t = scores.reshape(-1), truth.reshape(-1)
    if flat_t.all() or not flat_t.any():
        return np.array([]), np.array([]), math.nan
    if kind == "roc":
        x, y, _ = roc_curve(flat_t, flat_s)
        return x, y, auc(x, y)
    precision, recall, _ = precision_recall_curve(flat_t, flat_s)
    return recall, precision, auc(recall, precision)


def curve_figure(
    job_dirs: Sequence[Path],
    out: Path,
    kind: str = "roc",
    level: str = "image",
    categories: Sequence[str] | None = None,
) -> list[Path]:
    """ROC, PR or PRO curves of several jobs on one dataset (pooled over categories).

    Args:
        job_dirs: the jobs (one curve each).
        out: output path without suffix.
        kind: "roc", "pr" or "pro" (PRO: pixel level only, up to FPR 0.3).
        level: "image" or "pixel".
        categories: restrict to these categories.

    Raises:
        ValueError: for an unknown kind or level, or when no job has curve data.
    """
    from matplotlib.figure import Figure

    if kind not in ("roc", "pr", "pro") or level not in ("image", "pixel") or (kind, level) == ("pro", "image"):
        raise ValueError(f"unsupported curve {kind!r} at {level!r} level; PRO exists only at pixel level")
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    drawn = 0
    for job in map(_job, job_dirs):
        data = _curve_data(job, categories, level)
        if data is None:
            logger.warning("%s has no %s-level curve data", job["_dir"], level)
            continue
        x, y, area = _xy(kind, level, *data)
        if x.size:
            ax.plot(x, y, label=f"{_label(job)} ({area * 100:.1f})", linewidth=1.2)
            drawn += 1
    if not drawn:
        raise ValueError(f"no job has {level}-level data for a {kind} curve (eval.save_curves was off?)")
    names = {"roc": ("FPR", "TPR"), "pr": ("recall", "precision"), "pro": ("FPR", "PRO")}[kind]
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.legend(fontsize=7, loc="lower right" if kind != "pr" else "lower left")
    ax.set_title(f"{level} {kind.upper()} (pooled over categories; legend: area ×100)", fontsize=8)
    return save_figure(fig, out)


# ----------------------------------------------------------------------------- bar chart
def bar_chart(table: Table, metric: str, out: Path, groups: Sequence[str] | None = None) -> list[Path]:
    """Grouped bars of one metric: one group per dataset, one bar per (measured) row, ± std as error bars.

    Rows from random weights are hatched and marked ‡ in the legend.
    """
    from matplotlib.figure import Figure

    rows = [r for r in table.rows if r.kind in ("ours", "unranked")]
    groups = [g for g in (groups or table.groups) if g != "Rank" and (g, metric) in set(table.mean.columns)]
    if not rows or not groups:
        raise ValueError(f"nothing to plot for metric {metric!r}; columns: {sorted(set(table.mean.columns))}")
    width = 0.8 / len(rows)
    fig = Figure(figsize=(max(4.0, 1.2 * len(groups) * max(1, len(rows)) * 0.5), 3.2))
    ax = fig.subplots()
    xs = np.arange(len(groups))
    for i, row in enumerate(rows):
        means = [table.value(row.label, g, metric) for g in groups]
        stds = [table.value(row.label, g, metric, "std") for g in groups]
        hatch = "//" if "‡" in row.marks else None
        ax.bar(xs + i * width, means, width, yerr=np.nan_to_num(stds), label=row.label + row.marks, hatch=hatch)
    ax.set_xticks(xs + width * (len(rows) - 1) / 2, groups, rotation=20, fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncols=min(3, len(rows)), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    if any("‡" in r.marks for r in rows):
        ax.set_title("‡ random backbone weights (hatched): not comparable with published numbers", fontsize=7)
    return save_figure(fig, out)
