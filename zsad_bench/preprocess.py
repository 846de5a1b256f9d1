"""Image and mask preprocessing for evaluation, and the background-decoding data loader.

Images are squash-resized to a square ``S × S`` (no aspect-preserving crop, as the ZSAD
repositories do), scaled to [0, 1] and normalised with the backbone's mean and std.

Evaluation resolutions (recorded in every result as ``evaluation.resolution``):

* ``input`` (default, the ZSAD repositories' protocol): the binary mask is resized to
  ``S × S`` bilinearly as an 8-bit 0/255 image and thresholded at 0.5 (value ≥ 128),
  and the anomaly map is used at ``S × S``.
* ``native``: the mask keeps its own resolution and the anomaly map is resized to it
  bilinearly (the MVTec AD evaluation protocol).
* a positive integer ``N``: masks as for ``input`` but to ``N × N``, maps resized bilinearly to
  ``N × N`` (repositories that score at a fixed size, e.g. caoyunkang/WinClip at 400).

Methods never see labels or masks at test time: the test :class:`~zsad_bench.types.Batch`
has ``labels=None`` and ``masks=None``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

    from zsad_bench.types import SampleRecord

__all__ = [
    "RESOLUTIONS",
    "LoadedBatch",
    "PreprocessSpec",
    "RecordDataset",
    "collate",
    "make_loader",
    "mask_to_input",
    "preprocess_image",
    "resize_maps",
]

logger = logging.getLogger(__name__)

RESOLUTIONS = ("input", "native")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_INTERP = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class PreprocessSpec:
    """How images and masks are prepared.

    Attributes:
        size: the square input side S.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std.
        interpolation: image resampling filter ("bicubic", "bilinear", "nearest", "lanczos").
        resolution: "input", "native" or a positive integer as a string (see the module docstring).
        mask_threshold: raw mask values above it are anomalous (the dataset's rule).
    """

    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"
    resolution: str = "input"
    mask_threshold: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"input size must be positive, got {self.size}; set backbone.input_size")
        if self.interpolation not in _INTERP:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {_INTERP}")
        if self.resolution not in RESOLUTIONS and not (self.resolution.isdigit() and int(self.resolution) > 0):
            raise ValueError(
                f"eval.resolution {self.resolution!r} is not one of {RESOLUTIONS} or a positive integer (pixels)"
            )

    @property
    def eval_size(self) -> int | None:
        """The square side masks and maps are scored at (None: ``native``, each mask's own size)."""
        if self.resolution == "native":
            return None
        return self.size if self.resolution == "input" else int(self.resolution)

    @classmethod
    def from_cfg(
        cls, backbone: Mapping[str, Any], resolution: str | int = "input", mask_threshold: int = 0
    ) -> PreprocessSpec:
        """Build from the ``backbone`` config group (``input_size``, optional ``mean``/``std``/``interpolation``).

        Raises:
            KeyError: when ``backbone.input_size`` is missing.
        """
        if backbone.get("input_size") is None:
            name = backbone.get("name", "?")
            raise KeyError(f"backbone {name!r} has no input_size; add it to conf/backbone/{name}.yaml")
        return cls(
            size=int(backbone["input_size"]),
            mean=tuple(float(v) for v in backbone.get("mean") or CLIP_MEAN),
            std=tuple(float(v) for v in backbone.get("std") or CLIP_STD),
            interpolation=str(backbone.get("interpolation") or "bicubic"),
            resolution=str(resolution),
            mask_threshold=int(mask_threshold),
        )

    def describe(self) -> dict[str, Any]:
        """The evaluation-resolution facts recorded in ``metrics.json``."""
        n = self.eval_size
        return {
            "resolution": self.resolution,
            "input_size": self.size,
            "image_resize": f"squash to {self.size}x{self.size}, {self.interpolation}",
            "mask_resampling": "none (native mask size)" if n is None else f"bilinear on 0/255 to {n}x{n}, then > 0.5",
            "map_resampling": "bilinear to the mask size"
            if n is None
            else ("none (input size)" if n == self.size else f"bilinear to {n}x{n}"),
            "mean": list(self.mean),
            "std": list(self.std),
            "mask_threshold": self.mask_threshold,
        }


def _pil_filter(name: str) -> int:
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[name]


def preprocess_image(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """An RGB image → normalised (3, S, S) float32 tensor."""
    resized = image.convert("RGB").resize((spec.size, spec.size), _pil_filter(spec.interpolation))
    arr = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)  # (S, S, 3)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (arr.permute(2, 0, 1) - mean) / std  # (3, S, S)


def mask_to_input(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean (H, W) mask → boolean (S, S): bilinear resize of the 0/255 image, then > 0.5.

    Example:
        >>> m = np.zeros((4, 4), bool); m[:2, :2] = True
        >>> mask_to_input(m, 2).tolist()
        [[True, False], [False, False]]
    """
    from PIL import Image

    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img) >= 128  # v / 255 > 0.5  <=>  v >= 128 for 8-bit values


def resize_maps(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize (B, h, w) maps to (B, H, W) bilinearly (no-op when the size matches)."""
    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    out = torch.nn.functional.interpolate(maps[:, None].float(), size=hw, mode="bilinear", align_corners=False)
    return out[:, 0]  # (B, H, W)


# ----------------------------------------------------------------------------- loading
class RecordDataset(torch.utils.data.Dataset):
    """Decodes one record per item; a failing file becomes an item with ``error`` set (never raises).

    Args:
        records: the samples, in order.
        spec: preprocessing.
        with_masks: load the ground-truth masks (False for datasets without masks).
    """

    def __init__(self, records: Sequence[SampleRecord], spec: PreprocessSpec, with_masks: bool = True) -> None:
        self.records = list(records)
        self.spec = spec
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            return {"index": index, "error": None, **self._load(record)}
        except Exception as exc:  # recorded and skipped by the evaluation loop
            return {"index": index, "error": f"{type(exc).__name__}: {exc}", "image": None, "mask": None}

    def _load(self, record: SampleRecord) -> dict[str, Any]:
        from zsad_bench.imageio import load_image, load_mask

        image = load_image(record.image_path)
        if not self.with_masks:
            return {"image": preprocess_image(image, self.spec), "mask": None}
        if record.mask_path is not None:
            mask = load_mask(record.mask_path, self.spec.mask_threshold)
        else:  # normal images (and anomalous ones without a mask file) have an empty mask
            mask = np.zeros((image.height, image.width), bool)
        if self.spec.eval_size is not None:
            mask = mask_to_input(mask, self.spec.eval_size)
        return {"image": preprocess_image(image, self.spec), "mask": torch.from_numpy(np.ascontiguousarray(mask))}


@dataclass
class LoadedBatch:
    """What the loader yields: decoded items and the ones that failed.

    Attributes:
        indices: dataset indices of the decoded items.
        images: (B, 3, S, S) tensor, or None when every item failed.
        masks: B boolean masks ((S, S) or native (H, W)), or None without masks.
        failed: (index, reason) of the items that could not be decoded.
    """

    indices: list[int]
    images: torch.Tensor | None
    masks: list[torch.Tensor] | None
    failed: list[tuple[int, str]]


def collate(items: list[dict[str, Any]]) -> LoadedBatch:
    """Stack the decoded items; keep failures aside (masks stay a list: native sizes differ)."""
    good = [it for it in items if it["error"] is None]
    failed = [(it["index"], it["error"]) for it in items if it["error"] is not None]
    images = torch.stack([it["image"] for it in good]) if good else None
    masks = [it["mask"] for it in good] if good and good[0]["mask"] is not None else None
    return LoadedBatch([it["index"] for it in good], images, masks, failed)


def make_loader(dataset: RecordDataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader decoding in ``num_workers`` background processes (0: in this process)."""
    if batch_size < 1:
        raise ValueError(f"eval.batch_size must be >= 1, got {batch_size}")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=max(0, int(num_workers)),
        collate_fn=collate,
        persistent_workers=False,
    )
