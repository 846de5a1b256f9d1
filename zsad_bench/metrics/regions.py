"""Connected ground-truth regions and per-pixel PRO weights."""

from __future__ import annotations

import numpy as np

__all__ = ["label_regions", "pro_weights"]


def _structure(connectivity: int) -> np.ndarray:
    """A (3, 3, 3) structure linking pixels within an image only (never across the batch axis)."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8 (MVTec AD uses 8), got {connectivity}")
    plane = np.ones((3, 3), dtype=bool) if connectivity == 8 else np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane
    return structure


def label_regions(masks: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected regions of a batch of binary masks.

    Args:
        masks: (B, H, W) bool masks.
        connectivity: 8 (3×3 neighbourhood, as the MVTec AD evaluation) or 4.

    Returns:
        ``(region_of_pixel, sizes)``: (P,) int64 0-based region index of every anomalous pixel,
        in the C order of ``masks[masks]`` (so it aligns with ``maps[masks]``), and (R,) int64
        region sizes. Regions of different images are distinct.

    Example:
        >>> m = np.zeros((1, 3, 3), bool); m[0, 0, 0] = m[0, 1, 1] = m[0, 2, 0] = True
        >>> label_regions(m, 8)[1].tolist(), label_regions(m, 4)[1].tolist()
        ([3], [1, 1, 1])
    """
    from scipy import ndimage

    if not masks.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    labels, n = ndimage.label(masks, structure=_structure(connectivity))  # (B, H, W) int32, 0 = background
    region = labels[masks].astype(np.int64) - 1  # (P,)
    return region, np.bincount(region, minlength=n).astype(np.int64)


def pro_weights(masks: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Weight ``1/|region|`` of every anomalous pixel (C order of ``masks[masks]``) and the region count."""
    region, sizes = label_regions(masks, connectivity)
    return 1.0 / sizes[region], int(sizes.size)
