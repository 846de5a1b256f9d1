"""Medical datasets with image-level labels only: HeadCT, BrainMRI, Br35H, COVID-19 Radiography.

None has pixel masks, so pixel metrics are not applicable. All images are test images (as the
ZSAD papers use them); the train split is empty. Layouts: ``docs/datasets.md``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from zsad_bench.datasets._base import Family
from zsad_bench.layouts import child_dir, descend, list_images, require_dir, subdirs
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["COVID19", "Br35H", "BrainMRI", "HeadCT"]


def _folder_records(folder: Path, label: int, category: str, dataset: str, defect: str) -> list[SampleRecord]:
    return [SampleRecord(p, label, None, category, defect, "test", dataset) for p in list_images(folder)]


def _yes_no_records(base: Path, category: str, dataset: str) -> list[SampleRecord]:
    """``no/`` normal, ``yes/`` anomalous; any other folder (``pred/``, ``Br35H-Mask-RCNN/``) is ignored."""
    no = require_dir(child_dir(base, "no"), f"{dataset} normal images", base / "no")
    yes = require_dir(child_dir(base, "yes"), f"{dataset} tumour images", base / "yes")
    return _folder_records(no, 0, category, dataset, "good") + _folder_records(yes, 1, category, dataset, "tumor")


def _has_yes_no(p: Path) -> bool:
    return child_dir(p, "yes") is not None and child_dir(p, "no") is not None


@register_dataset("headct", title="Head CT - hemorrhage", summary="200 head CT slices, labels.csv")
class HeadCT(Family):
    """HeadCT (Kitamura, Kaggle): ``labels.csv`` (``id, hemorrhage``) and ``head_ct/head_ct/NNN.png``.

    The second header has a leading space in the Kaggle file; headers are stripped.
    """

    name = "headct"
    INFO = DatasetInfo(
        name="headct",
        domain="medical",
        modality="ct",
        categories=("brain",),
        has_masks=False,
        expected={"brain": {"test": (100, 100), "train": (0, 0)}},
        default_aux="mvtec_ad",
        overlaps=("brainmri", "br35h"),
        download=DownloadInfo(
            page="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
            notes="The folder must hold labels.csv and head_ct/head_ct/000.png ... 199.png.",
        ),
        count_notes="100 normal / 100 hemorrhage (labels.csv)",
    )

    def locate(self, root: Path) -> Path:
        """The folder holding ``labels.csv``."""
        return descend(root, lambda p: (p / "labels.csv").is_file(), ("head-ct-hemorrhage", "headct", "HeadCT"))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        if split != "test":
            return []
        labels = base / "labels.csv"
        if not labels.is_file():
            raise FileNotFoundError(f"{labels} not found: HeadCT is labelled by its labels.csv (Kaggle archive)")
        images = child_dir(base, "head_ct") or base
        images = child_dir(images, "head_ct") or images
        out = []
        for image_id, hemorrhage in _read_headct_labels(labels):
            label = 1 if hemorrhage else 0
            out.append(
                SampleRecord(
                    images / f"{image_id:03d}.png",
                    label,
                    None,
                    category,
                    "hemorrhage" if label else "good",
                    split,
                    "headct",
                )
            )
        return sorted(out, key=lambda r: (r.label, r.image_path.name))


def _read_headct_labels(path: Path) -> list[tuple[int, int]]:
    """(id, hemorrhage) rows of HeadCT's labels.csv, whatever the spacing of its header."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "id" not in header or "hemorrhage" not in header:
        raise ValueError(f"{path}: header {rows[0] if rows else []} lacks 'id' and 'hemorrhage'")
    i, h = header.index("id"), header.index("hemorrhage")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            out.append((int(row[i].strip()), int(row[h].strip())))
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{path}:{n}: expected '<id>, <0|1>', got {row}") from exc
    return out


@register_dataset("brainmri", title="Brain MRI (tumour detection)", summary="253 MRI slices, yes/no folders")
class BrainMRI(Family):
    """BrainMRI (navoneel, Kaggle): ``brain_tumor_dataset/{no,yes}`` (a duplicate ``{no,yes}`` may sit beside it).

    File names mix spaces, case and extensions (``1 no.jpeg``, ``Y1.jpg``, ``.JPG``, ``.png``).
    """

    name = "brainmri"
    INFO = DatasetInfo(
        name="brainmri",
        domain="medical",
        modality="mri",
        categories=("brain",),
        has_masks=False,
        expected={"brain": {"test": (98, 155), "train": (0, 0)}},
        default_aux="mvtec_ad",
        overlaps=("headct", "br35h"),
        download=DownloadInfo(
            page="https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
            notes="The folder must hold brain_tumor_dataset/{no,yes}/ (or no/ and yes/).",
        ),
        count_notes="98 no / 155 yes (AdaCLIP Table 1)",
    )

    def locate(self, root: Path) -> Path:
        """The folder holding ``no/`` and ``yes/`` (preferring ``brain_tumor_dataset/``)."""
        found = descend(root, lambda p: _has_yes_no(p) or child_dir(p, "brain_tumor_dataset") is not None)
        inner = child_dir(found, "brain_tumor_dataset")
        return inner if inner is not None and _has_yes_no(inner) else found

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        return _yes_no_records(base, category, "brainmri") if split == "test" else []


@register_dataset("br35h", title="Br35H (brain tumour detection 2020)", summary="3000 MRI slices, yes/no folders")
class Br35H(Family):
    """Br35H (Hamada, Kaggle): ``no/`` and ``yes/``; ``pred/`` (unlabelled) and ``Br35H-Mask-RCNN/`` are ignored."""

    name = "br35h"
    INFO = DatasetInfo(
        name="br35h",
        domain="medical",
        modality="mri",
        categories=("brain",),
        has_masks=False,
        expected={"brain": {"test": (1500, 1500), "train": (0, 0)}},
        default_aux="mvtec_ad",
        overlaps=("headct", "brainmri"),
        download=DownloadInfo(
            page="https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
            notes="The folder must hold no/ and yes/ (pred/ and Br35H-Mask-RCNN/ may stay; they are ignored).",
        ),
        count_notes="1500 no / 1500 yes (AdaCLIP Table 1)",
    )

    def locate(self, root: Path) -> Path:
        """The folder holding ``no/`` and ``yes/``."""
        return descend(root, _has_yes_no, ("Br35H", "brain-tumor-detection"))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        return _yes_no_records(base, category, "br35h") if split == "test" else []


@register_dataset("covid19", title="COVID-19 Radiography Database", summary="chest X-rays; Normal vs the rest")
class COVID19(Family):
    """COVID-19 Radiography Database (Kaggle): one folder per class, ``Normal`` (any case) is normal.

    Reads the current release (``COVID-19_Radiography_Dataset/<Class>/images/*.png``, with ``masks/``
    holding lung masks, ignored) and the early one (``<CLASS>/*.png``). Class folder names keep their
    spelling (``Viral Pneumonia`` has a space) as the defect type.

    Args:
        anomalous_classes: class folders counted as anomalous; None: every non-normal class
            (AnomalyCLIP's rule).
    """

    name = "covid19"
    INFO = DatasetInfo(
        name="covid19",
        domain="medical",
        modality="x-ray",
        categories=("chest",),
        has_masks=False,
        expected={"chest": {"test": (10192, 10973), "train": (0, 0)}},
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
            notes="The folder must hold the class folders (COVID/, Normal/, Lung_Opacity/, 'Viral Pneumonia'/), "
            "directly or inside COVID-19_Radiography_Dataset/.",
        ),
        count_notes="current Kaggle release: Normal 10192; COVID 3616 + Lung_Opacity 6012 + Viral Pneumonia 1345; "
        "the first release (219 COVID, 1341 normal, 1345 viral) and the papers' copies differ",
    )

    def __init__(self, anomalous_classes: list[str] | tuple[str, ...] | None = None) -> None:
        self.anomalous_classes = None if anomalous_classes is None else {c.lower() for c in anomalous_classes}

    def locate(self, root: Path) -> Path:
        """The folder holding the class folders."""

        def marker(p: Path) -> bool:
            return child_dir(p, "normal") is not None

        return descend(root, marker, ("COVID-19_Radiography_Dataset", "COVID-19 Radiography Database"))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        if split != "test":
            return []
        require_dir(child_dir(base, "normal"), "covid19 Normal class folder", base / "Normal")
        out = []
        for cls_dir in subdirs(base):
            normal = cls_dir.name.lower() == "normal"
            if not normal and self.anomalous_classes is not None and cls_dir.name.lower() not in self.anomalous_classes:
                continue
            images = child_dir(cls_dir, "images") or cls_dir
            out += _folder_records(images, 0 if normal else 1, category, "covid19", "good" if normal else cls_dir.name)
        return out
