"""The losses of the trained ZSAD methods: focal, binary dice, BCE and cross-entropy.

Focal and dice follow the ``loss.py`` shared verbatim by APRIL-GAN, AnomalyCLIP, AdaCLIP and
AdaptCLIP; the code here is our own.

* :func:`focal_loss` takes **probabilities** (already softmaxed, nothing is applied inside),
  shape (B, C, H, W) for maps or (B, C) for image-level predictions, and an integer class
  target of shape (B, H, W), (B, 1, H, W) or (B,). The one-hot target is clamped to
  ``[smooth / (C - 1), 1 - smooth]``; ``p_t = sum(onehot * p) + smooth``;
  ``loss = -alpha_t * (1 - p_t) ** gamma * log(p_t)``, averaged over all pixels (or samples).
* :func:`binary_dice_loss` takes one probability channel (B, H, W) and a {0, 1} target:
  ``1 - mean_b (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["bce_loss", "binary_dice_loss", "cross_entropy_loss", "focal_loss"]


def focal_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Sequence[float] | None = None,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Focal loss on class probabilities, as in the reference ``FocalLoss`` (mean over pixels).

    Args:
        probs: (B, C, H, W) or (B, C) probabilities (softmax already applied).
        target: class indices, (B, H, W), (B, 1, H, W) or (B,); float {0, 1} masks are accepted
            and truncated to integers like the reference (``long()``).
        gamma: focusing exponent.
        alpha: per-class weight; None weighs every class 1.
        smooth: label smoothing of the one-hot target and the floor added to ``p_t``.

    Returns:
        A scalar tensor.

    Example:
        >>> p = torch.tensor([[0.9, 0.1]])
        >>> round(float(focal_loss(p, torch.tensor([0]))), 6)  # -(1 - 0.9)^2 log 0.9
        0.001054
    """
    if probs.ndim < 2:
        raise ValueError(f"focal_loss expects probabilities of shape (B, C[, H, W]), got {tuple(probs.shape)}")
    b, c = probs.shape[:2]
    p = probs.reshape(b, c, -1)  # (B, C, P): no transpose, the class axis stays in place
    idx = target.reshape(b, 1, -1).long() if target.numel() == p[:, 0].numel() else None
    if idx is None:
        raise ValueError(f"focal_loss: target has {target.numel()} elements for probabilities {tuple(probs.shape)}")
    p_true = p.gather(1, idx)[:, 0]  # (B, P) probability of the target class
    # Σ(clamped one-hot · p) + smooth: weight 1 - smooth on the target class, smooth / (C - 1) on the others
    off = smooth / (c - 1) if smooth else 0.0
    p_t = p_true * (1.0 - smooth - off) + p.sum(dim=1) * off + smooth if smooth else p_true
    loss = -(1.0 - p_t).pow(gamma) * p_t.log()  # (B, P)
    if alpha is not None:
        weight = p.new_tensor(list(alpha))
        if weight.numel() != c:
            raise ValueError(f"focal_loss: alpha has {weight.numel()} values for {c} classes")
        loss = loss * weight[idx[:, 0]]
    return loss.mean()


def binary_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Dice loss of one probability channel against a {0, 1} target, averaged over the batch.

    Args:
        probs: (B, H, W) (or any (B, ...)) probabilities of the positive class.
        target: the same shape, {0, 1}.
        smooth: added to numerator and denominator.

    Returns:
        A scalar tensor: ``1 - mean_b dice_b``.

    Example:
        >>> p = torch.tensor([[1.0, 0.0]]); g = torch.tensor([[1.0, 0.0]])
        >>> float(binary_dice_loss(p, g))  # (2·1 + 1) / (1 + 1 + 1) = 1
        0.0
    """
    if probs.shape[0] != target.shape[0] or probs[0].numel() != target[0].numel():
        raise ValueError(f"binary_dice_loss: shapes differ, {tuple(probs.shape)} vs {tuple(target.shape)}")
    p = probs.reshape(probs.shape[0], -1)  # (B, H·W)
    g = target.reshape(target.shape[0], -1).to(p.dtype)
    dice = (2.0 * (p * g).sum(dim=1) + smooth) / (p.sum(dim=1) + g.sum(dim=1) + smooth)  # (B,)
    return 1.0 - dice.mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy on logits (mean), for image-level or pixel-level heads.

    Args:
        logits: any shape.
        target: the same shape, {0, 1} (or soft labels in [0, 1]).
        pos_weight: weight of the positive class, None for 1.
    """
    pw = None if pos_weight is None else logits.new_tensor(pos_weight)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pw)


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on logits (B, C[, H, W]) against class indices (B[, H, W]), mean.

    AnomalyCLIP and AdaptCLIP use it on image logits ``cos(global, text) / 0.07``.
    """
    return F.cross_entropy(logits, target.long())
