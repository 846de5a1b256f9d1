"""What the persistent feature cache buys: evaluation re-runs and training epochs without the encoder.

Usage::

    python benchmarks/cache.py                  # ViT-B-16 (random weights), 64 images, CPU
    python benchmarks/cache.py --images 16      # quicker
    python benchmarks/cache.py --gpu            # also ViT-L/14 @518 images/s in bf16 on CUDA

Measured (ratios, not timed tests):

1. Evaluation: features (layers 3/6/9/12 and the global embedding, ``get_features``) + a
   small cosine head, over the same images twice. Run 1 starts from an empty cache: decode,
   preprocess, encode (the network build is reported apart). Run 2 is a fresh context on the
   same cache folder; the cache-friendly pipeline asks the cache by record first and decodes
   only on a miss (so nothing), and never builds the network. We also report run 2 with every
   image decoded and preprocessed anyway (what a loop that always decodes pays).
2. Training: one epoch of an APRIL-GAN-like head (one Linear(768→512) per layer on the patch
   tokens, Adam, batch 8) with the encoder run on every batch, versus an epoch reading the
   cached features by record (``FeatureCache.lookup``: no decoding, no encoder), and versus
   the same epoch on features already in memory (the bound: the head's own cost).

Images are synthetic 256×256 PNGs written to a temporary folder; weights are seeded random
(``backbone.weights=random``), which does not change the cost.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zsad_bench.context import Context
from zsad_bench.features import FeatureCache, FeatureSpec, get_features
from zsad_bench.preprocess import PreprocessSpec, preprocess_image
from zsad_bench.types import Batch, SampleRecord

LAYERS = (3, 6, 9, 12)
BACKBONE = {"name": "clip_vit_b16", "weights": "random"}


def machine() -> dict:
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
        "load_avg_1m": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_images(folder: Path, n: int) -> list[SampleRecord]:
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        base = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((256, 256), Image.BICUBIC)
        path = folder / f"{i:04d}.png"
        img.save(path)
        records.append(SampleRecord(path, i % 2, None, "thing", "good", "test", "bench"))
    return records


def batches(records: list[SampleRecord], prep: PreprocessSpec, size: int):
    from PIL import Image

    for start in range(0, len(records), size):
        chunk = records[start : start + size]
        images = torch.stack([preprocess_image(Image.open(r.image_path), prep) for r in chunk])
        yield Batch(images, chunk, ["thing"] * len(chunk))


def evaluate(ctx: Context, records, prep, spec, text: torch.Tensor, batch: int, by_record: bool = False) -> float:
    """One evaluation pass; returns seconds.

    ``by_record``: the cache-friendly pipeline asks the cache by record first and decodes
    only the batches with a miss; otherwise every batch is decoded (the evaluation loop today).
    """
    t = time.perf_counter()
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        feats = ctx.cache.lookup(spec, chunk) if by_record else None
        if feats is None:
            (b,) = list(batches(chunk, prep, batch))
            feats = get_features(ctx, b, spec)
        patches = torch.nn.functional.normalize(feats["tokens.12"][:, 1:], dim=-1)  # (B, N, D)
        _ = (patches @ text.T).softmax(-1)[..., 1].amax(-1)  # a cosine head's image scores
    return time.perf_counter() - t


def train_epoch(ctx: Context, records, prep, spec, batch: int, source: str) -> float:
    """One epoch of per-layer Linear heads on patch tokens; returns seconds.

    ``source``: ``encoder`` (decode + encode every batch), ``cache`` (``FeatureCache.lookup``
    by record) or ``memory`` (features already in RAM: the bound for any feature epoch).
    """
    chunks = [records[s : s + batch] for s in range(0, len(records), batch)]
    memory = [ctx.cache.lookup(spec, c) for c in chunks] if source == "memory" else None
    torch.manual_seed(0)
    heads = torch.nn.ModuleList(torch.nn.Linear(768, 512) for _ in LAYERS)
    opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
    target = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    t = time.perf_counter()
    for i, chunk in enumerate(chunks):
        if source == "memory":
            feats = memory[i]
        elif source == "cache":
            feats = ctx.cache.lookup(spec, chunk)
        else:
            (b,) = list(batches(chunk, prep, batch))
            feats = get_features(ctx, b, spec, use_cache=False)
        if feats is None:
            raise RuntimeError("cache miss in a cached epoch")
        labels = torch.tensor([r.label for r in chunk])
        loss = 0.0
        for head, layer in zip(heads, LAYERS, strict=True):
            tok = torch.nn.functional.normalize(head(feats[f"tokens.{layer}"][:, 1:]), dim=-1)  # (B, N, 512)
            logits = 100 * (tok @ target.T).amax(1)  # (B, 2)
            loss = loss + torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def cpu_benchmark(n_images: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        records = write_images(Path(tmp), n_images)
        cache_root = Path(tmp) / "cache"
        ctx = Context(backbone_cfg=BACKBONE, cache=FeatureCache(cache_root))
        prep = PreprocessSpec.from_cfg(dataclasses.asdict(ctx.backbone.cfg))
        spec = FeatureSpec.create(ctx.backbone, "tokens", LAYERS)
        text = torch.nn.functional.normalize(torch.randn(2, 768), dim=-1)

        t = time.perf_counter()
        ctx.backbone.model  # noqa: B018  (the network build, timed on its own)
        build_s = time.perf_counter() - t
        first_s = evaluate(ctx, records, prep, spec, text, batch, by_record=True)
        ctx2 = Context(backbone_cfg=BACKBONE, cache=FeatureCache(cache_root))
        second_s = evaluate(ctx2, records, prep, spec, text, batch, by_record=True)
        decoded_s = evaluate(ctx2, records, prep, spec, text, batch, by_record=False)
        assert ctx2._backbone is None or ctx2._backbone._model is None, "run 2 must not build the network"

        enc_epoch_s = train_epoch(ctx, records, prep, spec, 8, "encoder")
        cached_epoch_s = train_epoch(ctx, records, prep, spec, 8, "cache")
        memory_epoch_s = train_epoch(ctx, records, prep, spec, 8, "memory")
        size = ctx.cache.info().bytes
    return {
        "images": n_images,
        "backbone": "ViT-B-16 (open_clip), random weights, 224, fp32 CPU",
        "cache_MB": round(size / 1e6, 1),
        "build_s": round(build_s, 2),
        "eval_first_s": round(first_s, 2),
        "eval_first_with_build_s": round(first_s + build_s, 2),
        "eval_second_s": round(second_s, 3),
        "eval_ratio": round(first_s / second_s, 1),
        "eval_ratio_with_build": round((first_s + build_s) / second_s, 1),
        "eval_second_decoding_s": round(decoded_s, 3),
        "eval_ratio_decoding": round(first_s / decoded_s, 1),
        "epoch_encoder_s": round(enc_epoch_s, 2),
        "epoch_cached_s": round(cached_epoch_s, 3),
        "epoch_ratio": round(enc_epoch_s / cached_epoch_s, 1),
        "epoch_in_memory_s": round(memory_epoch_s, 3),
        "epoch_ratio_bound_in_memory": round(enc_epoch_s / memory_epoch_s, 1),
    }


def vit_flops(tokens: int, width: int, depth: int, patch: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (multiply-add = 2) of a ViT image tower: patch embedding, attention, MLP."""
    per_block = 2 * tokens * (4 * width * width + 2 * mlp_ratio * width * width) + 4 * tokens * tokens * width
    return depth * per_block + 2 * (tokens - 1) * 3 * patch * patch * width


def gpu_benchmark(batch: int = 32, steps: int = 20) -> dict:
    from zsad_bench.backbones import build_backbone

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    bb = build_backbone({"name": "clip_vit_l14_336", "weights": "random", "precision": "bf16"}, device="cuda")
    x = torch.randn(batch, 3, 518, 518, device="cuda")
    for _ in range(3):
        bb.image_tokens(x, [6, 12, 18, 24])
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        bb.image_tokens(x, [6, 12, 18, 24])
    torch.cuda.synchronize()
    per_s = batch * steps / (time.perf_counter() - t)
    flops = vit_flops(1 + 37 * 37, 1024, 24, 14)
    name = torch.cuda.get_device_name(0)
    peak = 989e12 if ("H100" in name and "PCIe" not in name) or "H200" in name else 756e12 if "H100" in name else None
    return {
        "device": name,
        "images_per_s": round(per_s, 1),
        "gflops_per_image": round(flops / 1e9, 1),
        "achieved_tflops": round(per_s * flops / 1e12, 1),
        "share_of_bf16_dense_peak": round(per_s * flops / peak, 3) if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a loaded machine, idle-waiting OpenMP threads distort timings
    report = {"machine": machine(), "cpu": cpu_benchmark(args.images, args.batch)}
    if args.gpu:
        report["gpu"] = gpu_benchmark()
    print(json.dumps(report, indent=1))
    cpu = report["cpu"]
    print(f"\nevaluation, run 2 vs run 1: {cpu['eval_ratio']}x faster ({cpu['eval_ratio_with_build']}x with the build)")
    print(f"evaluation, run 2 still decoding every image: {cpu['eval_ratio_decoding']}x faster")
    print(f"training epoch, cached vs encoder: {cpu['epoch_ratio']}x faster", end=" ")
    print(f"(features held in RAM: {cpu['epoch_ratio_bound_in_memory']}x; the head's own cost bounds it)")


if __name__ == "__main__":
    main()
