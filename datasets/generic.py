"""Generic datasets: an existing ``meta.json`` preparation, and a plain folder of a user's own images.

``meta_json`` reads the format written by the APRIL-GAN / AnomalyCLIP / AdaCLIP preparation
scripts (their ``meta.json`` format; ``docs/datasets.md``), so a copy prepared for those repositories works
as-is. ``folder`` reads ``<root>/<category>/good/`` plus one folder per defect, with optional
masks. Their categories come from the data (:meth:`available_categories`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad_bench.datasets._base import Family
from zsad_bench.layouts import MaskIndex, child_dir, list_images, mvtec_style_records, natural_key, subdirs
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["Folder", "MetaJSON"]

logger = logging.getLogger(__name__)


@register_dataset("meta_json", title="meta.json preparation", summary="APRIL-GAN / AnomalyCLIP / AdaCLIP meta.json")
class MetaJSON(Family):
    """A dataset described by ``<root>/meta.json``: ``{"train"|"test": {class: [record, ...]}}``.

    Each record has ``img_path``, ``mask_path`` ('' when none), ``cls_name``, ``specie_name`` and
    ``anomaly`` (0/1); paths are relative to the root or absolute. Phase keys are matched ignoring
    case (AnomalyCLIP's DAGM script writes "Train"/"Test").

    Args:
        file: the JSON file's name inside the root.
    """

    name = "meta_json"
    INFO = DatasetInfo(
        name="meta_json",
        domain="industrial",
        modality="rgb",
        categories=(),
        default_aux="mvtec_ad",
        download=DownloadInfo(
            notes="Your own preparation: the folder must hold meta.json (from the APRIL-GAN, AnomalyCLIP or "
            "AdaCLIP scripts) and the files it names. Set dataset.root=<that folder>."
        ),
        count_notes="counts come from meta.json",
    )

    def __init__(self, file: str = "meta.json") -> None:
        self.file = file
        self._meta: dict[Path, dict[str, Any]] = {}

    def available_categories(self, root: Path) -> list[str]:
        """The class names under the train and test phases of meta.json."""
        meta = self._load(Path(root))
        return sorted({c for phase in meta.values() if isinstance(phase, dict) for c in phase}, key=natural_key)

    def _load(self, root: Path) -> dict[str, Any]:
        path = root / self.file
        if path not in self._meta:
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: meta_json reads a meta.json from dataset.root")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected an object with 'train' and 'test' keys")
            self._meta[path] = {str(k).lower(): v for k, v in data.items()}
        return self._meta[path]

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        phase = self._load(base).get(split) or {}
        return [self._record(base, item, category, split, i) for i, item in enumerate(phase.get(category, []))]

    def _record(self, base: Path, item: dict[str, Any], category: str, split: str, i: int) -> SampleRecord:
        try:
            image, label = item["img_path"], int(item["anomaly"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{base / self.file}: {split}/{category}[{i}] needs 'img_path' and 'anomaly' (0/1); got {item!r}"
            ) from exc
        mask = item.get("mask_path") or ""
        defect = item.get("specie_name") or ("good" if label == 0 else "anomaly")
        # os.path.join semantics: an absolute path in meta.json stays absolute
        return SampleRecord(
            base / image, label, (base / mask) if mask and label else None, category, defect, split, "meta_json"
        )


@register_dataset("folder", title="Image folder", summary="your own data: good/ + defect folders (+ masks)")
class Folder(Family):
    """A user's images: ``<root>/<category>/good/``, ``<root>/<category>/<defect>/`` and optional masks.

    Masks, when present, are ``<root>/<category>/<mask folder>/<defect>/<stem>[_mask].<ext>`` with the
    mask folder one of ``ground_truth``, ``masks``, ``mask``, ``gt``. A category folder in the
    MVTec layout (with ``train/`` and ``test/``) is read as MVTec AD. If ``<root>`` itself holds
    ``good/`` (or ``test/``), it is one category named after the folder. Without ``train/``, all
    images are test images.

    Args:
        normal_dirs: folder names of normal images (matched ignoring case).
        mask_dirs: candidate names of the mask folder.
    """

    name = "folder"
    INFO = DatasetInfo(
        name="folder",
        domain="industrial",
        modality="rgb",
        categories=(),
        default_aux="mvtec_ad",
        mask_size_must_match=False,
        download=DownloadInfo(notes="Your own images: <root>/<category>/{good,<defect>...}/ (+ masks/<defect>/)."),
        count_notes="counts come from the folders",
    )

    def __init__(
        self,
        normal_dirs: Sequence[str] = ("good", "ok", "normal"),
        mask_dirs: Sequence[str] = ("ground_truth", "masks", "mask", "gt"),
    ) -> None:
        self.normal_dirs = tuple(normal_dirs)
        self.mask_dirs = tuple(mask_dirs)

    def _is_category(self, p: Path) -> bool:
        return child_dir(p, *self.normal_dirs, "test") is not None

    def available_categories(self, root: Path) -> list[str]:
        """Sub-folders holding a normal folder or ``test/``; or the root itself."""
        root = Path(root)
        if self._is_category(root):
            return [root.name]
        return [d.name for d in subdirs(root) if self._is_category(d)]

    def _category_dir(self, base: Path, category: str) -> Path:
        return base if category == base.name and self._is_category(base) else base / category

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        cat_dir = self._category_dir(base, category)
        mask_root = child_dir(cat_dir, *self.mask_dirs)
        if child_dir(cat_dir, "test") is not None:
            return mvtec_style_records(
                cat_dir.parent,
                category,
                split,
                "folder",
                mask_root.name if mask_root is not None else "ground_truth",
                normal_dirs=self.normal_dirs,
                category_dir=cat_dir.name,
                has_masks=mask_root is not None,
            )
        return self._flat_records(cat_dir, mask_root, category) if split == "test" else []

    def _flat_records(self, cat_dir: Path, mask_root: Path | None, category: str) -> list[SampleRecord]:
        normals = {n.lower() for n in self.normal_dirs}
        out = []
        for d in subdirs(cat_dir):
            if mask_root is not None and d == mask_root:
                continue
            normal = d.name.lower() in normals
            index = MaskIndex(mask_root / d.name, ("_mask", "")) if mask_root is not None and not normal else None
            for img in list_images(d):
                mask = index.lookup(img)[0] if index is not None else None
                out.append(
                    SampleRecord(img, int(not normal), mask, category, "good" if normal else d.name, "test", "folder")
                )
        return out
