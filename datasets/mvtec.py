"""Industrial datasets in the MVTec AD folder layout: MVTec AD, MPDD, BTAD, DTD-Synthetic, MVTec 3D-AD (RGB).

Layouts and counts: ``docs/datasets.md``.
"""

from __future__ import annotations

from pathlib import Path

from zsad_bench.datasets._base import Family, MVTecStyleFamily, expected_counts
from zsad_bench.layouts import MaskIndex, child_dir, descend, list_images, require_dir, subdirs
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["BTAD", "MPDD", "DTDSynthetic", "MVTec3D", "MVTecAD"]

# test (normal, anomalous) and train normals per category; per-category numbers from memory
# (datasets.md §1 [M]), their sums match the published totals 467/1258 and 3629.
_MVTEC_TEST = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89), "grid": (21, 57),
    "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93), "pill": (26, 141), "screw": (41, 119),
    "tile": (33, 84), "toothbrush": (12, 30), "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}  # fmt: skip
_MVTEC_TRAIN = {
    "bottle": 209, "cable": 224, "capsule": 219, "carpet": 280, "grid": 264, "hazelnut": 391, "leather": 245,
    "metal_nut": 220, "pill": 267, "screw": 320, "tile": 230, "toothbrush": 60, "transistor": 213, "wood": 247,
    "zipper": 240,
}  # fmt: skip


@register_dataset("mvtec_ad", title="MVTec AD", summary="15 industrial objects and textures, pixel masks")
class MVTecAD(MVTecStyleFamily):
    """MVTec AD (Bergmann et al., CVPR 2019): ``<cat>/{train/good,test/<defect>,ground_truth/<defect>}``."""

    name = "mvtec_ad"
    WRAPPERS = ("mvtec_anomaly_detection", "mvtec_ad", "MVTec")
    INFO = DatasetInfo(
        name="mvtec_ad",
        domain="industrial",
        modality="rgb",
        categories=tuple(_MVTEC_TEST),
        expected=expected_counts(_MVTEC_TEST, {c: (n, 0) for c, n in _MVTEC_TRAIN.items()}),
        default_aux="visa",
        overlaps=("real_iad",),  # toothbrush, zipper
        download=DownloadInfo(
            page="https://www.mvtec.com/company/research/datasets/mvtec-ad",
            archive="mvtec_anomaly_detection.tar.xz",
            sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
            md5="eefca59f2cede9c3fc5b6befbfec275e",
            notes="The archive unpacks flat: the folder must hold bottle/, cable/, ..., zipper/. "
            "Licence CC BY-NC-SA 4.0.",
        ),
        count_notes="totals 467/1258 (test) and 3629 (train) published; per-category split from memory, sums match",
    )


_MPDD_TEST = {
    "bracket_black": (32, 47), "bracket_brown": (26, 51), "bracket_white": (30, 30),
    "connector": (30, 14), "metal_plate": (26, 71), "tubes": (32, 69),
}  # fmt: skip


@register_dataset("mpdd", title="MPDD", summary="6 metal parts, painted and rusted; pixel masks")
class MPDD(MVTecStyleFamily):
    """Metal Parts Defect Detection (Jezek et al., 2021), MVTec AD layout."""

    name = "mpdd"
    WRAPPERS = ("MPDD", "anomaly_dataset")
    INFO = DatasetInfo(
        name="mpdd",
        domain="industrial",
        modality="rgb",
        categories=tuple(_MPDD_TEST),
        expected=expected_counts(_MPDD_TEST),
        expected_totals={"test": (176, 282), "train": (888, 0)},
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://github.com/stepanje/MPDD",
            notes="OneDrive link in the README. Incomplete downloads with missing categories are reported "
            "(AnomalyCLIP issue #5): check all 6 category folders are present.",
        ),
        count_notes="test per category from two third-party tables that agree and sum to the published 176/282; "
        "train total 888 (EPHAD appendix), per category unknown",
    )


_BTAD_TEST = {"01": (21, 49), "02": (30, 200), "03": (400, 41)}


@register_dataset("btad", title="BTAD (beanTech)", summary="3 industrial products; .bmp/.png mix")
class BTAD(MVTecStyleFamily):
    """beanTech AD: ``<cat>/{train/ok,test/ok,test/ko,ground_truth/ko}``, masks named like their image.

    Images and masks are ``.bmp`` or ``.png`` depending on the product (03 has ``.bmp`` masks);
    masks are found by stem whatever their extension.
    """

    name = "btad"
    NORMAL_DIRS = ("ok", "good")  # "good": anomalib-converted copies
    MASK_SUFFIX = ""
    WRAPPERS = ("BTech_Dataset_transformed", "BTech", "btad")
    INFO = DatasetInfo(
        name="btad",
        domain="industrial",
        modality="rgb",
        categories=("01", "02", "03"),
        expected=expected_counts(_BTAD_TEST),
        expected_totals={"test": (451, 290), "train": (1799, 0)},
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://avires.dimi.uniud.it/papers/btad/btad.zip",
            archive="btad.zip",
            sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
            md5="c1fa4d56ac50dd50908ce04e81037a8e",
            notes="It unpacks to BTech_Dataset_transformed/{01,02,03}. Licence CC BY-SA 4.0 (authors' README).",
        ),
        count_notes="totals 451/290 test, 1799 train (dataset-ninja); per-category test split from memory, sums match",
    )


_DTD_CATEGORIES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)  # fmt: skip


@register_dataset("dtd_synthetic", title="DTD-Synthetic", summary="12 textures with synthetic defects")
class DTDSynthetic(MVTecStyleFamily):
    """DTD-Synthetic (Aota et al., WACV 2023), MVTec AD layout with defect folder ``bad``.

    Masks are accepted as ``NNN_mask.png`` or ``NNN.png`` (the naming is unverified).
    """

    name = "dtd_synthetic"
    WRAPPERS = ("DTD-Synthetic", "DTD_Synthetic", "DTD")
    INFO = DatasetInfo(
        name="dtd_synthetic",
        domain="industrial",
        modality="rgb",
        categories=_DTD_CATEGORIES,
        prompt_names={c: c.split("_")[0].lower() + " texture" for c in _DTD_CATEGORIES},
        expected_totals={"test": (357, 947)},
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1",
            notes="Google Drive folder of the authors (Aota et al.). Terms of the synthetic set are unstated.",
        ),
        count_notes="test total 357/947 from AdaCLIP (ECCV 2024) appendix Table 1; per category unknown",
    )


@register_dataset("mvtec_3d", title="MVTec 3D-AD (RGB)", summary="10 objects, RGB images, class-id masks")
class MVTec3D(Family):
    """MVTec 3D-AD, RGB part: ``<cat>/<split>/<defect>/rgb/NNN.png`` with ``gt/NNN.png`` beside ``rgb/``.

    Masks hold class ids (``class_ids.json``: 255 contamination, 254 cut, ...), binarised as > 0.
    ``test/good/gt`` holds all-zero masks; normal records still get ``mask_path`` None. The extra
    ``validation`` split is available as ``split="validation"``.
    """

    name = "mvtec_3d"
    INFO = DatasetInfo(
        name="mvtec_3d",
        domain="industrial",
        modality="rgb",
        categories=("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire"),
        expected_totals={"test": (249, 948), "train": (2656, 0), "validation": (294, 0)},
        default_aux="mvtec_ad",
        splits=("train", "validation", "test"),
        download=DownloadInfo(
            page="https://www.mvtec.com/company/research/datasets/mvtec-3d-ad",
            archive="mvtec_3d_anomaly_detection.tar.xz",
            md5="d8bb2800fbf3ac88e798da6ae10dc819",
            notes="The folder must hold bagel/, ..., tire/ (each with train/, validation/, test/). CC BY-NC-SA 4.0.",
        ),
        count_notes="approximate totals from memory (test ≈249/948 of 1197); unverified",
    )

    def locate(self, root: Path) -> Path:
        """The folder that holds the category folders."""
        cats = self.INFO.categories
        return descend(root, lambda p: any((p / c).is_dir() for c in cats), ("mvtec_3d_anomaly_detection",))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        cat_dir = require_dir(child_dir(base, category), f"category {category!r} of mvtec_3d", base / category)
        split_dir = child_dir(cat_dir, split)
        if split_dir is None:
            if split == "test":
                require_dir(None, f"test split of mvtec_3d/{category}", cat_dir / "test")
            return []
        out = []
        for defect_dir in subdirs(split_dir):
            normal = defect_dir.name.lower() == "good"
            index = None if normal else MaskIndex(defect_dir / "gt", ("",))
            for img in list_images(defect_dir / "rgb"):
                mask = None if index is None else index.lookup(img)[0]
                out.append(
                    SampleRecord(
                        img, int(not normal), mask, category, "good" if normal else defect_dir.name, split, "mvtec_3d"
                    )
                )
        return out
