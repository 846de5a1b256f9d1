"""AdaptCLIP: a 4-shot sweep over three seeds and a training epoch, with the feature cache versus without.

Usage::

    python benchmarks/adaptclip.py                       # ViT-L-14-336 @ 518, random weights, CPU
    python benchmarks/adaptclip.py --pool 6 --queries 4 --threads 1
    python benchmarks/adaptclip.py --device cuda --inference 32   # + images/s of zero- and 1-shot inference

Everything runs on the real ViT-L-14-336 architecture (open_clip, QuickGELU, 518 px, 37×37 patches, the
V-V dual path from block 6) with seeded random weights: the cost does not depend on the values.

1. **Few-shot sweep** (the evaluation loop's work for one category): for seeds 10, 20, 30 the seeded
   k-shot sampler (:func:`zsad_bench.shots.sample_shots`) draws ``k`` references from a pool of normal
   "train" images; ``set_references`` then ``predict`` on the test images. ``cold``: an empty feature
   cache (every new image runs the encoder once); ``warm``: the same sweep again, every feature read
   from the cache (``backbone.forward_calls`` must not move).
2. **Training epoch** through the shared trainer (:func:`zsad_bench.train.fit_batches`): queries from the
   embedded ``synth_aux`` test split (decoded at 518), each paired with a normal prompt image drawn from
   its train split (decoded from disk when not cached). ``encoder``: no cache; ``fill``: empty cache;
   ``cached``: the same epoch again. The trainer seeds the draws, so each epoch draws the same prompts;
   a real multi-epoch run draws new prompts too, but encodes each image at most once.

The text sides (the static ensemble of 231 sentences, computed once per run, and the learned prompts,
re-encoded every training step) are warmed before the timings; the network build is timed apart.
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
from zsad_bench.methods.adaptclip import AdaptCLIP, AdaptCLIPConfig
from zsad_bench.shots import sample_shots
from zsad_bench.train import TrainRecipe, fit_batches
from zsad_bench.types import Batch, SampleRecord

BACKBONE = {
    "name": "clip_vit_l14_336",
    "weights": "random",
    "activation": "quick_gelu",
    "pos_interp": "bilinear",
    "pos_antialias": False,
}
SEEDS = (10, 20, 30)


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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(ctx: Context, device: str, fn) -> tuple[float, int]:
    """(seconds, image-encoder forwards) of ``fn()``."""
    calls = ctx.backbone.forward_calls
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t, ctx.backbone.forward_calls - calls


# ----------------------------------------------------------------------------- few-shot sweep
def fake_images(n: int, size: int, split: str, seed: int) -> tuple[list[SampleRecord], torch.Tensor]:
    """Records without files (the cache keys them by their pixels) and seeded normalised images."""
    g = torch.Generator().manual_seed(seed)
    recs = [SampleRecord(Path(f"bench/{split}/{i}.png"), 0, None, "thing", "good", split, "bench") for i in range(n)]
    return recs, torch.randn(n, 3, size, size, generator=g)


def few_shot_sweep(method: AdaptCLIP, pool: tuple, test: Batch, k: int) -> None:
    """For each seed: draw k references, ``set_references``, ``predict`` the test images."""
    records, images = pool
    for seed in SEEDS:
        refs = sample_shots(records, k, seed, test.records)
        idx = [records.index(r) for r in refs]
        method.set_references(Batch(images[idx], refs, ["thing"] * k))
        method.predict(test)


def run_sweep(method: AdaptCLIP, ctx: Context, args: argparse.Namespace, root: Path) -> dict:
    size = ctx.backbone.input_size
    pool = fake_images(args.pool, size, "train", 1)
    test_recs, test_images = fake_images(args.test, size, "test", 2)
    test = Batch(test_images.to(args.device), test_recs, ["thing"] * args.test)
    pool = (pool[0], pool[1].to(args.device))
    ctx.cache = FeatureCache(root / "sweep-cache")
    cold_s, cold_calls = timed(ctx, args.device, lambda: few_shot_sweep(method, pool, test, args.shots))
    warm_s, warm_calls = timed(ctx, args.device, lambda: few_shot_sweep(method, pool, test, args.shots))
    if warm_calls:
        raise RuntimeError(f"the warm sweep ran the image encoder {warm_calls} times")
    return {
        "shots": args.shots,
        "seeds": list(SEEDS),
        "reference_pool": args.pool,
        "test_images": args.test,
        "cold_s": round(cold_s, 2),
        "warm_s": round(warm_s, 3),
        "ratio_cold_over_warm": round(cold_s / warm_s, 1),
        "encoder_forwards": {"cold": cold_calls, "warm": warm_calls},
    }


# ----------------------------------------------------------------------------- training epoch
def aux_batches(root: Path, n: int, batch: int, device: str) -> list[Batch]:
    """``n`` queries of the embedded synth_aux test split (the first of each category, in turn) decoded at 518."""
    from zsad_bench.auxdata import AuxDataset, build_aux, to_batch
    from zsad_bench.synth import AUX_CATEGORIES

    per = -(-n // len(AUX_CATEGORIES))
    aux = build_aux([{"name": "synth_aux"}], {"data_root": str(root)}, "test", per)
    data = AuxDataset(aux, {"input_size": 518, "interpolation": "bicubic"})
    order = sorted(range(len(aux.records)), key=lambda i: i % per)[:n]  # one per category, then the next one
    items = [data[i] for i in order]
    return [to_batch(items[i : i + batch], aux, torch.device(device)) for i in range(0, len(items), batch)]


def run_epochs(method: AdaptCLIP, ctx: Context, args: argparse.Namespace, root: Path) -> dict:
    batches = aux_batches(root / "data", args.queries, args.batch, args.device)
    recipe = TrainRecipe(epochs=1, batch_size=args.batch, lr=1e-3, betas=(0.5, 0.999), seed=10)
    seconds, calls, losses = {}, {}, {}
    draws = method.prompt_draws
    for phase in ("encoder", "fill", "cached"):
        if phase != "cached":
            ctx.cache = None if phase == "encoder" else FeatureCache(root / "train-cache")
        seconds[phase], calls[phase] = timed(
            ctx, args.device, lambda p=phase: losses.update({p: fit_batches(method, batches, recipe)[0]})
        )
    if calls["cached"]:
        raise RuntimeError(f"the cached epoch ran the image encoder {calls['cached']} times")
    return {
        "queries": args.queries,
        "batch_size": args.batch,
        "steps": len(batches),
        "prompt_images_per_epoch": (method.prompt_draws - draws) // 3,
        "epoch_encoder_s": round(seconds["encoder"], 2),
        "epoch_fill_cache_s": round(seconds["fill"], 2),
        "epoch_cached_s": round(seconds["cached"], 3),
        "ratio_encoder_over_cached": round(seconds["encoder"] / seconds["cached"], 1),
        "encoder_forwards": calls,
        "mean_loss": {k: round(v, 4) for k, v in losses.items()},
    }


# ----------------------------------------------------------------------------- inference rate
def inference_rate(method: AdaptCLIP, ctx: Context, args: argparse.Namespace) -> dict:
    """Images/s of ``predict`` without a cache (the encoder included), zero-shot and 1-shot."""
    size = ctx.backbone.input_size
    recs, images = fake_images(args.inference, size, "test", 3)
    b = Batch(images.to(args.device), recs, ["thing"] * len(recs))
    ctx.cache = None
    method.clear_references()
    method.predict(b)  # warm-up
    zero_s, _ = timed(ctx, args.device, lambda: method.predict(b))
    ref_recs, ref = fake_images(1, size, "train", 4)
    method.set_references(Batch(ref.to(args.device), ref_recs, ["thing"]))
    one_s, _ = timed(ctx, args.device, lambda: method.predict(b))
    n = len(recs)
    return {
        "batch": n,
        "zero_shot_images_per_s": round(n / zero_s, 2),
        "one_shot_images_per_s": round(n / one_s, 2),
        "zero_shot_ms_per_image": round(1000 * zero_s / n, 1),
        "one_shot_ms_per_image": round(1000 * one_s / n, 1),
        "paper_table3_ms": {"zero_shot": 162.2, "one_shot": 168.2, "note": "V100, batch 32, ViT-L/14@336 at 518"},
    }


# ----------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    """Build once, warm the text, then the sweep, the epochs and (optionally) the inference rate."""
    from zsad_bench.synth import AUX_CATEGORIES, SynthSpec, ensure_synth

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ensure_synth(root / "data" / "synth_aux", SynthSpec(AUX_CATEGORIES, seed=1))
        backbone = (
            BACKBONE | {"name": args.backbone} | ({} if args.backbone == BACKBONE["name"] else {"input_size": 518})
        )
        ctx = Context(device=args.device, seed=0, backbone_cfg=backbone)
        t = time.perf_counter()
        ctx.backbone.model  # noqa: B018  (the network build, timed on its own)
        build_s = time.perf_counter() - t
        method = AdaptCLIP(AdaptCLIPConfig(data_root=str(root / "data")))
        method.setup(ctx)
        t = time.perf_counter()
        with torch.no_grad():
            method.static_text()
            method.learned_text()
        text_s = time.perf_counter() - t
        result = {
            "backbone": f"{ctx.backbone.name} ({ctx.backbone.cfg.arch}), QuickGELU, 518x518, V-V from block 6, "
            "random weights, fp32",
            "device": args.device,
            "build_s": round(build_s, 2),
            "text_warmup_s": round(text_s, 2),
            "few_shot_sweep": run_sweep(method, ctx, args, root),
            "training_epoch": run_epochs(method, ctx, args, root),
        }
        if args.inference:
            method.set_training(False)
            result["inference"] = inference_rate(method, ctx, args)
        result["machine"] = machine()
    return result


def main() -> None:
    """Parse the arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--pool", type=int, default=5, help="normal 'train' images the references are drawn from")
    parser.add_argument("--test", type=int, default=1, help="test images of the sweep")
    parser.add_argument("--queries", type=int, default=2, help="training queries (each with a prompt image)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--inference", type=int, default=0, help="batch size of the inference-rate test (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default=BACKBONE["name"], help="tiny_clip: a quick check of the script")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    text = json.dumps(run(args), indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
