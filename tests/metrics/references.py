"""Slow, obviously correct references written from the definitions (small inputs only)."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np


def flood_regions(mask: np.ndarray, connectivity: int = 8) -> list[list[tuple[int, int]]]:
    """Connected regions of one 2-D mask by breadth-first search."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen = np.zeros(mask.shape, bool)
    regions = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        regions.append(region)
    return regions


def slow_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, connectivity: int = 8) -> float:
    """AUPRO from the MVTec AD definition, one threshold at a time.

    For every distinct score t (descending): FPR(t) = share of normal pixels >= t, PRO(t) = mean
    over regions of the share of the region >= t. The curve starts at (0, 0) and is linear between
    thresholds; the area up to fpr_limit (interpolating at the limit) is divided by fpr_limit.
    """
    regions = [
        np.array([maps[i][p] for p in r]) for i in range(len(maps)) for r in flood_regions(masks[i], connectivity)
    ]
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append((float(np.mean(normal >= t)), float(np.mean([np.mean(r >= t) for r in regions]))))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < fpr_limit:
            y_at = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_at) / 2
    return area / fpr_limit


def trapezoid_aupr(scores: np.ndarray, labels: np.ndarray) -> float:
    """anomalib's AUPR: the torchmetrics PR curve (one point per distinct score, ascending
    threshold, then (R=0, P=1)), stably sorted by recall, trapezoid rule."""
    thresholds = np.unique(scores)  # ascending
    p_total = labels.sum()
    recall, precision = [], []
    for t in thresholds:
        tp, fp = np.sum(labels[scores >= t]), np.sum(1 - labels[scores >= t])
        recall.append(tp / p_total)
        precision.append(tp / (tp + fp))
    recall, precision = np.array(recall + [0.0]), np.array(precision + [1.0])
    order = np.argsort(recall, kind="stable")
    x, y = recall[order], precision[order]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
