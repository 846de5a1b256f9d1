"""The 2×2 mosaic augmentation (zsad_bench/mosaic.py) and its use by the auxiliary data loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zsad_bench.auxdata import AuxData, AuxDataset, to_batch
from zsad_bench.mosaic import MOSAIC, is_mosaic, mosaic_draw, mosaic_item
from zsad_bench.preprocess import PreprocessSpec
from zsad_bench.protocol import DataSelection
from zsad_bench.registry import DATASETS
from zsad_bench.types import SampleRecord

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def tiles(tmp_path: Path, dataset: str = "synth_aux", category: str = "tile_like") -> list[SampleRecord]:
    """Four 8x8 solid-colour images; the last is anomalous with a full mask."""
    records = []
    for i, colour in enumerate(COLOURS):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), colour).save(path)
        mask = None
        if i == 3:
            mask = tmp_path / f"{i}_mask.png"
            Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
        records.append(SampleRecord(path, int(i == 3), mask, category, "good" if i < 3 else "hole", "test", dataset))
    return records


def test_mosaic_pastes_four_images_and_masks_row_major(tmp_path):
    spec = PreprocessSpec(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="nearest")
    item = mosaic_item(tiles(tmp_path), spec)
    image, mask = item["image"], item["mask"]
    assert image.shape == (3, 16, 16)
    assert mask.shape == (16, 16)
    quadrants = [image[:, :8, :8], image[:, :8, 8:], image[:, 8:, :8], image[:, 8:, 8:]]
    for quadrant, colour in zip(quadrants, COLOURS, strict=True):
        assert torch.allclose(quadrant, torch.tensor(colour).float().view(3, 1, 1) / 255)
    assert mask[8:, 8:].all()  # the 4th tile's mask, nothing else
    assert not mask[:8].any()
    assert not mask[:, :8].any()


def test_draws_are_seeded_and_follow_the_probability(tmp_path):
    pool = tiles(tmp_path)
    draws = [mosaic_draw({"synth_aux": 0.2}, pool[0], pool, seed=0, epoch=1, index=i) for i in range(2000)]
    assert 0.17 < sum(d is not None for d in draws) / len(draws) < 0.23
    again = [mosaic_draw({"synth_aux": 0.2}, pool[0], pool, seed=0, epoch=1, index=i) for i in range(2000)]
    assert draws == again
    other_epoch = [mosaic_draw({"synth_aux": 0.2}, pool[0], pool, seed=0, epoch=2, index=i) for i in range(2000)]
    assert draws != other_epoch
    assert all(sorted(r.image_path.name for r in d) == sorted(r.image_path.name for r in pool) for d in draws if d)
    assert mosaic_draw({"mvtec_ad": 1.0}, pool[0], pool, 0, 1, 0) is None  # another dataset: never
    assert mosaic_draw({"synth_aux": 1.0}, pool[0], pool[:3], 0, 1, 0) is None  # fewer than 4 images


def test_aux_loader_marks_mosaics_and_keeps_the_items_label(tmp_path):
    records = tiles(tmp_path)
    info = DATASETS.get("synth_aux").info()
    aux = AuxData(["synth_aux"], [DataSelection("synth_aux", ("tile_like",))], records, {"synth_aux": info}, {})
    backbone = {"name": "x", "input_size": 16}
    plain = AuxDataset(aux, backbone)
    always = AuxDataset(aux, backbone, mosaic={"synth_aux": 1.0}, seed=0, epoch=1)
    batch = to_batch([always[i] for i in range(4)], aux, torch.device("cpu"))
    assert all(is_mosaic(r) for r in batch.records)
    assert [r.defect_type for r in batch.records] == [MOSAIC] * 4
    assert batch.labels.tolist() == [0, 0, 0, 1]  # the references keep the item's own label
    assert batch.masks.sum() > 0
    single = to_batch([plain[i] for i in range(4)], aux, torch.device("cpu"))
    assert not any(is_mosaic(r) for r in single.records)
    assert not torch.equal(single.images, batch.images)
