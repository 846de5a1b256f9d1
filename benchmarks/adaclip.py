"""AdaCLIP inference (and training-step) speed: our pipeline against a faithful batch-1 recompute-everything one.

Usage::

    python benchmarks/adaclip.py                      # ViT-L-14-336 at 518, random weights, 3 images, CPU
    python benchmarks/adaclip.py --backbone tiny_clip --size 224 --images 4   # seconds, for a quick check
    python benchmarks/adaclip.py --device cuda --precision bf16               # on a GPU

The faithful pipeline (:func:`faithful_predict`) does what the official ``method/adaclip.py``
does for one image at a time, written against the open_clip modules directly: the frozen
un-prompted image forward for the dynamic-prompt generator, the prompted image forward, the 48
prompt sentences through the text encoder at the full 77 tokens, projections, HSF, maps. Ours
(:meth:`AdaCLIP.predict`) reads the generator's frozen embedding from the feature cache,
batches the images and runs the sentences only up to the longest end token (exact under the
causal mask). Both give the same maps (the maximum difference is printed); the images/s of
both and the speed-up are printed as JSON, with the cold-cache (first run) and warm-cache
(embedding already cached: a re-run, another ablation, a later training epoch) numbers.

Training-step time: one ``training_step`` + backward on one image, with the generator's
embedding computed (no cache) and read from a warm cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zsad_bench.context import Context
from zsad_bench.features import FeatureCache
from zsad_bench.methods.adaclip import AdaCLIP, AdaCLIPConfig, _kmeans_function, hsf_code
from zsad_bench.types import Batch, SampleRecord


# ----------------------------------------------------------------------------- the faithful pipeline
def _vision(method: AdaCLIP, image: torch.Tensor, prompts: list[torch.Tensor] | None):
    """One image through the image encoder, prompts appended/replaced as the code does; (layer tokens, pooled)."""
    bb, m = method.ctx.backbone, method.cfg.prompt_length
    v = bb.model.visual
    x = v.conv1(image).flatten(2).transpose(1, 2)  # (1, N, D)
    x = torch.cat([v.class_embedding.expand(1, 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    taken = {}
    for i, block in enumerate(v.transformer.resblocks):
        if prompts is not None and i < len(prompts):
            p = prompts[i].half().float()  # the code's .half()
            x = torch.cat([x, p], dim=1) if i == 0 else torch.cat([x[:, :-m], p], dim=1)
        x = block(x)
        if i + 1 in method.layers:
            taken[i + 1] = x[:, :-m] if prompts is not None else x
    return taken, v.ln_post(x[:, 0]) @ v.proj


def _text(method: AdaCLIP, category: str, prompts: list[torch.Tensor] | None) -> torch.Tensor:
    """(2, E) text of one class at the full context length, prompts overwriting positions 1..M before blocks 2..J."""
    bb, m = method.ctx.backbone, method.cfg.prompt_length
    model = bb.model
    out = []
    for sentences in method._sentences(category.replace("-", " ")):
        tokens = bb.tokenize(sentences)  # (K, 77)
        x = model.token_embedding(tokens) + model.positional_embedding
        for i, block in enumerate(model.transformer.resblocks):
            if prompts is not None and 0 < i < len(prompts):
                p = prompts[i].half().float().expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], p, x[:, 1 + m :]], dim=1)
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
        out.append(F.normalize(F.normalize(x, dim=-1).mean(dim=0), dim=0))
    return torch.stack(out)  # (2, E)


def faithful_predict(method: AdaCLIP, image: torch.Tensor, category: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The official pipeline for one (1, 3, S, S) image and the default switches: (map (S, S), score ())."""
    from scipy.ndimage import gaussian_filter

    c, parts = method.cfg, method.parts
    with torch.no_grad():
        _, frozen = _vision(method, image, None)  # the generator's input, recomputed every time
        prompts = {}
        for enc in ("vision", "text"):
            dyn = torch.stack([lin(frozen) for lin in parts[f"{enc}_gen"]], dim=1)  # (1, M, D)
            prompts[enc] = [dyn + s[None] for s in parts[f"{enc}_static"]]
        taken, pooled = _vision(method, image, prompts["vision"])
        text = _text(method, category, prompts["text"]).T  # (E, 2)
        tokens = [F.normalize(parts["patch_proj"][str(k)](t[:, 1:]), dim=-1) for k, t in taken.items()]
        cls = F.normalize(parts["cls_proj"](pooled), dim=-1)
        logits = [c.logit_scale * t @ text for t in tokens]  # L × (1, N, 2)
        fused = hsf_code(tokens, logits, c.k_clusters, c.hsf_topk_factor, _kmeans_function(None, method.ctx.seed))
        feature = F.normalize(c.hsf_alpha * fused + (1 - c.hsf_alpha) * cls, dim=-1)
        score = (c.logit_scale * feature @ text).softmax(dim=-1)[0, 1]
        g = int(logits[0].shape[1] ** 0.5)
        size = image.shape[-1]
        maps = [
            F.interpolate(lg.permute(0, 2, 1).reshape(1, 2, g, g), size=size, mode="bilinear", align_corners=True)
            for lg in logits
        ]
        probs = torch.stack(maps).mean(dim=0).softmax(dim=1)
        amap = ((probs[:, 1] + 1 - probs[:, 0]) / 2)[0]
    smoothed = torch.from_numpy(gaussian_filter(amap.cpu().numpy(), sigma=c.sigma))
    return smoothed, score.cpu()


# ----------------------------------------------------------------------------- timing
def _images(n: int, size: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    recs = [SampleRecord(Path(f"bench_{i}.png"), i % 2, None, "bottle", "good", "test", "bench") for i in range(n)]
    return Batch(torch.randn(n, 3, size, size, generator=g), recs, ["bottle"] * n)


def _method(args: argparse.Namespace, cache: FeatureCache | None, backbone: Any = None) -> AdaCLIP:
    bcfg = {"name": args.backbone, "weights": "random", "input_size": args.size, "pos_antialias": False}
    if args.precision:
        bcfg["precision"] = args.precision
    method = AdaCLIP(AdaCLIPConfig())
    method.setup(Context(device=args.device, seed=0, backbone_cfg=bcfg, cache=cache, _backbone=backbone))
    return method


def _timed(fn: Any) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def _train_step(method: AdaCLIP, batch: Batch) -> float:
    batch.labels = torch.tensor([1] * len(batch))
    batch.masks = torch.zeros(len(batch), *batch.images.shape[-2:])
    batch.masks[:, 100:200, 100:200] = 1

    def step() -> None:
        loss = sum(method.training_step(batch).values())
        loss.backward()

    method.set_training(True)
    _, seconds = _timed(step)
    method.set_training(False)
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time both pipelines and compare their maps."""
    torch.manual_seed(0)
    images = _images(args.images, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ours = _method(args, FeatureCache(root=tmp, dtype="fp32"))
        ours.ctx.backbone.model  # noqa: B018 - load before timing
        images.images = images.images.to(args.device)
        one = [images.images[i : i + 1] for i in range(len(images))]
        ref = [_timed(lambda x=x: faithful_predict(ours, x, "bottle")) for x in one]
        faithful_s = sum(s for _, s in ref)
        cold, cold_s = _timed(lambda: ours.predict(images))
        warm, warm_s = _timed(lambda: ours.predict(images))
        diff_map = max(float((r[0] - cold.anomaly_maps[i]).abs().max()) for i, (r, _) in enumerate(ref))
        diff_score = max(float((r[1] - cold.image_scores[i]).abs()) for i, (r, _) in enumerate(ref))
        train = {}
        if args.train_steps:
            one = _images(1, args.size, seed=1)
            one.images = one.images.to(args.device)
            no_cache = _method(args, None, ours.ctx.backbone)
            no_cache.load_learnable_state(ours.learnable_state())
            train["no_cache_s"] = min(_train_step(no_cache, one) for _ in range(args.train_steps))
            ours.predict(one)  # fills the cache with this image's embedding
            train["warm_cache_s"] = min(_train_step(ours, one) for _ in range(args.train_steps))
            train["speedup"] = round(train["no_cache_s"] / train["warm_cache_s"], 3)
    n = len(images)
    return {
        "backbone": args.backbone,
        "size": args.size,
        "images": n,
        "device": args.device,
        "precision": args.precision or "fp32",
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "faithful_images_per_s": round(n / faithful_s, 4),
        "ours_cold_images_per_s": round(n / cold_s, 4),
        "ours_warm_images_per_s": round(n / warm_s, 4),
        "speedup_cold": round(faithful_s / cold_s, 3),
        "speedup_warm": round(faithful_s / warm_s, 3),
        "max_abs_map_difference": diff_map,
        "max_abs_score_difference": diff_score,
        "warm_equals_cold": bool(torch.equal(cold.anomaly_maps, warm.anomaly_maps)),
        "train_step": train,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="clip_vit_l14_336")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, help="fp32 | bf16 | fp16 (CUDA autocast)")
    parser.add_argument("--train-steps", type=int, default=1, help="training steps timed per variant (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
