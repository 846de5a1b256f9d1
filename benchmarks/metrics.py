"""Speed, memory and accuracy of the metrics engine against the references, measured side by side.

Usage::

    python benchmarks/metrics.py                 # 20 M pixels (a couple of minutes on 2 cores)
    python benchmarks/metrics.py --pixels 100e6  # the issue's size (needs ~6 GB for sklearn)

Synthetic ZSAD-like maps (518×518, 37×37 patch noise upsampled, a bump over the ground truth,
Gaussian σ=4, sigmoid; about half the images anomalous with 1-3 irregular regions) are written
once to a temporary folder. Every engine then runs in its own process, so that its peak resident
memory is its own; streaming engines read the data batch by batch, the references hold it all.

This module also holds two straightforward reference implementations that the tests import:
:func:`mvtec_aupro_straightforward` (the MVTec AD evaluation's algorithm: label regions, one
global sort of all pixels, cumulative sums, ties merged, trapezoid with interpolation at the
limit; FPR kept in float64) and :func:`cflow_aupro_loop` (the cflow-ad / APRIL-GAN / AnomalyCLIP
200-threshold loop, with the labels computed once instead of at every threshold).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 518
BATCH = 16


# ----------------------------------------------------------------------------- references
def _labels(masks: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connectivity inside each image, nothing across images
    return ndimage.label(masks, structure=structure)


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the polyline (x, y) from x[0] to x_max, interpolating linearly at x_max."""
    inside = x <= x_max
    area = float(np.sum((x[inside][1:] - x[inside][:-1]) * (y[inside][1:] + y[inside][:-1]) / 2.0))
    if x_max not in x:
        i = int(np.searchsorted(x, x_max))  # x[i-1] < x_max < x[i]
        y_at = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        area += (x_max - x[i - 1]) * (y[i - 1] + y_at) / 2.0
    return area


def mvtec_aupro_straightforward(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO the MVTec AD way: every pixel in one descending sort, cumulative FP and PRO sums."""
    labels, n_regions = _labels(masks)
    sizes = np.bincount(labels.ravel())
    pro_step = np.where(labels > 0, 1.0 / sizes[labels], 0.0).ravel()  # 1/|region| per GT pixel
    fp_step = (~masks).ravel().astype(np.int64)
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    scores = maps.ravel()[order]
    fpr = np.cumsum(fp_step[order]) / fp_step.sum()
    pro = np.cumsum(pro_step[order]) / n_regions
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    fpr = np.concatenate(([0.0], np.minimum(fpr[last_of_tie], 1.0), [1.0]))
    pro = np.concatenate(([0.0], np.minimum(pro[last_of_tie], 1.0), [1.0]))
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def _region_coords(labels: np.ndarray) -> list[tuple[int, tuple[slice, ...], np.ndarray]]:
    """(image, bounding box, coordinates inside it) of every labelled region, like regionprops."""
    from scipy import ndimage

    out = []
    for i in range(len(labels)):
        for lab, box in enumerate(ndimage.find_objects(labels[i]), 1):
            if box is not None:  # labels are global over the batch; other images' labels are absent
                out.append((i, box, np.nonzero(labels[i][box] == lab)))
    return out


def cflow_aupro_loop(
    maps: np.ndarray, masks: np.ndarray, steps: int = 200, fpr_limit: float = 0.3, relabel: bool = True
) -> float:
    """The cflow-ad AUPRO loop: per threshold, binarise all maps and average per-region overlaps.

    With ``relabel`` (what APRIL-GAN and AnomalyCLIP run, with skimage there and scipy here) the
    masks are labelled again at every threshold; without it, once.
    """
    labels, _ = _labels(masks)
    regions = _region_coords(labels)
    normal = ~masks
    lo, hi = maps.min(), maps.max()
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / steps):
        binary = maps > th
        if relabel:
            regions = _region_coords(_labels(masks)[0])
        overlap = [binary[i][box][coords].mean() for i, box, coords in regions]
        pros.append(np.mean(overlap))
        fprs.append(np.logical_and(normal, binary).sum() / normal.sum())
    fprs_a, pros_a = np.array(fprs), np.array(pros)
    keep = fprs_a < fpr_limit
    if keep.sum() < 2 or np.ptp(fprs_a[keep]) == 0:
        return float("nan")  # the references return 0 (AnomalyCLIP), divide by zero or raise here
    x = (fprs_a[keep] - fprs_a[keep].min()) / (fprs_a[keep].max() - fprs_a[keep].min())
    return float(-np.sum((x[1:] - x[:-1]) * (pros_a[keep][1:] + pros_a[keep][:-1]) / 2.0))


def sklearn_trio(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """What the ZSAD repos run: roc_auc_score, average_precision_score, max F1 of the PR curve."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    auroc = roc_auc_score(labels, scores)
    ap = average_precision_score(labels, scores)
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * p * r / (p + r)
    return float(auroc), float(ap), float(np.max(f1[np.isfinite(f1)]))


# ----------------------------------------------------------------------------- data
def _blob_mask(rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    mask = np.zeros((SIZE, SIZE), bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(60, SIZE - 60, 2)
        ry, rx = rng.uniform(20, 60, 2)
        wobble = ndimage.zoom(rng.normal(size=(8, 8)), SIZE / 8, order=1)[:SIZE, :SIZE]
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.3 * wobble < 1.0
    return mask


def _image(rng: np.random.Generator, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    mask = _blob_mask(rng) if anomalous else np.zeros((SIZE, SIZE), bool)
    noise = ndimage.zoom(rng.normal(size=(37, 37)), SIZE / 37, order=1)[:SIZE, :SIZE]
    bump = ndimage.gaussian_filter(mask.astype(np.float32), 6) * 2.5
    raw = ndimage.gaussian_filter(noise + bump + rng.normal(0, 0.5), 4)
    return (1.0 / (1.0 + np.exp(-raw))).astype(np.float32), mask


def write_data(folder: Path, n_images: int, seed: int = 0) -> None:
    """Write ``maps.f32`` and ``masks.u8`` (n_images × 518 × 518) into ``folder``."""
    rng = np.random.default_rng(seed)
    with open(folder / "maps.f32", "wb") as fm, open(folder / "masks.u8", "wb") as fk:
        for _ in range(n_images):
            amap, mask = _image(rng, anomalous=rng.uniform() < 0.53)
            amap.tofile(fm)
            mask.astype(np.uint8).tofile(fk)


def read_batches(folder: Path, n_images: int, batch: int = BATCH):
    """Yield (maps, masks) batches read from disk into fresh arrays."""
    px = SIZE * SIZE
    with open(folder / "maps.f32", "rb") as fm, open(folder / "masks.u8", "rb") as fk:
        for start in range(0, n_images, batch):
            b = min(batch, n_images - start)
            maps = np.fromfile(fm, np.float32, b * px).reshape(b, SIZE, SIZE)
            masks = np.fromfile(fk, np.uint8, b * px).reshape(b, SIZE, SIZE).view(bool)
            yield maps, masks


def read_all(folder: Path, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """All maps and masks in memory (what the reference implementations need)."""
    px = n_images * SIZE * SIZE
    maps = np.fromfile(folder / "maps.f32", np.float32, px).reshape(n_images, SIZE, SIZE)
    masks = np.fromfile(folder / "masks.u8", np.uint8, px).reshape(n_images, SIZE, SIZE).view(bool)
    return maps, masks


# ----------------------------------------------------------------------------- workers
def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB; unlike ru_maxrss, VmHWM is not inherited
    from the parent across fork + exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _ours(folder: Path, n_images: int, metrics: tuple[str, ...], repeats: int = 3, **kwargs) -> dict:
    """Our engine streaming batch by batch; the median time of ``repeats`` runs (reading excluded)."""
    from zsad_bench.metrics import CategoryEvaluator

    times, cpus = [], []
    for _ in range(repeats):
        ev = CategoryEvaluator((), metrics, **kwargs)
        wall = cpu = 0.0
        for maps, masks in read_batches(folder, n_images):
            t0, c0 = time.perf_counter(), time.process_time()
            ev.update(None, None, maps, masks)
            wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        res = ev.compute()
        times.append(wall + time.perf_counter() - t0)
        cpus.append(cpu + time.process_time() - c0)
    return {
        "time": float(np.median(times)),
        "cpu": float(np.median(cpus)),
        "values": {k: v.value for k, v in res.items()},
        "bounds": {k: v.bound for k, v in res.items()},
        "state_mb": ev.state_info()["state_bytes"] / 2**20,
    }


def _reference(folder: Path, n_images: int, name: str) -> dict:
    maps, masks = read_all(folder, n_images)
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "sklearn":
        auroc, ap, f1 = sklearn_trio(maps.ravel(), masks.ravel())
        values = {"pixel_auroc": auroc, "pixel_ap": ap, "pixel_f1max": f1}
    elif name == "mvtec":
        values = {"pixel_aupro": mvtec_aupro_straightforward(maps, masks)}
    elif name == "cflow":
        values = {"pixel_aupro_cflow200": cflow_aupro_loop(maps, masks)}
    else:
        values = {"pixel_aupro_cflow200": cflow_aupro_loop(maps, masks, relabel=False)}
    return {"time": time.perf_counter() - t0, "cpu": time.process_time() - c0, "values": values}


WORKERS = {
    "sklearn": lambda f, n: _reference(f, n, "sklearn"),
    "mvtec": lambda f, n: _reference(f, n, "mvtec"),
    "cflow_loop": lambda f, n: _reference(f, n, "cflow"),
    "cflow_loop_once": lambda f, n: _reference(f, n, "cflow_once"),
    "ours_trio": lambda f, n: _ours(f, n, ("pixel_auroc", "pixel_ap", "pixel_f1max")),
    "ours_aupro": lambda f, n: _ours(f, n, ("pixel_aupro",)),
    "ours_all": lambda f, n: _ours(f, n, ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")),
    "ours_cflow": lambda f, n: _ours(f, n, ("pixel_aupro_cflow200",)),
    "ours_hist": lambda f, n: _ours(f, n, ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"), mode="histogram"),
}


def _worker(name: str, folder: Path, n_images: int) -> None:
    import scipy.ndimage  # noqa: F401  (imports outside the timings and the baseline)
    import sklearn.metrics  # noqa: F401

    import zsad_bench.metrics  # noqa: F401

    base = _status_mb("VmRSS")
    out = WORKERS[name](folder, n_images)
    out.update(peak_mb=_status_mb("VmHWM"), base_mb=base)
    print(json.dumps(out))


def _run(name: str, folder: Path, n_images: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--data", str(folder), "--images", str(n_images)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report
def _machine() -> str:
    import scipy
    import sklearn

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    sort = np.random.default_rng(0).random(20_000_000, dtype=np.float32)
    t0 = time.perf_counter()
    sort.sort()
    rate = 20 / (time.perf_counter() - t0)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    versions = f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, scipy {scipy.__version__}"
    return (
        f"CPU {cpu}, {os.cpu_count()} cores, load average {load}; Python {platform.python_version()}, "
        f"{versions}; np.sort float32: {rate:.0f} M/s"
    )


def _row(name: str, r: dict, ref: dict | None, keys: list[tuple[str, str]]) -> str:
    err = max(abs(r["values"][k] - ref["values"][k2]) for k, k2 in keys) if ref else float("nan")
    speed = f"{ref['cpu'] / r['cpu']:.1f}x" if ref else ""
    return (
        f"| {name} | {r['cpu']:.2f} | {r['time']:.2f} | {speed} | {r['peak_mb']:.0f} "
        f"| {r['peak_mb'] - r['base_mb']:.0f} | {r.get('state_mb', float('nan')):.0f} | {err:.1e} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixels", type=float, default=20e6, help="total pixels (518² per image)")
    parser.add_argument("--skip-cflow-loop", action="store_true", help="skip the slow 200-threshold loops")
    parser.add_argument("--only", help=f"comma-separated engines to run (of {', '.join(WORKERS)}); prints raw results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, Path(args.data), args.images)
        return
    n_images = max(2, round(args.pixels / SIZE**2))
    print(_machine())
    with tempfile.TemporaryDirectory(prefix="zsad-metrics-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_data(folder, n_images)
        _, masks = read_all(folder, n_images)
        share = masks.mean()
        del masks
        print(f"data: {n_images} images × 518² = {n_images * SIZE**2 / 1e6:.1f} M pixels, {share:.2%} anomalous "
              f"(written in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
        names = [n for n in WORKERS if not (args.skip_cflow_loop and n.startswith("cflow_loop"))]
        names = args.only.split(",") if args.only else names
        res = {name: _run(name, folder, n_images) for name in names}
    if args.only:
        for name, r in res.items():
            print(name, json.dumps(r))
        return
    _print_table(res)


def _print_table(res: dict) -> None:
    trio = [("pixel_auroc", "pixel_auroc"), ("pixel_ap", "pixel_ap"), ("pixel_f1max", "pixel_f1max")]
    print("\nCPU s: process time (the machine may be shared; ratios use it). Ours: median of 3 runs.")
    print("| engine | CPU s | wall s | speed-up (CPU) | peak RSS MB | peak - baseline MB | state MB | max abs err |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(_row("sklearn AUROC+AP+F1max (reference)", res["sklearn"], None, trio))
    print(_row("ours exact AUROC+AP+F1max", res["ours_trio"], res["sklearn"], trio))
    print(_row("MVTec-style AUPRO@0.3 (reference)", res["mvtec"], None, []))
    print(_row("ours exact AUPRO@0.3", res["ours_aupro"], res["mvtec"], [("pixel_aupro", "pixel_aupro")]))
    all_keys = [*trio]
    print(_row("ours exact, all four at once (vs sklearn)", res["ours_all"], res["sklearn"], all_keys))
    if "cflow_loop" in res:
        cflow = [("pixel_aupro_cflow200", "pixel_aupro_cflow200")]
        print(_row("cflow-200 loop, relabel per threshold (reference)", res["cflow_loop"], None, cflow))
        print(_row("ours cflow-200", res["ours_cflow"], res["cflow_loop"], cflow))
        print(_row("cflow-200 loop, labels once (faster reference)", res["cflow_loop_once"], None, cflow))
        print(_row("ours cflow-200", res["ours_cflow"], res["cflow_loop_once"], cflow))
    print(_row("ours histogram-24, all four (vs sklearn)", res["ours_hist"], res["sklearn"], trio))
    exact = {**res["ours_all"]["values"]}
    print("\nhistogram mode: certified bound vs actual |error| (vs ours exact)")
    print("| metric | value (exact) | bound | actual error | bound holds |")
    print("|---|---:|---:|---:|---|")
    for key, value in res["ours_hist"]["values"].items():
        bound, err = res["ours_hist"]["bounds"][key], abs(value - exact[key])
        print(f"| {key} | {exact[key]:.6f} | {bound:.2e} | {err:.2e} | {err <= bound} |")
    print(
        "\nours AUPRO vs MVTec-style: "
        f"{abs(res['ours_aupro']['values']['pixel_aupro'] - res['mvtec']['values']['pixel_aupro']):.2e}"
    )


if __name__ == "__main__":
    main()
