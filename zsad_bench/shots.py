"""The seeded k-shot sampler: the reference normal images of few-shot methods.

For ``shots = k > 0`` each category gets k normal images drawn from its *training* split,
never from the test split. The draw depends only on (seed, dataset, category, k) and the
sorted list of candidates, so every method of a sweep sees the same references for the
same seed, on any machine.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zsad_bench.preprocess import PreprocessSpec
    from zsad_bench.types import Batch, SampleRecord

__all__ = ["reference_batch", "sample_shots"]


def _rng(seed: int, dataset: str, category: str, k: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{dataset}/{category}/{k}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def sample_shots(
    train: Sequence[SampleRecord],
    k: int,
    seed: int,
    test: Sequence[SampleRecord] = (),
) -> list[SampleRecord]:
    """Draw ``k`` normal training records of one category.

    Args:
        train: the category's training records.
        k: number of shots (> 0).
        seed: the job's seed.
        test: the category's test records; a candidate that is also a test image is refused.

    Returns:
        The k records in draw order.

    Raises:
        ValueError: when there are fewer than k normal training images, or a candidate is a test image.
    """
    if k <= 0:
        raise ValueError(f"shots must be > 0 to draw references, got {k}")
    test_paths = {r.image_path for r in test}
    pool = sorted((r for r in train if r.label == 0 and r.split == "train"), key=lambda r: r.key)
    leaked = [r for r in pool if r.image_path in test_paths]
    if leaked:
        raise ValueError(f"reference candidate {leaked[0].image_path} is also a test image; fix the dataset split")
    if len(pool) < k:
        where = f"{pool[0].dataset}/{pool[0].category}" if pool else "this category"
        raise ValueError(f"{where} has {len(pool)} normal training images, fewer than shots={k}")
    first = pool[0]
    return _rng(seed, first.dataset, first.category, k).sample(pool, k)


def reference_batch(records: Sequence[SampleRecord], spec: PreprocessSpec, class_name: str) -> Batch:
    """Decode the reference records into a :class:`Batch` (labels 0, no masks).

    Raises:
        zsad_bench.imageio.ImageReadError: a reference that cannot be decoded (the category fails).
    """
    import torch

    from zsad_bench.imageio import load_image
    from zsad_bench.preprocess import preprocess_image
    from zsad_bench.types import Batch

    images = torch.stack([preprocess_image(load_image(r.image_path), spec) for r in records])  # (k, 3, S, S)
    return Batch(
        images=images,
        records=list(records),
        class_names=[class_name] * len(records),
        labels=torch.zeros(len(records), dtype=torch.long),
        masks=None,
    )
