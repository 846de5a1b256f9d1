"""Pure tensor operations behind the CLIP backbone: V-V attention, windows, pos-embed resize.

Nothing here holds state; the functions take the open_clip modules they need.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from zsad_bench.backbones.clip_types import Attention

__all__ = ["dual_attention", "make_windows", "resize_grid_embedding"]


def dual_attention(attn: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original and the V-V attention of one block, sharing its q/k/v and out-projection.

    Spec §1.2 (AnomalyCLIP DPAM / CLIP Surgery): original = softmax(q kᵀ·s) v, V-V =
    softmax(v vᵀ·s) v with s = head_dim^-0.5; both go through the same out-projection.

    Args:
        attn: the block's attention (``nn.MultiheadAttention`` or open_clip ``Attention``),
            with ``in_proj_weight``/``in_proj_bias`` (q, k, v thirds) and ``out_proj``.
        y: (B, L, D) tokens after the block's ``ln_1``.

    Returns:
        (original, vv), each (B, L, D).
    """
    b, n, d = y.shape
    mha = cast(Attention, attn)
    h = mha.num_heads
    q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)  # 3 × (B, L, D)
    q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
    ori = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
    vv = F.scaled_dot_product_attention(v, v, v)
    both = torch.stack([ori, vv]).transpose(2, 3).reshape(2, b, n, d)  # (2, B, L, D)
    both = mha.out_proj(both)
    return both[0], both[1]


def make_windows(grid: int | tuple[int, int], scale: int, stride: int = 1) -> torch.Tensor:
    """Patch indices of every ``scale``×``scale`` window fully inside the grid.

    Windows are ordered row-major by their top-left patch; inside a window the patches are
    row-major too. Patch index = row · cols + col (0-based, prefix tokens not counted).

    Args:
        grid: rows and cols of the patch grid (an int for a square grid).
        scale: window side in patches.
        stride: step between windows in patches.

    Returns:
        (W, scale²) long tensor, W = ((rows − scale)//stride + 1) · ((cols − scale)//stride + 1).

    Example:
        >>> make_windows(3, 2).tolist()
        [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    """
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    if not 1 <= scale <= min(rows, cols) or stride < 1:
        raise ValueError(f"window scale {scale} (stride {stride}) does not fit a {rows}x{cols} grid")
    index = torch.arange(rows * cols).reshape(1, 1, rows, cols).float()
    patches = F.unfold(index, kernel_size=scale, stride=stride)  # (1, scale², W)
    return patches[0].T.round().long().contiguous()


def resize_grid_embedding(grid_emb: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    """Resize a (G·G, D) positional-embedding grid to (rows·cols, D).

    Done as open_clip/APRIL-GAN/AdaCLIP (bicubic) and AnomalyCLIP/AdaptCLIP (bilinear) do it:
    reshape to (1, D, G, G), ``F.interpolate(align_corners=False)``, flatten back row-major.
    """
    g = math.isqrt(grid_emb.shape[0])
    if g * g != grid_emb.shape[0]:
        raise ValueError(f"positional embedding of {grid_emb.shape[0]} tokens is not a square grid")
    x = grid_emb.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()  # (1, D, G, G)
    x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)
    return x.permute(0, 2, 3, 1).reshape(size[0] * size[1], -1).to(grid_emb.dtype)  # (rows·cols, D)
