"""The 2×2 mosaic augmentation of APRIL-GAN and AdaCLIP, for auxiliary training images.

APRIL-GAN (``dataset.py::combine_img``) and AdaCLIP (``dataset/base_dataset.py::combine_img``,
credited to APRIL-GAN) replace an MVTec AD training item, with probability 0.2, by four random
images of the same category (drawn without replacement, the item itself included) pasted into a
2×2 grid at their own resolution, with their masks likewise; the result is then resized like any
other image. The item keeps its own label (the references do not recompute it from the four
images). Our code is independent; the draws come from a generator seeded by (seed, epoch, item),
so a resumed training draws the same mosaics.

A mosaic item's record is the item's own with ``defect_type="mosaic"`` (:data:`MOSAIC`): its
pixels are not those of its file, so methods must not read its features from a cache.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from zsad_bench.preprocess import PreprocessSpec
    from zsad_bench.types import SampleRecord

__all__ = ["MOSAIC", "is_mosaic", "mosaic_draw", "mosaic_item"]

MOSAIC = "mosaic"


def is_mosaic(record: Any) -> bool:
    """Whether a training record stands for a mosaic (its pixels are not its file's)."""
    return getattr(record, "defect_type", None) == MOSAIC


def mosaic_draw(
    probabilities: Mapping[str, float],
    record: SampleRecord,
    pool: Sequence[SampleRecord],
    seed: int,
    epoch: int,
    index: int,
) -> list[SampleRecord] | None:
    """The four records of item ``index``'s mosaic, or None when it stays a single image.

    Args:
        probabilities: dataset name → mosaic probability (``{"mvtec_ad": 0.2}``).
        record: the item's record.
        pool: the records of the item's dataset and category (the item among them).
        seed: the training seed.
        epoch: the epoch (1-based).
        index: the item's index in the auxiliary record list.

    Example:
        >>> from pathlib import Path
        >>> from zsad_bench.types import SampleRecord
        >>> recs = [SampleRecord(Path(f"{i}.png"), 0, None, "c", "good", "test", "d") for i in range(5)]
        >>> mosaic_draw({"d": 1.0}, recs[0], recs, 0, 1, 0) == mosaic_draw({"d": 1.0}, recs[0], recs, 0, 1, 0)
        True
        >>> mosaic_draw({"other": 1.0}, recs[0], recs, 0, 1, 0) is None
        True
    """
    p = float(probabilities.get(record.dataset, 0.0))
    if p <= 0.0 or len(pool) < 4:
        return None
    rng = random.Random(f"mosaic|{seed}|{epoch}|{index}")
    if rng.random() >= p:
        return None
    return rng.sample(list(pool), 4)


def _paste(tiles: Sequence[Image.Image], mode: str) -> Image.Image:
    """Paste 4 tiles row-major into a 2×2 canvas sized by the first tile (PIL ``paste`` offsets)."""
    from PIL import Image

    w, h = tiles[0].size
    canvas = Image.new(mode, (2 * w, 2 * h))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % 2) * w, (i // 2) * h))
    return canvas


def mosaic_item(records: Sequence[SampleRecord], spec: PreprocessSpec) -> dict[str, Any]:
    """Decode four records into one preprocessed mosaic.

    Args:
        records: the four records (from :func:`mosaic_draw`).
        spec: the preprocessing (input size, normalisation, the dataset's mask threshold).

    Returns:
        ``{"image": (3, S, S) float32, "mask": (S, S) bool}``.
    """
    import torch
    from PIL import Image

    from zsad_bench.imageio import load_image, load_mask
    from zsad_bench.preprocess import mask_to_input, preprocess_image

    images, masks = [], []
    for r in records:
        img = load_image(r.image_path).convert("RGB")
        mask = load_mask(r.mask_path, spec.mask_threshold) if r.mask_path is not None else None
        if mask is None:
            mask = np.zeros((img.height, img.width), bool)
        images.append(img)
        masks.append(Image.fromarray(mask.astype(np.uint8) * 255))
    image = _paste(images, "RGB")
    mask = np.asarray(_paste(masks, "L")) > 0
    return {"image": preprocess_image(image, spec), "mask": torch.from_numpy(mask_to_input(mask, spec.size))}
