"""Medical segmentation sets without normal images: ISIC 2016, CVC-ClinicDB, CVC-ColonDB, Kvasir-SEG, Endo, TN3K.

Every image shows a lesion, so image metrics are not applicable and only pixel metrics are
reported. Each image is paired with the mask of the same stem in a sibling folder. Layouts:
``docs/datasets.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from zsad_bench.datasets._base import Family
from zsad_bench.layouts import child_dir, descend, paired_folder_records
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["ISIC2016", "TN3K", "ClinicDB", "ColonDB", "Endo", "Kvasir"]

Pair = tuple[str, str, str]  # (split, image folder, mask folder), "a/b" for nested folders


def _subpath(base: Path, rel: str) -> Path | None:
    """``base/rel`` matching each folder name ignoring case, or None."""
    cur: Path | None = base
    for part in rel.split("/"):
        cur = child_dir(cur, part) if cur is not None else None
    return cur


class _PairedFolders(Family):
    """A folder of lesion images and a folder of masks per split, tried in the order of ``PAIRS``."""

    PAIRS: ClassVar[Sequence[Pair]] = (("test", "images", "masks"),)
    MASK_SUFFIX: ClassVar[str] = ""
    WRAPPERS: ClassVar[Sequence[str]] = ()

    def _pair(self, base: Path, split: str) -> tuple[Path, Path] | None:
        for images, masks in ((i, m) for s, i, m in self.PAIRS if s == split):
            found = _subpath(base, images)
            if found is not None:
                return found, _subpath(base, masks) or base / masks
        return None

    def locate(self, root: Path) -> Path:
        """The folder holding the test image folder."""
        return descend(root, lambda p: self._pair(p, "test") is not None, self.WRAPPERS)

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        pair = self._pair(base, split)
        if pair is None:
            if split == "test":
                wanted = " or ".join(f"{i}/ + {m}/" for s, i, m in self.PAIRS if s == "test")
                raise FileNotFoundError(f"{self.name}: none of {wanted} found in {base}")
            return []
        return paired_folder_records(pair[0], pair[1], category, split, self.name, self.MASK_SUFFIX, "lesion")


def _info(name: str, category: str, modality: str, counts: dict[str, int], **kw: Any) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        domain="medical",
        modality=modality,
        categories=(category,),
        has_image_labels=False,
        expected={category: {split: (0, n) for split, n in counts.items()}},
        **kw,
    )


@register_dataset("isic2016", title="ISIC 2016 (ISBI part 1)", summary="skin lesion segmentation, no normals")
class ISIC2016(_PairedFolders):
    """ISIC 2016 part 1: ``ISBI2016_ISIC_Part1_{Test,Training}_Data/`` + ``..._GroundTruth/<stem>_Segmentation.png``."""

    name = "isic2016"
    PAIRS = (
        ("test", "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
        ("train", "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    )
    MASK_SUFFIX = "_Segmentation"
    WRAPPERS = ("ISIC2016", "ISBI2016")
    INFO = _info(
        "isic2016",
        "skin",
        "dermoscopy",
        {"test": 379, "train": 900},
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://challenge.isic-archive.com/data/#2016",
            archive="ISBI2016_ISIC_Part1_Test_Data.zip, ISBI2016_ISIC_Part1_Test_GroundTruth.zip",
            notes="Files at https://isic-challenge-data.s3.amazonaws.com/2016/<archive>. Unzip both into the folder.",
        ),
        count_notes="test 379, train 900 lesion images",
    )


@register_dataset("clinicdb", title="CVC-ClinicDB", summary="612 colonoscopy frames with polyp masks")
class ClinicDB(_PairedFolders):
    """CVC-ClinicDB: ``Original/<n>.tif`` + ``Ground Truth/<n>.tif``, or ``images/`` + ``masks/``.

    The Kaggle copy also has ``PNG/`` and ``TIF/`` versions of both folders.

    Many of its TIFFs cannot be opened by Pillow; :mod:`zsad_bench.imageio` reads them with tifffile.
    """

    name = "clinicdb"
    PAIRS = (
        ("test", "Original", "Ground Truth"),
        ("test", "TIF/Original", "TIF/Ground Truth"),
        ("test", "PNG/Original", "PNG/Ground Truth"),
        ("test", "images", "masks"),
    )
    WRAPPERS = ("CVC-ClinicDB", "ClinicDB")
    INFO = _info(
        "clinicdb",
        "colon",
        "endoscopy",
        {"test": 612},
        default_aux="colondb",
        download=DownloadInfo(
            page="https://polyp.grand-challenge.org/CVCClinicDB/",
            notes="Also on Kaggle and in the PraNet polyp benchmark (images/ + masks/; its TestDataset copy holds "
            "only 62 frames). Research use; cite Bernal et al. 2015.",
        ),
        count_notes="612 frames, all with a polyp (the PraNet test copy has 62)",
    )


@register_dataset("colondb", title="CVC-ColonDB", summary="380 colonoscopy frames with polyp masks")
class ColonDB(_PairedFolders):
    """CVC-ColonDB as in the polyp benchmarks: ``images/<n>.png`` + ``masks/<n>.png``."""

    name = "colondb"
    PAIRS = (("test", "images", "masks"), ("test", "Original", "Ground Truth"))
    WRAPPERS = ("CVC-ColonDB", "ColonDB")
    INFO = _info(
        "colondb",
        "colon",
        "endoscopy",
        {"test": 380},
        default_aux="clinicdb",
        download=DownloadInfo(
            page="http://vi.cvc.uab.es/colon-qa/cvccolondb/",
            notes="Usually taken from the PraNet / Polyp-PVT TestDataset/CVC-ColonDB (images/ + masks/). Research use.",
        ),
        count_notes="380 frames, all with a polyp",
    )


@register_dataset("kvasir", title="Kvasir-SEG", summary="1000 polyp images, JPEG masks")
class Kvasir(_PairedFolders):
    """Kvasir-SEG: ``images/*.jpg`` + ``masks/*.jpg``; the masks are JPEG, so they are thresholded at > 127."""

    name = "kvasir"
    WRAPPERS = ("Kvasir-SEG", "kvasir-seg")
    INFO = _info(
        "kvasir",
        "colon",
        "endoscopy",
        {"test": 1000},
        default_aux="mvtec_ad",
        mask_threshold=127,
        download=DownloadInfo(
            page="https://datasets.simula.no/kvasir-seg/",
            archive="kvasir-seg.zip",
            notes="It unpacks to Kvasir-SEG/{images,masks}/. Non-commercial use without permission.",
        ),
        count_notes="1000 polyp images (authors' README)",
    )


@register_dataset("endo", title="EndoTect 2020 segmentation test set", summary="200 polyp images")
class Endo(_PairedFolders):
    """Endo (EndoTect 2020 segmentation test set): ``images/`` + ``masks/``; masks thresholded at > 127 (JPEG-safe)."""

    name = "endo"
    WRAPPERS = ("EndoTect_2020_Segmentation_Test_Dataset", "EndoTect")
    INFO = _info(
        "endo",
        "colon",
        "endoscopy",
        {"test": 200},
        default_aux="mvtec_ad",
        mask_threshold=127,
        download=DownloadInfo(
            page="https://endotect.com/",
            notes="The folder must hold images/ and masks/ (EndoTect_2020_Segmentation_Test_Dataset).",
        ),
        count_notes="200 test images with masks (third-party README)",
    )


@register_dataset("tn3k", title="TN3K", summary="thyroid nodule ultrasound, JPEG masks")
class TN3K(_PairedFolders):
    """TN3K: ``test-image/<n>.jpg`` + ``test-mask/<n>.jpg`` (``trainval-*`` for train); numeric order; masks > 127."""

    name = "tn3k"
    PAIRS = (("test", "test-image", "test-mask"), ("train", "trainval-image", "trainval-mask"))
    WRAPPERS = ("Thyroid Dataset", "tn3k", "TN3K")
    INFO = _info(
        "tn3k",
        "thyroid",
        "ultrasound",
        {"test": 614, "train": 2879},
        default_aux="mvtec_ad",
        mask_threshold=127,
        download=DownloadInfo(
            page="https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation",
            notes="Often shipped as 'Thyroid Dataset/tn3k/'; the folder must hold test-image/ and test-mask/.",
        ),
        count_notes="test 614 (AdaCLIP Table 1), trainval 2879 (from memory)",
    )
