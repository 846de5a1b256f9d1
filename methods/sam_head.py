"""SAM's image encoder with linear segmentation heads trained on auxiliary data (the AdaCLIP baseline).

Paper: Cao et al., "AdaCLIP", ECCV 2024, arXiv 2407.15795, appendix §3 ("SAM": "we discard the
prompting encoder and mask decoder of SAM and only utilize the backbone of ViT-L architecture for
patch embedding extraction … we append trainable projection layers to the patch embeddings from
the 6th, 12th, 18th, and 24th layers"). Official code: none for this baseline; AdaCLIP's code
(https://github.com/caoyunkang/AdaCLIP @ e27ee32b, MIT) supplies the rest. Independent
implementation (:class:`zsad_bench.heads.SegHeadMethod`).

What it does: frozen SAM ViT-L image encoder (segment-anything, ``sam_vit_l_0b3195.pth``) at its
1024×1024 input (64×64 patches), block outputs of layers 6, 12, 18, 24 (its global-attention
blocks; before the neck), one ``Linear(1024 → 2)`` per layer; per-layer logits upsampled
bilinearly (``align_corners=True``), averaged, softmax, anomalous channel, Gaussian σ = 4; image
score = map maximum. Training as AdaCLIP: per layer focal + two dice terms; AdamW lr 0.01, betas
(0.5, 0.999), 5 epochs, seed 111.

Our choices where the paper is silent, each a switch: two logits per patch; input 1024 (SAM's own;
the paper resizes every image to 518, which SAM's patch-16 grid cannot take exactly — set
``backbone.input_size`` to a multiple of 16 to change it); batch size 8 (``batch_size``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zsad_bench.heads import SegHeadConfig, SegHeadMethod
from zsad_bench.registry import register_method

__all__ = ["SAMHead", "SAMHeadConfig"]


@dataclass
class SAMHeadConfig(SegHeadConfig):
    """Knobs (see :class:`~zsad_bench.heads.SegHeadConfig`); layers from AdaCLIP's appendix §3."""

    name: str = "sam_head"
    layers: list[int] = field(default_factory=lambda: [6, 12, 18, 24])


@register_method(
    "sam_head",
    title="SAM encoder + linear segmentation heads (AdaCLIP baseline)",
    paper="ECCV 2024 (AdaCLIP appendix §3)",
    arxiv="2407.15795",
    code="",
    license="",
    trainable=True,
    shots=(0,),
    backbone="sam_vit_l",
    input_size=1024,
    summary="frozen SAM ViT-L encoder tokens of layers 6/12/18/24, one Linear(D, 2) per layer",
)
class SAMHead(SegHeadMethod):
    """Frozen SAM ViT-L image encoder with per-layer linear segmentation heads."""

    Config = SAMHeadConfig
