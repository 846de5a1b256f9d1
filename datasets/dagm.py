"""DAGM 2007, the 10-class weakly supervised set (Kaggle "DAGM_KaggleUpload").

Layout (the Kaggle ``DAGM_KaggleUpload`` copy; ``docs/datasets.md``): ``ClassN/{Train,Test}/NNNN.PNG`` with
``ClassN/{Train,Test}/Label/NNNN_label.PNG`` (coarse ellipses) and ``Label/Labels.txt``,
tab-separated after a one-line header: index, defect flag 0/1, image file, 0, label file.
Copies extracted class by class nest one more level (``ClassN/ClassN/Train``); both work.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zsad_bench.datasets._base import Family, expected_counts
from zsad_bench.layouts import MaskIndex, child_dir, descend, list_images, require_dir
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["DAGM", "read_labels_txt"]

logger = logging.getLogger(__name__)

_CLASSES = tuple(f"Class{i}" for i in range(1, 11))
# defective images per split [S] (Levigty/DAGM2007-to-VOC); normals = half of each class minus those [M];
# the test sums, 6996/1054, equal AdaCLIP's Table 1.
_DEFECT = {"train": (79, 66, 66, 82, 70, 83, 150, 150, 150, 150), "test": (71, 84, 84, 68, 80, 67, 150, 150, 150, 150)}
_HALF = (575,) * 6 + (1150,) * 4


def _split_counts(split: str) -> dict[str, tuple[int, int]]:
    return {c: (h - d, d) for c, h, d in zip(_CLASSES, _HALF, _DEFECT[split], strict=True)}


def read_labels_txt(path: Path) -> dict[str, tuple[int, str]]:
    """Parse DAGM's ``Labels.txt``: image file name (lower case) → (defect flag, label file name).

    The first line is a header; each other line is tab-separated (whitespace is accepted too):
    index, flag, image file, 0, label file (present when the flag is 1).

    Raises:
        ValueError: naming the file and line of a malformed entry.
    """
    out: dict[str, tuple[int, str]] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines[1:], start=2):
        cols = line.strip().split("\t") if "\t" in line else line.split()
        if not cols or not cols[0].strip():
            continue
        if len(cols) < 3 or cols[1].strip() not in ("0", "1"):
            raise ValueError(f"{path}:{n}: expected 'index<TAB>0|1<TAB>image<TAB>0<TAB>label', got {line!r}")
        label_file = cols[4].strip() if len(cols) > 4 else ""
        out[cols[2].strip().lower()] = (int(cols[1]), "" if label_file == "0" else label_file)
    return out


@register_dataset("dagm", title="DAGM 2007", summary="10 synthetic textures, weak ellipse masks")
class DAGM(Family):
    """DAGM 2007 (Wieler & Hahn): labels from ``Labels.txt``, else from the presence of a label image."""

    name = "dagm"
    INFO = DatasetInfo(
        name="dagm",
        domain="industrial",
        modality="rgb",
        categories=_CLASSES,
        expected=expected_counts(_split_counts("test"), _split_counts("train")),
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://www.kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection",
            notes="Also at https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-"
            "inspection . The folder must hold Class1/ ... Class10/, each with Train/ and Test/. Research use.",
        ),
        count_notes="defective counts per class and split from a published table; normals assume each split holds "
        "half of each class (575 or 1150 images)",
    )

    def locate(self, root: Path) -> Path:
        """The folder holding ``Class1/`` ... ``Class10/``."""
        return descend(
            root, lambda p: any((p / c).is_dir() for c in _CLASSES), ("DAGM_KaggleUpload", "DAGM2007", "DAGM")
        )

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        class_dir = require_dir(child_dir(base, category), f"category {category!r} of dagm", base / category)
        nested = child_dir(class_dir, category)
        if child_dir(class_dir, "Train", "Test") is None and nested is not None:
            class_dir = nested  # ClassN/ClassN/Train: each class zip extracted into its own folder
        split_dir = require_dir(
            child_dir(class_dir, split), f"{split} split of dagm/{category}", class_dir / split.title()
        )
        label_dir = child_dir(split_dir, "Label") or split_dir / "Label"
        labels_txt = label_dir / "Labels.txt"
        table = read_labels_txt(labels_txt) if labels_txt.is_file() else {}
        index = MaskIndex(label_dir, ("_label",), default_ext=".PNG")
        out = []
        for img in list_images(split_dir):
            flag, mask = self._label(img, table.get(img.name.lower()), index, label_dir)
            out.append(SampleRecord(img, flag, mask, category, "defect" if flag else "good", split, "dagm"))
        return out

    @staticmethod
    def _label(img: Path, entry: tuple[int, str] | None, index: MaskIndex, label_dir: Path) -> tuple[int, Path | None]:
        """(label, mask path): Labels.txt decides when it lists the image, else a label image's presence."""
        if entry is None:
            found = index.find(img.stem)
            return (1, found) if found is not None else (0, None)
        flag, label_file = entry
        if not flag:
            return 0, None
        named = label_dir / label_file if label_file else None
        if named is not None and named.is_file():
            return 1, named
        return 1, index.lookup(img)[0]
