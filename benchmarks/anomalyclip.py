"""AnomalyCLIP training epochs over cached V-V features versus running the image encoder.

Usage::

    python benchmarks/anomalyclip.py                    # ViT-L-14-336 @ 518, random weights, 4 images, CPU
    python benchmarks/anomalyclip.py --images 8 --batch 8
    python benchmarks/anomalyclip.py --device cuda

AnomalyCLIP learns only text prompts; its image side (the V-V dual path of a frozen CLIP) does
not depend on them. Each training step through the shared trainer (:func:`zsad_bench.train.fit_batches`,
the loop ``train_or_load`` runs) asks ``ctx.features`` for the V-V tokens of layer 24 and the
global token. Measured, on the real ViT-L-14-336 architecture (QuickGELU, 518 px, 37×37 patches,
seeded random weights — the cost does not depend on the values):

1. ``encoder``: one epoch without a feature cache — every step runs the image encoder;
2. ``fill``: the first epoch with an empty cache — encoder + writing the entries;
3. ``cached``: a later epoch — every step reads the entries; the encoder is not run
   (``backbone.forward_calls`` does not move, checked).

The text encoder (12 blocks, forward and backward with the deep prompts) and the losses on the
518×518 maps run in every epoch; the network build is timed apart. Images are pre-decoded tensors,
so decoding is excluded from both sides.

Measured (4 images, batch 2, 2-core Xeon shared with other jobs, load average 12–13): 2 torch threads:
encoder epoch 254.5 s, cached epoch 24.3 s (10.5×); 1 thread: 196.1 s vs 4.65 s (42.2×).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from zsad_bench.train import TrainRecipe, fit_batches
from zsad_bench.types import Batch, SampleRecord

BACKBONE = {
    "name": "clip_vit_l14_336",
    "weights": "random",
    "activation": "quick_gelu",
    "pos_interp": "bilinear",
    "pos_antialias": False,
}


def machine() -> dict:
    """Where the numbers come from."""
    cpu = "?"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def make_batches(n: int, batch: int, size: int) -> list[Batch]:
    """Seeded normalised images, half anomalous with a square mask; records without files (hash-keyed)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, n, batch):
        k = min(batch, n - start)
        recs = [SampleRecord(Path(f"bench/{start + i}.png"), (start + i) % 2, None, "thing", "d", "test", "bench")
                for i in range(k)]  # fmt: skip
        masks = torch.zeros(k, size, size)
        for i, r in enumerate(recs):
            if r.label:
                masks[i, size // 4 : size // 2, size // 3 : size // 2] = 1.0
        labels = torch.tensor([r.label for r in recs])
        out.append(Batch(torch.randn(k, 3, size, size, generator=g), recs, ["thing"] * k, labels, masks))
    return out


def timed_epoch(ctx: Context, batches: list[Batch], recipe: TrainRecipe) -> tuple[float, int, float]:
    """(seconds, image-encoder forwards, mean loss) of one epoch of a freshly set-up method."""
    method = AnomalyCLIP(AnomalyCLIPConfig())
    method.setup(ctx)
    calls = ctx.backbone.forward_calls
    if ctx.device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    (loss,) = fit_batches(method, batches, recipe)
    if ctx.device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t, ctx.backbone.forward_calls - calls, loss


def run(n_images: int, batch: int, device: str, threads: int | None) -> dict:
    """The three epochs and their ratio."""
    if threads:
        torch.set_num_threads(threads)
    recipe = TrainRecipe(epochs=1, batch_size=batch, lr=1e-3, betas=(0.5, 0.999), seed=111)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Context(device=device, seed=0, backbone_cfg=BACKBONE)
        t = time.perf_counter()
        bb = plain.backbone
        bb.model  # noqa: B018  (the network build, timed on its own)
        build_s = time.perf_counter() - t
        batches = make_batches(n_images, batch, bb.input_size)
        cached = Context(device=device, seed=0, backbone_cfg=BACKBONE, cache=FeatureCache(Path(tmp) / "cache"))
        cached._backbone = bb  # one network for both contexts
        encoder_s, encoder_calls, loss_a = timed_epoch(plain, batches, recipe)
        fill_s, fill_calls, _ = timed_epoch(cached, batches, recipe)
        cached_s, cached_calls, loss_b = timed_epoch(cached, batches, recipe)
        cache_mb = cached.cache.info().bytes / 1e6
    if cached_calls != 0:
        raise RuntimeError(f"the cached epoch ran the image encoder {cached_calls} times")
    return {
        "backbone": "ViT-L-14-336 (open_clip), QuickGELU, 518x518, random weights, fp32",
        "device": device,
        "images": n_images,
        "batch_size": batch,
        "steps_per_epoch": len(batches),
        "build_s": round(build_s, 2),
        "epoch_encoder_s": round(encoder_s, 2),
        "epoch_fill_cache_s": round(fill_s, 2),
        "epoch_cached_s": round(cached_s, 3),
        "ratio_encoder_over_cached": round(encoder_s / cached_s, 1),
        "encoder_forwards": {"encoder": encoder_calls, "fill": fill_calls, "cached": cached_calls},
        "cache_MB": round(cache_mb, 1),
        "loss_encoder_vs_cached": [round(loss_a, 5), round(loss_b, 5)],  # fp16 cache: close, not equal
        "machine": machine(),
    }


def main() -> None:
    """Parse the arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    result = run(args.images, args.batch, args.device, args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
