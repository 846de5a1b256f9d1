"""Frozen backbones (CLIP, DINOv2, SAM) behind one API, and weight resolution.

Build one from its config group (``conf/backbone/<name>.yaml``)::

    from zsad_bench.backbones import build_backbone

    bb = build_backbone({"name": "tiny_clip", "weights": "random"})
    out = bb.image_tokens(images, layers=[6, 12, 18, 24])  # tiny_clip maps them to 1..4
    out.layers[24].shape  # (B, 1 + N, D)

The family modules (``clip``, ``dinov2``, ``sam``) register their backbones when the
registry discovers them; they import open_clip, timm and segment-anything only when a
network is built. See docs/backbones.md for the API and the reference behaviours.
"""

from zsad_bench.backbones.base import Backbone, Geometry, ImageTokens, build_backbone, default_config
from zsad_bench.backbones.clip_ops import make_windows
from zsad_bench.backbones.config import BackboneConfig
from zsad_bench.backbones.weights import ResolvedWeights, WeightsUnavailableError, resolve_weights

__all__ = [
    "Backbone",
    "BackboneConfig",
    "Geometry",
    "ImageTokens",
    "ResolvedWeights",
    "WeightsUnavailableError",
    "build_backbone",
    "default_config",
    "make_windows",
    "resolve_weights",
]
