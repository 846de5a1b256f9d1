"""BMAD medical sets with masks: LiverCT and RESC (retinal OCT), as BMAD or MVFA-AD distribute them.

The copies differ in folder names (``docs/datasets.md``); all of these are read:

* MVFA-AD / BMAD README: ``<split>/{good,Ungood}/img/*.png``, masks ``<split>/Ungood/anomaly_mask/``;
* BMAD loaders and anomalib's mirror: the mask folder is ``label`` instead of ``anomaly_mask``;
* folder order swapped: ``<split>/img/{good,Ungood}`` + ``<split>/label/Ungood``;
* RESC's own copy: ``Test/test/{good,Ungood}`` + ``Test/test_label/Ungood``.

Normal = ``good``, anomalous = ``Ungood``; a mask has its image's file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from zsad_bench.datasets._base import Family
from zsad_bench.layouts import MaskIndex, child_dir, descend, list_images
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["RESC", "LiverCT", "bmad_records"]

MASK_DIRS = ("anomaly_mask", "label", "labels", "mask", "gt")
_MVFA_PAGE = "https://github.com/MediaBrain-SJTU/MVFA-AD"


def _sub(folder: Path | None, *names: str) -> Path | None:
    return child_dir(folder, *names) if folder is not None else None


def _class_dir(split_dir: Path, cls: str) -> Path | None:
    """The image folder of class ``cls`` ("good"/"Ungood") in any known arrangement."""
    split = split_dir.name.lower()
    for candidate in (
        _sub(_sub(split_dir, cls), "img", "images"),  # test/good/img
        _sub(_sub(split_dir, "img", "images"), cls),  # test/img/good
        _sub(_sub(split_dir, split), cls),  # Test/test/good
        _sub(split_dir, cls),  # test/good
    ):
        if candidate is not None and list_images(candidate):
            return candidate
    return None


def _mask_dir(split_dir: Path) -> Path:
    """The mask folder of the anomalous images (or where it should be)."""
    split = split_dir.name.lower()
    ungood = child_dir(split_dir, "Ungood")
    for candidate in (
        _sub(ungood, *MASK_DIRS),  # test/Ungood/anomaly_mask
        _sub(_sub(split_dir, *MASK_DIRS, f"{split}_label"), "Ungood"),  # test/label/Ungood, Test/test_label/Ungood
    ):
        if candidate is not None:
            return candidate
    return (ungood or split_dir / "Ungood") / "anomaly_mask"


_SPLIT_NAMES = {"validation": ("validation", "valid", "val")}


def bmad_records(base: Path, category: str, split: str, dataset: str) -> list[SampleRecord]:
    """Records of one split of a BMAD / MVFA copy (folder matched ignoring case; [] when absent)."""
    split_dir = child_dir(base, *_SPLIT_NAMES.get(split, (split,)))
    if split_dir is None:
        return []
    good, ungood = _class_dir(split_dir, "good"), _class_dir(split_dir, "Ungood")
    out = [SampleRecord(img, 0, None, category, "good", split, dataset) for img in _images(good)]
    index = MaskIndex(_mask_dir(split_dir), ("",), default_ext=None)
    out += [SampleRecord(img, 1, index.lookup(img)[0], category, "Ungood", split, dataset) for img in _images(ungood)]
    return out


def _images(folder: Path | None) -> list[Path]:
    return list_images(folder) if folder is not None else []


class _BMAD(Family):
    WRAPPERS: ClassVar[tuple[str, ...]] = ()

    def locate(self, root: Path) -> Path:
        """The folder holding ``test/`` (or ``Test/``)."""
        return descend(root, lambda p: child_dir(p, "test") is not None, self.WRAPPERS)

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        if split == "test" and child_dir(base, "test") is None:
            raise FileNotFoundError(f"{base / 'test'} not found: unpack the {self.name} archive there")
        return bmad_records(base, category, split, self.name)


@register_dataset("liverct", title="LiverCT (BMAD)", summary="liver CT slices (BTCV + LiTS), tumour masks")
class LiverCT(_BMAD):
    """BMAD Liver: CT slices, normal from BTCV, abnormal from LiTS, with tumour masks."""

    name = "liverct"
    WRAPPERS = ("Liver_AD", "Liver", "LiverCT")
    INFO = DatasetInfo(
        name="liverct",
        domain="medical",
        modality="ct",
        categories=("liver",),
        expected={"liver": {"test": (833, 660)}},
        default_aux="mvtec_ad",
        splits=("train", "validation", "test"),
        download=DownloadInfo(
            page=_MVFA_PAGE,
            archive="Liver.tar.gz",
            notes="Google Drive link in the MVFA-AD README (BMAD: https://github.com/DorisBao/BMAD). The folder must "
            "hold test/{good,Ungood}/. Licence CC BY-NC-SA 4.0 plus the BTCV and LiTS terms.",
        ),
        count_notes="test ≈833 normal / 660 abnormal from memory; unverified",
    )


@register_dataset("resc", title="RESC (BMAD)", summary="retinal OCT, edema masks")
class RESC(_BMAD):
    """BMAD Retina_RESC: retinal OCT B-scans with edema masks."""

    name = "resc"
    WRAPPERS = ("Retina_RESC_AD", "Retina_RESC", "RESC")
    INFO = DatasetInfo(
        name="resc",
        domain="medical",
        modality="oct",
        categories=("retina",),
        expected={"retina": {"test": (1041, 764), "train": (4297, 0), "validation": (45, 70)}},
        default_aux="mvtec_ad",
        splits=("train", "validation", "test"),
        download=DownloadInfo(
            page=_MVFA_PAGE,
            archive="Retina_RESC.tar.gz",
            notes="Google Drive link in the MVFA-AD README (BMAD: https://github.com/DorisBao/BMAD). The folder must "
            "hold test/{good,Ungood}/. Licence CC BY-NC-SA 4.0 plus the RESC terms.",
        ),
        count_notes="BMAD MKD/data.py docstrings: test 1041/764, valid 45/70, train 4297",
    )
