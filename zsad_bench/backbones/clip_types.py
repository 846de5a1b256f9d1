"""Structural types of the open_clip modules the CLIP backbone drives.

open_clip ships no type information and ``nn.Module.__getattr__`` types every submodule
as ``Tensor | Module``, so the backbone views the network through these protocols (a
``typing.cast``, nothing is checked or converted at run time). They list only what
:mod:`~zsad_bench.backbones.clip`, :mod:`~zsad_bench.backbones.clip_text` and
:mod:`~zsad_bench.backbones.clip_ops` use (open_clip ``transformer.py`` and ``model.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

__all__ = ["Attention", "Blocks", "CLIPModel", "ResBlock", "VisionTower"]


class Attention(Protocol):
    """``nn.MultiheadAttention`` (or open_clip ``Attention``): packed q/k/v projection, out-projection."""

    num_heads: int
    in_proj_weight: torch.Tensor  # (3·D, D): the q, k, v thirds
    in_proj_bias: torch.Tensor | None  # (3·D,)
    out_proj: nn.Module


class ResBlock(Protocol):
    """open_clip ``ResidualAttentionBlock``: ``x + ls_1(attn(ln_1(x)))``, then ``x + ls_2(mlp(ln_2(x)))``."""

    attn: nn.Module
    ln_1: nn.Module
    ls_1: nn.Module
    ln_2: nn.Module
    mlp: nn.Module
    ls_2: nn.Module

    def __call__(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) → (B, L, D)."""
        ...


class Blocks(Protocol):
    """open_clip ``Transformer``: the residual blocks, batch-first."""

    resblocks: Sequence[ResBlock]


class VisionTower(Protocol):
    """open_clip ``VisionTransformer`` (``model.visual``) with class-token pooling."""

    conv1: nn.Module  # the patch embedding, (B, 3, S, S) → (B, D, g, g)
    class_embedding: torch.Tensor  # (D,)
    positional_embedding: torch.Tensor  # (1 + g·g, D)
    patch_dropout: nn.Module
    ln_pre: nn.Module
    transformer: Blocks
    ln_post: nn.Module
    proj: torch.Tensor  # (D, E)
    grid_size: tuple[int, int]
    image_size: tuple[int, int]


class CLIPModel(Protocol):
    """open_clip ``CLIP``: the image tower and the text tower's parts, flattened onto the model."""

    visual: VisionTower
    logit_scale: torch.Tensor
    token_embedding: nn.Module  # (K, L) ids → (K, L, D)
    positional_embedding: torch.Tensor  # (context_length, D)
    attn_mask: torch.Tensor | None  # (L, L) causal mask
    transformer: Blocks
    ln_final: nn.Module
    text_projection: torch.Tensor | nn.Linear  # (D, E) or a linear layer
    text_eos_id: int
