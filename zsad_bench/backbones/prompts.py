"""Learnable-token insertion into the CLIP encoders, as prompt hooks.

A prompt hook is a callable ``hook(block, x) -> x`` that the CLIP encoders call before
each transformer block, with ``block`` the 1-based index of the block about to run and
``x`` the (B, L, D) token sequence. Hooks return a new tensor (never modify ``x`` in
place) so that gradients reach the prompt parameters. Image-encoder hooks may only
*append* tokens at the end; the encoders drop the appended tokens from their outputs.

The two schemes of the reference methods:

- AdaCLIP image encoder (``method/adaclip.py``): before block 1 the M prompt tokens are
  appended after the patch tokens (no positional embedding); before blocks 2..J the last
  M tokens are replaced by that layer's prompts; later blocks let them propagate →
  :func:`append_prompts`.
- AdaCLIP / AnomalyCLIP text encoder: block 1 gets nothing; before blocks 2..J the tokens
  at positions 1..M (right after SOT) are overwritten → :func:`overwrite_prompts`.

Learned word embeddings (AnomalyCLIP / AdaptCLIP context vectors in a placeholder
sentence) replace rows of the token embeddings before the positional embedding:
:func:`replace_token_embeddings`, then ``CLIPBackbone.encode_token_embeddings``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["PromptHook", "append_prompts", "chain", "overwrite_prompts", "replace_token_embeddings"]

PromptHook = Callable[[int, torch.Tensor], torch.Tensor]


def _batched(p: torch.Tensor, batch: int) -> torch.Tensor:
    """(M, D), (1, M, D) or (B, M, D) → (B, M, D)."""
    if p.ndim == 2:
        p = p.unsqueeze(0)
    if p.shape[0] not in (1, batch):
        raise ValueError(f"prompt batch {p.shape[0]} does not match the token batch {batch}")
    return p.expand(batch, -1, -1)


def append_prompts(prompts: Sequence[torch.Tensor], first_block: int = 1) -> PromptHook:
    """AdaCLIP's image-encoder scheme.

    Args:
        prompts: J tensors of shape (M, D), (1, M, D) or (B, M, D).
        first_block: the block before which ``prompts[0]`` is appended; ``prompts[j]``
            replaces the last M tokens before block ``first_block + j``.

    Example:
        >>> import torch
        >>> hook = append_prompts([torch.ones(2, 4), torch.zeros(2, 4)])
        >>> x = hook(1, torch.randn(3, 5, 4)); x.shape
        torch.Size([3, 7, 4])
        >>> float(hook(2, x)[:, -2:].abs().sum())
        0.0
    """
    if not prompts:
        raise ValueError("append_prompts needs at least one prompt tensor")
    m = prompts[0].shape[-2]

    def hook(block: int, x: torch.Tensor) -> torch.Tensor:
        j = block - first_block
        if j < 0 or j >= len(prompts):
            return x
        p = _batched(prompts[j], x.shape[0]).to(x.dtype)  # (B, M, D)
        if j == 0:
            return torch.cat([x, p], dim=1)  # (B, L+M, D)
        return torch.cat([x[:, :-m], p], dim=1)

    return hook


def overwrite_prompts(prompts: Sequence[torch.Tensor], first_block: int = 2, start: int = 1) -> PromptHook:
    """Deep text prompts that overwrite positions ``start .. start+M-1``.

    Args:
        prompts: tensors of shape (M, D) or (K, M, D); ``prompts[j]`` is written before
            block ``first_block + j``.
        first_block: the first block that gets prompts (2 for AdaCLIP and AnomalyCLIP).
        start: the first overwritten position (1 = right after SOT).
    """

    def hook(block: int, x: torch.Tensor) -> torch.Tensor:
        j = block - first_block
        if j < 0 or j >= len(prompts):
            return x
        p = _batched(prompts[j], x.shape[0]).to(x.dtype)  # (K, M, D)
        end = start + p.shape[1]
        if end > x.shape[1]:
            raise ValueError(f"prompt positions {start}..{end - 1} exceed the sequence length {x.shape[1]}")
        return torch.cat([x[:, :start], p, x[:, end:]], dim=1)

    return hook


def chain(*hooks: PromptHook | None) -> PromptHook:
    """One hook applying ``hooks`` in order (None entries are skipped)."""
    active = [h for h in hooks if h is not None]

    def hook(block: int, x: torch.Tensor) -> torch.Tensor:
        for h in active:
            x = h(block, x)
        return x

    return hook


def replace_token_embeddings(embeddings: torch.Tensor, ctx: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Replace rows ``start .. start+M-1`` of token embeddings by learnable vectors.

    Args:
        embeddings: (K, L, D) token embeddings of placeholder sentences.
        ctx: (M, D) shared or (K, M, D) per-sentence context vectors.
        start: first replaced position (1 = right after SOT).

    Returns:
        (K, L, D) embeddings; gradients flow into ``ctx``.
    """
    ctx = _batched(ctx, embeddings.shape[0]).to(embeddings.dtype)
    end = start + ctx.shape[1]
    return torch.cat([embeddings[:, :start], ctx, embeddings[:, end:]], dim=1)
