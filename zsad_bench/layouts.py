"""Readers for the on-disk layouts shared by many datasets; nothing here names a dataset.

Conventions (every reader follows them):
    * image files are found by extension, case-insensitively (``.png .PNG .jpg .JPG .jpeg
      .bmp .tif .tiff``); hidden files (``.DS_Store``, ``._x.png``) are skipped;
    * files are sorted in natural order (``2.png`` before ``10.png``), so records are
      deterministic and follow the datasets' numbering;
    * an image is paired with its mask by file stem, never by position in a sorted list;
    * **an anomalous image whose mask cannot be found** keeps a record whose ``mask_path`` is
      the path where the mask was expected (which does not exist). :func:`zsad_bench.imageio.load_mask`
      then raises an ``ImageReadError`` naming it: ``zsad-bench data check`` reports it and the
      evaluation records the sample and skips it. ``mask_path`` is None only for normal images
      and for datasets without masks.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from zsad_bench.types import DatasetInfo, SampleRecord

__all__ = [
    "IMAGE_SUFFIXES",
    "MaskIndex",
    "child_dir",
    "descend",
    "is_image_file",
    "list_images",
    "missing_root_message",
    "mvtec_style_records",
    "natural_key",
    "paired_folder_records",
    "require_dir",
    "require_root",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("2.png" < "10.png").

    Example:
        >>> sorted(["10.png", "2.png", "1.png"], key=natural_key)
        ['1.png', '2.png', '10.png']
    """
    parts = _DIGITS.split(name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts) + ((1, 0, name),)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with an image extension (any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path, exclude: Callable[[Path], bool] | None = None) -> list[Path]:
    """The image files directly inside ``folder``, in natural order ([] when it does not exist)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if is_image_file(p) and not (exclude and exclude(p))]
    return sorted(files, key=lambda p: natural_key(p.name))


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder`` in natural order."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )


def child_dir(folder: Path, *names: str) -> Path | None:
    """The first sub-folder of ``folder`` whose name matches one of ``names``, ignoring case."""
    if not folder.is_dir():
        return None
    by_lower: dict[str, Path] = {}
    for p in subdirs(folder):
        by_lower.setdefault(p.name.lower(), p)
    for name in names:
        exact = folder / name
        if exact.is_dir():
            return exact
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def descend(root: Path, marker: Callable[[Path], bool], wrappers: Sequence[str] = (), depth: int = 2) -> Path:
    """Find the folder that holds a dataset under the folder a user unpacked it into.

    Archives often add a wrapper folder (``btad/BTech_Dataset_transformed/01``). Returns ``root``
    if ``marker(root)``; else the first named wrapper (any case) or only sub-folder that satisfies
    it, searching ``depth`` levels; else ``root`` unchanged (the caller's error then names it).
    """
    if marker(root) or depth == 0:
        return root
    candidates = [c for c in (child_dir(root, w) for w in wrappers) if c is not None]
    kids = subdirs(root)
    if len(kids) == 1:
        candidates.append(kids[0])
    for cand in candidates:
        found = descend(cand, marker, wrappers, depth - 1)
        if marker(found):
            return found
    return root


def missing_root_message(root: Path, info: DatasetInfo) -> str:
    """One message: the dataset is not at ``root``; where to get it and where to put it."""
    d = info.download
    where = ""
    if d.page or d.archive:
        where = f" Get it from {d.page or 'its authors'}" + (f" ({d.archive})" if d.archive else "")
        where += f" and unpack it into {root}."
    hint = f" {d.notes}" if d.notes else ""
    return (
        f"dataset {info.name!r} not found at {root}.{where}{hint} "
        f"Set paths.data_root=<folder holding {info.subdir or info.name}/> or dataset.root=<folder> "
        f"to point elsewhere; `zsad-bench data info {info.name}` shows the expected layout."
    )


def require_root(root: Path, info: DatasetInfo) -> Path:
    """Return ``root`` as a Path, or raise FileNotFoundError with :func:`missing_root_message`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(missing_root_message(root, info))
    return root


def require_dir(path: Path | None, what: str, expected: Path) -> Path:
    """Return ``path`` or raise FileNotFoundError naming the expected folder and what it should hold."""
    if path is None or not path.is_dir():
        raise FileNotFoundError(
            f"{what} not found: expected the folder {expected}. Is the copy complete and unpacked there?"
        )
    return path


class MaskIndex:
    """The mask files of one folder, looked up by image stem.

    Args:
        folder: the mask folder (may not exist: every lookup then misses).
        suffixes: stem suffixes tried in order, e.g. ``("_mask", "")``; matched ignoring case.
        default_ext: the extension of the path reported for a missing mask; None: the most common
            one in the folder, else the image's.
    """

    def __init__(self, folder: Path, suffixes: Sequence[str] = ("_mask", ""), default_ext: str | None = ".png") -> None:
        self.folder = folder
        self.suffixes = tuple(suffixes)
        self.default_ext = default_ext
        files = list_images(folder)
        self._by_stem = {p.stem.lower(): p for p in reversed(files)}
        common = Counter(p.suffix for p in files).most_common(1)
        self._usual_ext = common[0][0] if common else None

    def find(self, stem: str) -> Path | None:
        """The mask of the image with this stem, or None."""
        for suffix in self.suffixes:
            hit = self._by_stem.get(f"{stem}{suffix}".lower())
            if hit is not None:
                return hit
        return None

    def expected(self, stem: str, image_ext: str = ".png") -> Path:
        """Where the mask of ``stem`` should be (first suffix; default, usual or image extension)."""
        return self.folder / f"{stem}{self.suffixes[0]}{self.default_ext or self._usual_ext or image_ext}"

    def lookup(self, image: Path) -> tuple[Path, bool]:
        """(path, found): the mask of ``image`` or, when missing, the expected path."""
        hit = self.find(image.stem)
        return (hit, True) if hit is not None else (self.expected(image.stem, image.suffix), False)

    def __len__(self) -> int:
        return len(self._by_stem)


def _warn_missing(n_missing: int, where: Path) -> None:
    if n_missing:
        logger.warning(
            "%d anomalous image(s) under %s have no mask; they are kept with the expected mask path "
            "(`zsad-bench data check` lists them; evaluation skips them)",
            n_missing,
            where,
        )


def mvtec_style_records(
    root: Path,
    category: str,
    split: str,
    dataset: str,
    mask_dir: str = "ground_truth",
    mask_suffix: str = "_mask",
    *,
    normal_dirs: Iterable[str] = ("good",),
    category_dir: str | None = None,
    has_masks: bool = True,
    required_splits: Iterable[str] = ("test",),
) -> list[SampleRecord]:
    """Records of a category in the MVTec AD layout.

    ``<root>/<category>/<split>/<defect>/<name>.<ext>`` with masks at
    ``<root>/<category>/<mask_dir>/<defect>/<name><mask_suffix>.<ext>`` (a mask named exactly like
    its image is accepted too). A folder in ``normal_dirs`` (any case) holds normal images
    (label 0, no mask); every other folder holds anomalous ones (label 1, defect type = folder).

    Args:
        root: the dataset folder.
        category: the category name written into the records.
        split: "train" or "test" (the folder name, matched ignoring case).
        dataset: the registered dataset name written into the records.
        mask_dir: the mask folder under the category folder.
        mask_suffix: appended to the image stem to name its mask.
        normal_dirs: folder names of normal images ("good"; BTAD: "ok").
        category_dir: the category's folder name when it differs from ``category``.
        has_masks: False for datasets without masks (then ``mask_path`` is always None).
        required_splits: splits whose folder must exist; a missing other split gives [].

    Returns:
        Records sorted by defect folder then file name. See the module docstring for the
        record of an anomalous image whose mask is missing.

    Raises:
        FileNotFoundError: naming the missing category or split folder.
    """
    cat_dir = Path(root) / (category_dir or category)
    require_dir(cat_dir if cat_dir.is_dir() else None, f"category {category!r} of {dataset}", cat_dir)
    split_dir = child_dir(cat_dir, split)
    if split_dir is None:
        if split in set(required_splits):
            require_dir(None, f"{split} split of {dataset}/{category}", cat_dir / split)
        return []
    normals = {n.lower() for n in normal_dirs}
    masks_root = child_dir(cat_dir, mask_dir) or cat_dir / mask_dir
    out: list[SampleRecord] = []
    n_missing = 0
    for defect_dir in subdirs(split_dir):
        normal = defect_dir.name.lower() in normals
        index = None if normal or not has_masks else MaskIndex(masks_root / defect_dir.name, (mask_suffix, ""))
        for img in list_images(defect_dir):
            mask = None
            if index is not None:
                mask, found = index.lookup(img)
                n_missing += not found
            defect = "good" if normal else defect_dir.name
            out.append(SampleRecord(img, 0 if normal else 1, mask, category, defect, split, dataset))
    _warn_missing(n_missing, cat_dir)
    return out


def paired_folder_records(
    image_dir: Path,
    mask_dir: Path | None,
    category: str,
    split: str,
    dataset: str,
    mask_suffix: str = "",
    defect_type: str = "anomaly",
    exclude: Callable[[Path], bool] | None = None,
) -> list[SampleRecord]:
    """Records of a folder of anomalous images with masks in a sibling folder, paired by stem.

    The layout of the polyp, skin and thyroid segmentation sets: every image is anomalous
    (label 1) and its mask is ``<mask_dir>/<stem><mask_suffix>.<ext>``.

    Args:
        image_dir: the images.
        mask_dir: the masks, or None for a dataset without masks.
        category: written into the records.
        split: written into the records.
        dataset: written into the records.
        mask_suffix: appended to the image stem to name its mask ("_Segmentation" for ISIC).
        defect_type: written into the records.
        exclude: files of ``image_dir`` to skip.
    """
    index = MaskIndex(mask_dir, (mask_suffix,), default_ext=None) if mask_dir is not None else None
    out, n_missing = [], 0
    for img in list_images(image_dir, exclude):
        mask = None
        if index is not None:
            mask, found = index.lookup(img)
            n_missing += not found
        out.append(SampleRecord(img, 1, mask, category, defect_type, split, dataset))
    _warn_missing(n_missing, image_dir)
    return out
