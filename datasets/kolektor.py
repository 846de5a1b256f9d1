"""Kolektor surface-defect datasets: KolektorSDD (KSDD) and KolektorSDD2 (KSDD2).

Both label an image by its mask's content: an image is defective iff its mask has a non-zero
pixel (``docs/datasets.md``). Listing records therefore reads the masks (small
files); the result is cached per folder for the life of the dataset object.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zsad_bench.datasets._base import Family
from zsad_bench.imageio import ImageReadError, load_mask
from zsad_bench.layouts import MaskIndex, child_dir, descend, list_images, mvtec_style_records, subdirs
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["KSDD", "KSDD2"]

logger = logging.getLogger(__name__)


class _MaskLabelled(Family):
    """Shared logic: the label of an image is whether its mask has any non-zero pixel."""

    MASK_SUFFIX = ""
    MASK_EXT = ".png"

    def __init__(self) -> None:
        self._labels: dict[Path, int] = {}

    def _label(self, mask: Path) -> int:
        if mask not in self._labels:
            try:
                self._labels[mask] = int(load_mask(mask).any())
            except ImageReadError as exc:
                # unknown label: keep it as anomalous with this mask; evaluation skips it when the mask fails again
                logger.warning("%s; its image is kept as anomalous and will be skipped", exc)
                self._labels[mask] = 1
        return self._labels[mask]

    def _folder_records(self, folder: Path, category: str, split: str) -> list[SampleRecord]:
        index = MaskIndex(folder, (self.MASK_SUFFIX,), default_ext=self.MASK_EXT)
        suffix = self.MASK_SUFFIX.lower()
        out = []
        for img in list_images(folder, exclude=lambda p: p.stem.lower().endswith(suffix)):
            mask, _ = index.lookup(img)
            label = self._label(mask)
            out.append(
                SampleRecord(
                    img, label, mask if label else None, category, "defect" if label else "good", split, self.name
                )
            )
        return out


@register_dataset("ksdd", title="KolektorSDD", summary="electrical commutators; labels from masks")
class KSDD(_MaskLabelled):
    """KolektorSDD (fine annotations): ``kosNN/PartN.jpg`` with ``kosNN/PartN_label.bmp``.

    There is no official split: all 399 images are the test split and the train split is empty.
    The AnomalyCLIP / AdaCLIP "SDD" copy (MVTec layout in a folder ``electrical commutators``,
    ``electrical_commutators`` or ``SDD``; 181/74 crops) is read too when found instead.
    """

    name = "ksdd"
    MASK_SUFFIX = "_label"
    MASK_EXT = ".bmp"
    CATEGORY = "electrical_commutators"
    PREPARED_DIRS = ("electrical commutators", "electrical_commutators", "SDD")
    INFO = DatasetInfo(
        name="ksdd",
        domain="industrial",
        modality="rgb",
        categories=(CATEGORY,),
        prompt_names={CATEGORY: "electrical commutators"},
        expected={CATEGORY: {"test": (347, 52), "train": (0, 0)}},
        default_aux="mvtec_ad",
        overlaps=("ksdd2",),
        download=DownloadInfo(
            page="https://www.vicos.si/resources/kolektorsdd/",
            archive="KolektorSDD.zip",
            sha256="65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
            notes="The zip unpacks flat into kos01/ ... kos50/ (use the fine-annotation version, not "
            "KolektorSDD-boxes). Licence CC BY-NC-SA 4.0.",
        ),
        count_notes="raw copy: 399 images, 347 normal / 52 defective; the AnomalyCLIP SDD crops give 181/74",
    )

    def locate(self, root: Path) -> Path:
        """The folder holding ``kosNN/`` (or a prepared SDD category folder)."""

        def marker(p: Path) -> bool:
            return (p / "kos01").is_dir() or child_dir(p, *self.PREPARED_DIRS) is not None

        return descend(root, marker, ("KolektorSDD", "SDD_anomaly_detection"))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        prepared = child_dir(base, *self.PREPARED_DIRS)
        if prepared is not None and child_dir(prepared, "test") is not None:
            return mvtec_style_records(base, category, split, self.name, category_dir=prepared.name)
        if split != "test":
            return []
        kos = [d for d in subdirs(base) if d.name.lower().startswith("kos")]
        if not kos:
            raise FileNotFoundError(f"no kosNN/ folders in {base}: is KolektorSDD.zip unpacked there?")
        return [r for d in kos for r in self._folder_records(d, category, split)]


@register_dataset("ksdd2", title="KolektorSDD2", summary="surface defects; masks beside images")
class KSDD2(_MaskLabelled):
    """KolektorSDD2: ``{train,test}/NNNNN.png`` with the mask ``NNNNN_GT.png`` in the same folder."""

    name = "ksdd2"
    MASK_SUFFIX = "_GT"
    CATEGORY = "ksdd2"
    INFO = DatasetInfo(
        name="ksdd2",
        domain="industrial",
        modality="rgb",
        categories=(CATEGORY,),
        prompt_names={CATEGORY: "surface"},
        expected={CATEGORY: {"test": (894, 110), "train": (2085, 246)}},
        default_aux="mvtec_ad",
        overlaps=("ksdd",),
        download=DownloadInfo(
            page="https://www.vicos.si/resources/kolektorsdd2/",
            archive="KolektorSDD2.zip",
            notes="The zip unpacks flat into train/ and test/. Licence: assume CC BY-NC-SA 4.0 (as KolektorSDD).",
        ),
        count_notes="3335 images = 2979 good + 356 defective published; the train/test split counts are from memory",
    )

    def locate(self, root: Path) -> Path:
        """The folder holding ``train/`` and ``test/``."""
        return descend(root, lambda p: child_dir(p, "test") is not None, ("KolektorSDD2",))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        folder = child_dir(base, split)
        if folder is None:
            raise FileNotFoundError(f"{base / split} not found: is KolektorSDD2.zip unpacked in {base}?")
        return self._folder_records(folder, category, split)
