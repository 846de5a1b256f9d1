"""Frozen features, computed once per image and kept on disk.

A :class:`FeatureSpec` names what is computed (backbone and its weights fingerprint,
preprocessing, input size, layers, variant and its options, storage dtype); its
``fingerprint`` keys a folder of the :class:`FeatureCache`, in which every image has one
safetensors file keyed by the image's identity (resolved path, size, mtime; a hash of the
input tensor when the file is unknown). Entries are written to a temporary file and
renamed (a killed writer leaves no partial entry), carry a sha256 of their data checked on
every read (a corrupt or truncated entry is reported, deleted and recomputed), and record
a hash of the input tensor (an entry computed from a different preprocessing is
recomputed, never used). Two processes may write the same entries: the last rename wins
and both contents are complete. The cache is bounded by ``max_bytes``; the least recently
used entries are evicted first.

Built-in variants (``FeatureSpec.variant``) and the keys they return, each (B, …):

- ``tokens`` (options ``norm``, ``proj``): ``tokens.<layer>`` (B, P+N, D), ``embed`` (B, E) if any;
- ``vv`` (options ``first_block``, ``norm``, ``proj``): ``vv.<layer>``, ``cls`` (B, D), ``embed``;
- ``windows`` (options ``scales``, ``stride``): ``windows.<scale>`` (B, W, E), ``embed``;
- ``embed``: ``embed`` (B, E).

Other frozen computations can be cached by passing ``compute=`` to :func:`get_features`
or by :func:`register_variant`. The storage itself is :mod:`zsad_bench.feature_cache`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from zsad_bench.feature_cache import (
    DTYPES,
    CacheInfo,
    FeatureCache,
    VerifyReport,
    default_cache_root,
    image_identity,
)

if TYPE_CHECKING:
    from zsad_bench.backbones.base import Backbone
    from zsad_bench.backbones.clip import CLIPBackbone
    from zsad_bench.context import Context
    from zsad_bench.types import Batch

__all__ = [
    "VARIANTS",
    "CacheInfo",
    "FeatureCache",
    "FeatureSpec",
    "VerifyReport",
    "compute_features",
    "default_cache_root",
    "get_features",
    "image_identity",
    "register_variant",
]

Features = dict[str, torch.Tensor]
VariantFn = Callable[["Backbone", torch.Tensor, "FeatureSpec"], Features]


# ----------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class FeatureSpec:
    """What a set of frozen features is; equal specs give equal features.

    Attributes:
        backbone: the backbone name.
        weights: the backbone's weights fingerprint.
        model: canonical JSON of the backbone options that change features.
        preprocessing: the image transform (resize, mean, std).
        input_size: input side in pixels.
        layers: requested layers (as given to the backbone).
        variant: a key of :data:`VARIANTS` or a custom name used with ``compute=``.
        options: sorted (key, value) pairs of the variant's options.
        dtype: storage dtype (``fp16``, ``bf16``, ``fp32``); None = the cache's.
    """

    backbone: str
    weights: str
    model: str
    preprocessing: str
    input_size: int
    layers: tuple[int, ...] = ()
    variant: str = "tokens"
    options: tuple[tuple[str, Any], ...] = ()
    dtype: str | None = None

    @classmethod
    def create(
        cls,
        backbone: Backbone,
        variant: str = "tokens",
        layers: Sequence[int] = (),
        dtype: str | None = None,
        **options: Any,
    ) -> FeatureSpec:
        """The spec of ``variant`` features of ``backbone`` (does not load the network)."""
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"feature dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        sig = backbone.signature()
        model = json.dumps({k: v for k, v in sig.items() if k not in ("name", "weights")}, sort_keys=True)
        return cls(
            backbone=backbone.name,
            weights=backbone.weights_fingerprint,
            model=model,
            preprocessing=backbone.cfg.preprocessing(),
            input_size=backbone.input_size,
            layers=tuple(int(x) for x in layers),
            variant=variant,
            options=tuple(sorted((k, _freeze(v)) for k, v in options.items())),
            dtype=dtype,
        )

    def option(self, key: str, default: Any = None) -> Any:
        """The value of a variant option."""
        return dict(self.options).get(key, default)

    @property
    def fingerprint(self) -> str:
        """32 hex digits of the sha256 of the canonical JSON of every field."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @property
    def label(self) -> str:
        """A short human-readable description."""
        opts = ",".join(f"{k}={v}" for k, v in self.options)
        layers = ",".join(map(str, self.layers))
        return f"{self.backbone}[{self.weights}]/{self.variant}({opts})/L{layers}/{self.dtype}"


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# ----------------------------------------------------------------------------- variants
VARIANTS: dict[str, VariantFn] = {}


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    """Register ``fn(backbone, images, spec) -> {key: (B, …) tensor}`` as a feature variant."""

    def deco(fn: VariantFn) -> VariantFn:
        VARIANTS[name] = fn
        return fn

    return deco


@register_variant("tokens")
def _tokens(bb: Backbone, images: torch.Tensor, spec: FeatureSpec) -> Features:
    out = bb.image_tokens(images, spec.layers, norm=spec.option("norm", False), proj=spec.option("proj", False))
    feats = {f"tokens.{layer}": t for layer, t in out.layers.items()}
    if out.embed is not None:
        feats["embed"] = out.embed
    return feats


def _clip(bb: Backbone) -> CLIPBackbone:
    """``bb`` typed as the CLIP backbone whose encoders the vv/windows/embed variants call (no check)."""
    return cast("CLIPBackbone", bb)


@register_variant("vv")
def _vv(bb: Backbone, images: torch.Tensor, spec: FeatureSpec) -> Features:
    first, clip = spec.option("first_block"), _clip(bb)
    if first is None:
        raise ValueError("the 'vv' feature variant needs the option first_block")
    out = clip.vv_tokens(images, spec.layers, first, norm=spec.option("norm", False), proj=spec.option("proj", False))
    return {**{f"vv.{layer}": t for layer, t in out.vv.items()}, "cls": out.cls, "embed": out.embed}


@register_variant("windows")
def _windows(bb: Backbone, images: torch.Tensor, spec: FeatureSpec) -> Features:
    from zsad_bench.backbones.clip_ops import make_windows

    clip, stride = _clip(bb), spec.option("stride", 1)
    feats = {
        f"windows.{s}": clip.window_embeddings(images, make_windows(clip.grid_size, s, stride))
        for s in spec.option("scales", (2, 3))
    }
    feats["embed"] = clip.encode_image(images)
    return feats


@register_variant("embed")
def _embed(bb: Backbone, images: torch.Tensor, spec: FeatureSpec) -> Features:
    return {"embed": _clip(bb).encode_image(images)}


def compute_features(backbone: Backbone, images: torch.Tensor, spec: FeatureSpec) -> Features:
    """Run the spec's variant on ``images`` (no cache).

    Raises:
        KeyError: for an unknown variant, listing the known ones.
    """
    if spec.variant not in VARIANTS:
        raise KeyError(f"unknown feature variant {spec.variant!r}; known: {sorted(VARIANTS)} (or pass compute=)")
    return VARIANTS[spec.variant](backbone, images, spec)


def get_features(
    ctx: Context,
    batch: Batch,
    spec: FeatureSpec,
    *,
    compute: VariantFn | None = None,
    use_cache: bool = True,
) -> Features:
    """Features of ``batch`` described by ``spec``: from ``ctx.cache`` when present, else computed.

    Args:
        ctx: the run context (``backbone`` is loaded only if something must be computed).
        batch: images and their records (the records key the cache entries).
        spec: what to compute.
        compute: a custom ``fn(backbone, images, spec)`` instead of the registered variant.
        use_cache: False for batches whose pixels do not come from their records (augmentation).

    Returns:
        key → (B, …) float32 tensors on ``ctx.device``. With a cache, the values are those
        stored (rounded to the storage dtype) on the first run as on later ones.
    """
    fn = compute or (lambda bb, images, s: compute_features(bb, images, s))
    cache = ctx.cache if use_cache else None
    if cache is None:
        feats = fn(ctx.backbone, batch.images, spec)
        return {k: v.to(ctx.device, torch.float32) for k, v in feats.items()}
    return cache.fetch(spec, batch.records, batch.images, lambda imgs: fn(ctx.backbone, imgs, spec), ctx.device)
