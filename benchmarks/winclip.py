"""WinCLIP speed: vectorised windows versus one forward per window, and the feature cache.

Usage::

    python benchmarks/winclip.py                       # CPU, 240 and 512 px, 1 image
    python benchmarks/winclip.py --sizes 240 --images 2 --repeat 3
    python benchmarks/winclip.py --device cuda --sizes 512 --images 8 --skip-loop

The real ``ViT-B-16-plus-240`` architecture (width 896, 12 blocks, patch 16) with seeded random
weights (the numbers are about speed; random weights change nothing in the cost), positional
embedding resized for 512 (32×32 patches: 961 windows of 2×2 and 900 of 3×3 per image).
Each variant runs the whole ``WinCLIP.predict`` (text embeddings computed beforehand, as in an
evaluation where they are memoised per category): window embeddings, the full-image pass, the
scoring and the upsampling. The maps of both paths are compared. Then a ``FeatureCache`` in a
temporary folder: the first prediction (cold: compute and store) against the second (warm:
read). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.methods.winclip import WinCLIP, WinCLIPConfig
from zsad_bench.types import Batch, SampleRecord


def machine(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_batch(n: int, size: int, folder: Path) -> Batch:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    records = []
    for i in range(n):
        path = folder / f"img{i}.png"
        path.write_bytes(b"stand-in: the cache keys entries by path, size and mtime")
        records.append(SampleRecord(path, 0, None, "bottle", "good", "test", "bench"))
    return Batch(images, records, ["bottle"] * n)


def timed(fn, repeat: int, device: str) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_size(size: int, args: argparse.Namespace, folder: Path) -> dict:
    backbone_cfg = {"name": "clip_vit_b16_plus_240", "weights": "random", "input_size": size}
    ctx = Context(device=args.device, seed=0, backbone_cfg=backbone_cfg)
    batch = make_batch(args.images, size, folder)
    batch.images = batch.images.to(args.device)
    fast = WinCLIP(WinCLIPConfig(cache=False))
    fast.setup(ctx)
    fast.text_embeddings("bottle")  # load the model, memoise the text side
    grid = ctx.backbone.grid_size
    row = {"size": size, "grid": list(grid), "images": args.images, "windows": [len(w) for w in fast.windows]}
    t_fast, p_fast = timed(lambda: fast.predict(batch), args.repeat, args.device)
    row["vectorised_s_per_image"] = t_fast / args.images
    if not args.skip_loop:
        slow = WinCLIP(WinCLIPConfig(cache=False, vectorised=False))
        slow.setup(ctx)
        slow.text_embeddings("bottle")
        t_slow, p_slow = timed(lambda: slow.predict(batch), 1, args.device)
        t_after, _ = timed(lambda: fast.predict(batch), 1, args.device)  # bracket the loop: the load may drift
        row["vectorised_after_s_per_image"] = t_after / args.images
        row["per_window_s_per_image"] = t_slow / args.images
        row["speedup_vectorised"] = t_slow / max(t_fast, t_after)  # the conservative ratio
        row["max_abs_map_diff"] = float((p_fast.anomaly_maps - p_slow.anomaly_maps).abs().max())
        row["max_abs_score_diff"] = float((p_fast.image_scores - p_slow.image_scores).abs().max())
    row.update(bench_cache(ctx, batch, folder / f"cache{size}", args))
    return row


def bench_cache(ctx: Context, batch: Batch, root: Path, args: argparse.Namespace) -> dict:
    cached_ctx = Context(device=args.device, seed=0, backbone_cfg=ctx.backbone_cfg, cache=FeatureCache(root))
    cached_ctx._backbone = ctx.backbone  # the same loaded network
    m = WinCLIP(WinCLIPConfig(cache=True))
    m.setup(cached_ctx)
    m.text_embeddings("bottle")
    t_cold, _ = timed(lambda: m.predict(batch), 1, args.device)
    t_warm, _ = timed(lambda: m.predict(batch), args.repeat, args.device)
    return {
        "cache_cold_s_per_image": t_cold / args.images,
        "cache_warm_s_per_image": t_warm / args.images,
        "speedup_warm_vs_cold": t_cold / t_warm,
        "cache_stats": dict(cached_ctx.cache.stats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[240, 512])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-loop", action="store_true", help="only the vectorised path (GPU timing)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        rows = [bench_size(s, args, Path(tmp)) for s in args.sizes]
    print(
        json.dumps({"machine": machine(args.device), "results": rows, "published_s_per_image_512_v100": 3.9}, indent=1)
    )


if __name__ == "__main__":
    main()
