"""Epoch time of the shared trainer with cached frozen features versus running the encoder every epoch.

Usage::

    python benchmarks/train.py                       # ViT-B-16 (random weights), 4 x 8 synth_aux images, CPU
    python benchmarks/train.py --per-category 16 --epochs 4 --threads 2

APRIL-GAN's trainer path (``train_or_load``: decode the auxiliary images, frozen features,
per-layer projections, focal + dice, Adam) runs twice on the embedded ``synth_aux`` data with the
real open_clip ``ViT-B-16`` architecture at 224 px and seeded random weights (no download):

* ``cached``: a :class:`~zsad_bench.features.FeatureCache`; epoch 1 runs the encoder and stores
  the tokens, later epochs read them back;
* ``encoder``: no cache; every epoch runs the encoder.

The speed-up is the mean ``encoder`` epoch time over the mean ``cached`` epoch time after the
first. Layers 3/6/9/12 (ViT-B has 12 blocks) and a one-template prompt list keep the text side
small; the text embeddings are memoised in both runs, so they only weigh on epoch 1. Every
epoch still decodes and resizes the images (96 px synthetic PNGs here; real datasets' larger
files cost more per image, which lowers the ratio).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def compose(args: argparse.Namespace, root: Path, tag: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    overrides = [
        "method=april_gan",
        f"backbone={args.backbone}",
        "backbone.weights=random",
        f"backbone.input_size={args.size}",
        "method.layers=[3,6,9,12]",
        "method.templates=clip_templates",
        "dataset=synth",
        f"paths.data_root={root / 'data'}",
        f"paths.results_root={root / tag}",
        f"paths.weights_root={root / 'weights'}",
        f"train.epochs={args.epochs}",
        f"train.max_per_category={args.per_category}",
        f"train.batch_size={args.batch_size}",
        "train.progress=false",
    ]
    with initialize_config_module(config_module="zsad_bench.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run(args: argparse.Namespace, root: Path, cached: bool) -> dict:
    from omegaconf import OmegaConf

    from zsad_bench.build import build_method
    from zsad_bench.context import Context
    from zsad_bench.features import FeatureCache
    from zsad_bench.train import train_or_load

    tag = "cached" if cached else "encoder"
    cfg = compose(args, root, tag)
    method = build_method(cfg.method)
    cache = FeatureCache(root / "cache") if cached else None
    ctx = Context(device="cpu", seed=0, backbone_cfg=OmegaConf.to_container(cfg.backbone, resolve=True), cache=cache)
    method.setup(ctx)
    t = time.perf_counter()
    record = train_or_load(method, cfg, ctx)
    return {
        "run": tag,
        "status": record.status,
        "epoch_seconds": record.epoch_seconds,
        "total_seconds": round(time.perf_counter() - t, 2),
        "encoder_forwards": ctx.backbone.forward_calls,
        "steps": record.steps,
        "losses": [round(x, 4) for x in record.losses],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="clip_vit_b16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--per-category", type=int, default=8, help="auxiliary images per synth_aux category (4 cats)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = [run(args, root, cached=True), run(args, root, cached=False)]
    cached = statistics.mean(runs[0]["epoch_seconds"][1:])
    encoder = statistics.mean(runs[1]["epoch_seconds"])
    report = {
        "backbone": f"{args.backbone} (random weights) at {args.size}px",
        "images_per_epoch": 4 * args.per_category,
        "epochs": args.epochs,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "runs": runs,
        "cached_epoch_after_first_s": round(cached, 3),
        "encoder_epoch_s": round(encoder, 3),
        "speedup": round(encoder / cached, 1),
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
