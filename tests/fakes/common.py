"""Helpers of the fake-dataset writers: tiny images and masks in every format the datasets use.

A writer returns a :class:`FakeCopy` whose ``counts`` are what it wrote (category → split →
(normal, anomalous)), so tests compare loaders with the writer, never with typed-in numbers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16


@dataclass
class FakeCopy:
    """A fake dataset written to disk."""

    root: Path
    counts: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(lambda: [0, 0]))
    )
    # image path → mask path for anomalous images that have a mask
    masks: dict[Path, Path] = field(default_factory=dict)
    # mask path → the boolean region the writer meant to mark
    regions: dict[Path, np.ndarray] = field(default_factory=dict)
    notes: dict[str, Path] = field(default_factory=dict)

    def add(self, category: str, split: str, label: int, image: Path, mask: Path | None = None) -> None:
        """Count an image (and remember its mask)."""
        self.counts[category][split][label] += 1
        if mask is not None:
            self.masks[image] = mask

    def expected(self, category: str, split: str) -> tuple[int, int]:
        """(normal, anomalous) written for one category and split."""
        n, a = self.counts.get(category, {}).get(split, [0, 0])
        return n, a


def pixels(seed: int, shape: tuple[int, ...] = (SIZE, SIZE, 3)) -> np.ndarray:
    """Deterministic random uint8 pixels."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def region(seed: int, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """A deterministic rectangular defect region (bool, at least 4x4)."""
    rng = np.random.default_rng(1000 + seed)
    h, w = shape
    y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
    out = np.zeros(shape, bool)
    out[y : y + 5, x : x + 5] = True
    return out


def write_image(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """An image in the format of ``path``'s extension (.png .jpg .JPG .bmp .PNG ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    img = Image.fromarray(pixels(seed, shape), "RGB" if mode == "RGB" else "L")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
    img.save(path, format=fmt[path.suffix.lower()])
    return path


def write_mask(path: Path, area: np.ndarray, value: int = 255, fmt: str | None = None) -> Path:
    """A single-channel mask: ``value`` inside ``area``, 0 elsewhere (value may be a class id)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.where(area, value, 0).astype(np.uint8)
    kind = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        path.suffix.lower(), "PNG"
    )
    Image.fromarray(arr, "L").save(path, format=kind, **({"quality": 75} if kind == "JPEG" else {}))
    return path


def write_tiff_pillow_cannot_open(path: Path, array: np.ndarray) -> Path:
    """A float32 TIFF (what tifffile reads and Pillow refuses with UnidentifiedImageError)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    data = array.astype(np.float32)
    tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else "minisblack")
    return path


def write_text(path: Path, text: str) -> Path:
    """A text file (README, licence, CSV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data: object) -> Path:
    """A JSON file written the way the preparation scripts do (indent 4, trailing newline)."""
    return write_text(path, json.dumps(data, indent=4) + "\n")


def corrupt(path: Path) -> Path:
    """Overwrite a file with bytes that are not an image."""
    path.write_bytes(b"this is not an image\n" * 4)
    return path


def truncate(path: Path) -> Path:
    """Cut a file to half its size (an interrupted copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
