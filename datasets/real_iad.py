"""Real-IAD (Wang et al., CVPR 2024): 30 objects, 5 views each, split by the authors' JSON files.

Layout (``docs/datasets.md``): ``realiad_<res>/<cat>/...`` images and masks and
``realiad_jsons/<cat>.json`` with ``meta`` (``prefix``, ``normal_class``) and ``train``/``test``
lists of ``{category, anomaly_class, image_path, mask_path}``. A file is
``realiad_<res>/<prefix>/<image_path>``. Mask names are taken from the JSON (they cannot be
derived from image names). An image is normal iff ``mask_path`` is null or its
``anomaly_class`` is the normal class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zsad_bench.datasets._base import Family
from zsad_bench.layouts import child_dir, descend
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["RealIAD"]

_CATEGORIES = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts", "pcb",
    "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator", "rolled_strip_base",
    "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1", "u_block",
    "usb", "usb_adaptor", "vcpill", "wooden_beads", "woodstick", "zipper",
)  # fmt: skip
RESOLUTIONS = ("1024", "512", "256", "raw")


@register_dataset("real_iad", title="Real-IAD", summary="30 objects × 5 views, JSON split, large scale")
class RealIAD(Family):
    """Real-IAD read through its JSON split files.

    Args:
        resolution: which image copy to read ("1024", "512", "256", "raw"); None takes the first
            present in that order.
        json_dir: the split folder: "realiad_jsons" (multi-view UIAD, default), "realiad_jsons_sv"
            (single view) or a ``realiad_jsons_fuiad_*`` folder.
    """

    name = "real_iad"
    INFO = DatasetInfo(
        name="real_iad",
        domain="industrial",
        modality="rgb",
        categories=_CATEGORIES,
        prompt_names={"transistor1": "transistor", "u_block": "u block", "terminalblock": "terminal block"},
        expected_totals={},
        default_aux="mvtec_ad",
        overlaps=("mvtec_ad",),  # toothbrush, zipper
        download=DownloadInfo(
            page="https://huggingface.co/datasets/Real-IAD/Real-IAD",
            notes="Gated (apply for access); one zip per object. The folder must hold realiad_1024/<cat>/ (or "
            "realiad_512/, realiad_256/, realiad_raw/) and realiad_jsons/<cat>.json. Licence CC BY-NC-SA 4.0.",
        ),
        count_notes="151,050 images in all (99,721 normal, 51,329 anomalous); split counts come from the JSON files",
    )

    def __init__(self, resolution: str | None = None, json_dir: str = "realiad_jsons") -> None:
        if resolution is not None and str(resolution) not in RESOLUTIONS:
            raise ValueError(f"real_iad resolution {resolution!r} is not one of {RESOLUTIONS}")
        self.resolution = None if resolution is None else str(resolution)
        self.json_dir = json_dir
        self._json: dict[Path, dict[str, Any]] = {}

    def locate(self, root: Path) -> Path:
        """The folder holding ``realiad_jsons/``."""
        return descend(root, lambda p: (p / self.json_dir).is_dir(), ("Real-IAD", "realiad"))

    def image_dir(self, base: Path) -> Path:
        """The ``realiad_<res>`` folder in use."""
        wanted = (self.resolution,) if self.resolution else RESOLUTIONS
        for res in wanted:
            found = child_dir(base, f"realiad_{res}")
            if found is not None:
                return found
        raise FileNotFoundError(
            f"no {' or '.join(f'realiad_{r}/' for r in wanted)} folder in {base}: unzip the images there"
        )

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        data = self._load(base / self.json_dir / f"{category}.json")
        meta = data.get("meta") or {}
        normal_class = meta.get("normal_class", "OK")
        prefix = self.image_dir(base) / str(meta.get("prefix", category))
        out = []
        for i, item in enumerate(data.get(split) or []):
            try:
                image, anomaly_class, mask = item["image_path"], item["anomaly_class"], item.get("mask_path")
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{base / self.json_dir / category}.json: {split}[{i}] lacks {exc}") from exc
            normal = mask is None or anomaly_class == normal_class
            rec = SampleRecord(
                prefix / image,
                0 if normal else 1,
                None if normal else prefix / mask,
                category,
                "good" if normal else str(anomaly_class),
                split,
                "real_iad",
            )
            out.append(rec)
        return sorted(out, key=lambda r: str(r.image_path))

    def _load(self, path: Path) -> dict[str, Any]:
        if path not in self._json:
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: the Real-IAD split files go in {path.parent}")
            try:
                self._json[path] = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc}); re-extract realiad_jsons") from exc
        return self._json[path]
