"""Focal, dice, BCE and CE against values computed by hand from the reference formulas (the official ``loss.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from zsad_bench.losses import bce_loss, binary_dice_loss, cross_entropy_loss, focal_loss

S = 1e-5  # the reference smooth


def focal_term(p_true: float, p_other: float, gamma: float = 2.0) -> float:
    """-(1 - p_t)^γ log p_t with the reference's clamped one-hot target (two classes)."""
    p_t = p_true * (1 - S) + p_other * S + S
    return -((1 - p_t) ** gamma) * math.log(p_t)


def test_focal_two_pixels_by_hand():
    # pixel (0, 0): p = (0.8, 0.2), target 1; pixel (0, 1): p = (0.6, 0.4), target 0
    probs = torch.tensor([[[[0.8, 0.6]], [[0.2, 0.4]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    target = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # (1, 1, 2)
    # p_t = 0.2·(1-1e-5) + 0.8·1e-5 + 1e-5 = 0.200016 and 0.6·(1-1e-5) + 0.4·1e-5 + 1e-5 = 0.600008
    expected = (0.799984**2 * -math.log(0.200016) + 0.399992**2 * -math.log(0.600008)) / 2
    assert expected == pytest.approx((focal_term(0.2, 0.8) + focal_term(0.6, 0.4)) / 2, rel=1e-12)
    assert float(focal_loss(probs, target)) == pytest.approx(expected, rel=1e-10)
    assert float(focal_loss(probs, target[:, None])) == pytest.approx(expected, rel=1e-10)  # (B, 1, H, W) target


def test_focal_image_level_alpha_and_gamma():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=torch.float64)  # (B, 2)
    labels = torch.tensor([0, 1])
    plain = (focal_term(0.9, 0.1) + focal_term(0.7, 0.3)) / 2
    assert float(focal_loss(probs, labels)) == pytest.approx(plain, rel=1e-10)
    weighted = (0.25 * focal_term(0.9, 0.1) + 0.75 * focal_term(0.7, 0.3)) / 2
    assert float(focal_loss(probs, labels, alpha=[0.25, 0.75])) == pytest.approx(weighted, rel=1e-10)
    g0 = (focal_term(0.9, 0.1, 0) + focal_term(0.7, 0.3, 0)) / 2  # γ = 0: cross-entropy of p_t
    assert float(focal_loss(probs, labels, gamma=0)) == pytest.approx(g0, rel=1e-10)


def test_focal_is_near_zero_for_confident_correct_and_large_for_wrong():
    good = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(focal_loss(good, torch.tensor([0, 1]))) < 1e-8
    assert float(focal_loss(good, torch.tensor([1, 0]))) > 5.0


def test_focal_rejects_mismatched_target():
    with pytest.raises(ValueError, match="target has 3 elements"):
        focal_loss(torch.rand(1, 2, 2, 2), torch.zeros(3))


def test_dice_by_hand():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # sample 0: (2·0.5 + 1) / (1 + 1 + 1) = 2/3; sample 1: (0 + 1) / (2 + 0 + 1) = 1/3
    assert float(binary_dice_loss(probs, target)) == pytest.approx(1 - (2 / 3 + 1 / 3) / 2)
    maps = probs.reshape(2, 2, 2)
    assert float(binary_dice_loss(maps, target.reshape(2, 2, 2))) == pytest.approx(0.5)


def test_dice_perfect_and_empty_masks():
    g = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert float(binary_dice_loss(g.clone(), g)) == pytest.approx(0.0)
    assert float(binary_dice_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))) == pytest.approx(0.0)  # smooth 1


def test_bce_and_ce_match_their_formulas():
    logits = torch.tensor([0.0, 2.0])
    y = torch.tensor([1.0, 0.0])
    by_hand = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert float(bce_loss(logits, y)) == pytest.approx(by_hand, rel=1e-6)
    ce_logits = torch.tensor([[2.0, 0.0]])
    assert float(cross_entropy_loss(ce_logits, torch.tensor([1]))) == pytest.approx(math.log(1 + math.exp(2)), rel=1e-6)


def test_losses_are_differentiable():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    probs = logits.softmax(1)
    mask = (torch.rand(2, 4, 4) > 0.5).float()
    (focal_loss(probs, mask) + binary_dice_loss(probs[:, 1], mask)).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


def test_focal_equals_the_literal_clamped_one_hot_formula_for_three_classes():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64).softmax(1)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    flat = probs.permute(0, 2, 3, 1).reshape(-1, 3)
    one_hot = torch.zeros_like(flat).scatter_(1, target.reshape(-1, 1), 1.0).clamp(S / 2, 1 - S)
    p_t = (one_hot * flat).sum(1) + S
    literal = (-((1 - p_t) ** 2) * p_t.log()).mean()
    assert float(focal_loss(probs, target)) == pytest.approx(float(literal), rel=1e-12)


def test_segmentation_dice_modes_follow_the_references_squeeze():
    from zsad_bench.heads import segmentation_losses

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 2, 4, 4, generator=g)
    probs = probs / probs.sum(dim=1, keepdim=True)  # (B, 2, S, S)
    masks = torch.zeros(2, 4, 4)
    masks[:, 1:3, 0:2] = 1.0

    def rows(p, m):  # what BinaryDiceLoss computes on a squeezed (S, S) mask: the rows are the samples
        return binary_dice_loss(p[:, 1].reshape(-1, 4), m.reshape(-1, 4))

    one = segmentation_losses(probs[:1], masks[:1], dice="code")
    assert float(one["dice"]) == pytest.approx(float(rows(probs[:1], masks[:1])))
    assert float(one["dice"]) != pytest.approx(float(binary_dice_loss(probs[:1, 1], masks[:1])))
    two = segmentation_losses(probs, masks, dice_normal=True, dice="code")
    assert float(two["dice"]) == pytest.approx(float(binary_dice_loss(probs[:, 1], masks)))
    assert float(two["dice_normal"]) == pytest.approx(float(binary_dice_loss(probs[:, 0], 1 - masks)))
    assert float(segmentation_losses(probs, masks, dice="row")["dice"]) == pytest.approx(float(rows(probs, masks)))
    with pytest.raises(ValueError, match="dice='pixel'"):
        segmentation_losses(probs, masks, dice="pixel")
