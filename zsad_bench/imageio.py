"""Decoding images and masks as the datasets ship them, with errors that name the file.

Every image the evaluation loop reads goes through :func:`load_image` and every mask through
:func:`load_mask`. Both fully decode the file, so a truncated or corrupt file fails here with an
:class:`ImageReadError` that names the file, the problem and the fix; the evaluation loop
records such a sample and skips it. Pillow reads nearly everything; TIFFs it cannot identify
(some CVC-ClinicDB copies, float or multi-sample TIFFs) are read with ``tifffile``.

Conversions:
    * images become 8-bit RGB. Grayscale, palette and 16-bit images are converted; integer
      data above 255 and float data outside [0, 255] are min-max scaled per image, float data
      in [0, 1] is multiplied by 255.
    * masks keep their raw values and resolution: a pixel is anomalous when its value exceeds
      ``threshold`` in any channel. Palette masks are read as their indices (class ids).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, cast

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ImageReadError",
    "MaskSizeError",
    "check_mask_size",
    "image_hw",
    "load_image",
    "load_mask",
    "read_array",
]

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")


class ImageReadError(ValueError):
    """An image or mask that cannot be used; the message names the file, the problem and the fix.

    Attributes:
        path: the offending file.
        kind: "missing", "empty", "truncated", "unreadable" or "size".
    """

    def __init__(self, path: Path | str, kind: str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.problem = problem
        super().__init__(f"{self.path}: {problem}. {fix}")


class MaskSizeError(ImageReadError):
    """A mask whose size differs from its image where the dataset says they must match."""


def _missing(path: Path) -> ImageReadError:
    return ImageReadError(
        path,
        "missing",
        "file not found",
        "Restore it from the dataset archive (a partial download or a moved folder?).",
    )


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise _missing(path)
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty", "file is empty (0 bytes)", "Re-extract it from the dataset archive.")


def _open_pil(path: Path) -> Image.Image:
    """Open and fully decode with Pillow; raises Pillow's own exceptions."""
    from PIL import Image

    img = Image.open(path)
    img.load()  # decode now: a truncated file fails here, not later in a worker
    return img


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for broken files
        raise ImageReadError(
            path, "unreadable", f"neither Pillow nor tifffile can decode it ({exc})", "Re-extract it from the archive."
        ) from exc
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) → (H, W, C)
    return arr


def _decode(path: Path) -> Image.Image | np.ndarray:
    """Pillow image, or a numpy array for TIFFs only tifffile can read."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        return _open_pil(path)
    except UnidentifiedImageError as exc:
        if path.suffix.lower() in TIFF_SUFFIXES:
            logger.debug("Pillow cannot identify %s; reading it with tifffile", path)
            return _read_tiff(path)
        raise ImageReadError(
            path,
            "unreadable",
            "not a readable image (corrupt, or not an image at all)",
            "Re-extract it from the archive.",
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        kind = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        if kind == "unreadable" and path.suffix.lower() in TIFF_SUFFIXES:
            return _read_tiff(path)
        _raise_decode(path, kind, exc)


def _raise_decode(path: Path, kind: str, exc: Exception) -> NoReturn:
    problem = "file is truncated" if kind == "truncated" else f"cannot decode it ({exc})"
    raise ImageReadError(
        path, kind, problem, "Re-download or re-extract it (an interrupted copy leaves truncated files)."
    ) from exc


def read_array(path: Path) -> np.ndarray:
    """Decode a file to a numpy array with its raw values: (H, W) or (H, W, C).

    Palette images give their indices. Raises :class:`ImageReadError` naming the file.
    """
    img = _decode(Path(path))
    if isinstance(img, np.ndarray):
        return img
    if img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    return np.asarray(img)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale raw values to uint8 (see the module docstring for the rule)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo < 0.0 or hi > 255.0:
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W[, C]) → (H, W, 3) uint8."""
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])  # drop alpha / extra samples


def load_image(path: Path) -> Image.Image:
    """Decode an image to 8-bit RGB.

    Args:
        path: the image file (PNG, JPEG, BMP, TIFF, in any case of extension).

    Returns:
        A Pillow image in mode "RGB" at the file's resolution.

    Raises:
        ImageReadError: missing, empty, truncated or undecodable file; the message names it.
    """
    from PIL import Image

    img = _decode(Path(path))
    if isinstance(img, Image.Image):
        if img.mode in ("RGB", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1"):
            return img.convert("RGB")
        img = np.asarray(img)  # 16-bit ("I;16"), 32-bit int ("I") and float ("F") images
    return Image.fromarray(_array_to_rgb(img))


def load_mask(path: Path, threshold: int = 0) -> np.ndarray:
    """Decode a ground-truth mask to a boolean (H, W) array at its own resolution.

    Args:
        path: the mask file.
        threshold: a pixel is anomalous when its raw value exceeds it in any channel; 0 suits
            0/255 and class-id masks (VisA, MVTec 3D-AD), about 127 suits JPEG masks.

    Returns:
        (H, W) bool array.

    Raises:
        ImageReadError: missing, empty, truncated or undecodable file; the message names it.
    """
    arr = read_array(Path(path))
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # drop alpha ("LA", "RGBA")
            arr = arr[:, :, : arr.shape[2] - 1]
        # numpy's stubs type ``any(axis=…)`` as ``bool | NDArray``; with an axis it is an array
        return cast(np.ndarray, (arr > threshold).any(axis=2))
    return arr > threshold


def image_hw(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels.

    Raises:
        ImageReadError: missing, empty or unidentifiable file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _tiff_hw(path)
        raise ImageReadError(path, "unreadable", "not a readable image", "Re-extract it from the archive.") from exc


def _tiff_hw(path: Path) -> tuple[int, int]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
    except Exception as exc:
        raise ImageReadError(path, "unreadable", f"cannot read the TIFF header ({exc})", "Re-extract it.") from exc
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def check_mask_size(image_path: Path, mask_path: Path, image_hw_: tuple[int, int], mask_hw: tuple[int, int]) -> None:
    """Raise :class:`MaskSizeError` when a mask's (H, W) differs from its image's.

    Args:
        image_path: the image, named in the message.
        mask_path: the mask, named in the message.
        image_hw_: the image's (H, W).
        mask_hw: the mask's (H, W).
    """
    if tuple(image_hw_) != tuple(mask_hw):
        raise MaskSizeError(
            mask_path,
            "size",
            f"mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {Path(image_path).name} is "
            f"{image_hw_[1]}x{image_hw_[0]}",
            "The mask may belong to another image, or the copy was resized; re-extract both from the archive.",
        )
