"""DINOv2 with linear segmentation heads trained on auxiliary data (the AdaCLIP baseline).

Paper: Cao et al., "AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly
Detection", ECCV 2024, arXiv 2407.15795, appendix §3 ("DINOV2": ViT-S/14, "additional learnable
projection layers after the multi-hierarchy patch embeddings", layers 3/6/9/12, "the same
training set"); main text §5.1 ("adding linear layers as segmentation heads after multiple
transformer layers"). Official code: none for this baseline; AdaCLIP's code
(https://github.com/caoyunkang/AdaCLIP @ e27ee32b, MIT) supplies the rest. Independent
implementation (:class:`zsad_bench.heads.SegHeadMethod`).

What it does: frozen DINOv2 ViT-S/14 (timm ``vit_small_patch14_dinov2.lvd142m``) at 518 (37×37
patches), raw patch tokens of layers 3, 6, 9, 12 (class and register tokens dropped), one
``Linear(384 → 2)`` per layer; per-layer logits upsampled bilinearly (``align_corners=True``),
averaged over layers, softmax, anomalous channel, Gaussian σ = 4; image score = map maximum.
Training: per layer focal + dice(anomalous, mask) + dice(normal, 1 − mask), summed; AdamW lr 0.01,
betas (0.5, 0.999), 5 epochs, seed 111 (AdaCLIP ``train.py``).

Our choices where the paper is silent, each a switch: the head outputs two logits per patch
(the paper names no text side for DINOv2); raw tokens (``norm=true`` applies DINOv2's final
LayerNorm); batch size 8 (``batch_size``); the map-maximum image score (AdaCLIP without HSF, the
only image score a text-free model has in AdaCLIP's design).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zsad_bench.heads import SegHeadConfig, SegHeadMethod
from zsad_bench.registry import register_method

__all__ = ["DINOv2Head", "DINOv2HeadConfig"]


@dataclass
class DINOv2HeadConfig(SegHeadConfig):
    """Knobs (see :class:`~zsad_bench.heads.SegHeadConfig`); layers from AdaCLIP's appendix §3."""

    name: str = "dinov2_head"
    layers: list[int] = field(default_factory=lambda: [3, 6, 9, 12])


@register_method(
    "dinov2_head",
    title="DINOv2 + linear segmentation heads (AdaCLIP baseline)",
    paper="ECCV 2024 (AdaCLIP appendix §3)",
    arxiv="2407.15795",
    code="",
    license="",
    trainable=True,
    shots=(0,),
    backbone="dinov2_vits14",
    input_size=518,
    summary="frozen DINOv2 ViT-S/14 tokens of layers 3/6/9/12, one Linear(D, 2) per layer",
)
class DINOv2Head(SegHeadMethod):
    """Frozen DINOv2 ViT-S/14 with per-layer linear segmentation heads."""

    Config = DINOv2HeadConfig
