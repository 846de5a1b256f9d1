"""The embedded synthetic anomaly dataset, written to disk in the MVTec AD layout.

Each category is a procedural image family (textures, objects on a background, and
medical-looking scans); anomalous test images carry one defect kind each (scratch, hole,
stain, crack, missing part, colour change) painted with a hard mask, so the ground truth is
exactly the set of changed pixels. Everything is a function of ``(seed, category, split,
index)``: the same seed writes byte-identical files.

Layout (MVTec AD): ``<root>/<category>/train/good/000.png``,
``<root>/<category>/test/<defect>/000.png``, ``<root>/<category>/ground_truth/<defect>/000_mask.png``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "AUX_CATEGORIES",
    "DEFECTS",
    "TEST_CATEGORIES",
    "SynthSpec",
    "ensure_synth",
    "render_pair",
    "render_sample",
    "write_synth",
]

logger = logging.getLogger(__name__)

VERSION = 1
DEFECTS = ("scratch", "hole", "stain", "crack", "missing_part", "colour_change")

# category -> (domain, family); the family picks the renderer.
TEST_CATEGORIES = {
    "carpet_like": ("industrial", "weave"),
    "wood_like": ("industrial", "stripes"),
    "bottle_like": ("industrial", "disk"),
    "pill_like": ("industrial", "capsule"),
    "skin_like": ("medical", "skin"),
    "brain_like": ("medical", "scan"),
}
AUX_CATEGORIES = {
    "tile_like": ("industrial", "tiles"),
    "screw_like": ("industrial", "capsule"),
    "cell_like": ("medical", "skin"),
    "chest_like": ("medical", "scan"),
}
Array = np.ndarray


class SynthSpec:
    """Sizes of a synthetic copy.

    Args:
        categories: category → (domain, family).
        seed: the generator seed.
        size: image side in pixels.
        n_train: normal training images per category.
        n_test_good: normal test images per category.
        n_per_defect: anomalous test images per defect kind and category.
    """

    def __init__(
        self,
        categories: dict[str, tuple[str, str]],
        seed: int = 0,
        size: int = 96,
        n_train: int = 6,
        n_test_good: int = 4,
        n_per_defect: int = 1,
    ) -> None:
        self.categories = dict(categories)
        self.seed, self.size = seed, size
        self.n_train, self.n_test_good, self.n_per_defect = n_train, n_test_good, n_per_defect

    def manifest(self) -> dict:
        """Everything that determines the files (written beside them)."""
        return {
            "version": VERSION,
            "seed": self.seed,
            "size": self.size,
            "n_train": self.n_train,
            "n_test_good": self.n_test_good,
            "n_per_defect": self.n_per_defect,
            "categories": {k: list(v) for k, v in self.categories.items()},
            "defects": list(DEFECTS),
        }


# ----------------------------------------------------------------------------- renderers
def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Bilinearly upsampled uniform noise in [0, 1], (size, size)."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


def _weave(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    yy, xx = _grid(s)
    f = rng.uniform(10, 14)
    v = 0.5 + 0.25 * np.sin(2 * np.pi * f * xx) * np.sin(2 * np.pi * f * yy) + 0.1 * _smooth_noise(rng, s, 8)
    base = np.array([0.55, 0.35, 0.3]) + rng.normal(0, 0.02, 3)
    return v[..., None] * base * 1.4, np.ones((s, s), bool)


def _stripes(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    _, xx = _grid(s)
    warp = 0.05 * _smooth_noise(rng, s, 3)
    v = 0.6 + 0.2 * np.sin(2 * np.pi * rng.uniform(6, 9) * (xx + warp))
    return v[..., None] * np.array([0.8, 0.6, 0.35]), np.ones((s, s), bool)


def _tiles(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    yy, xx = _grid(s)
    n = rng.integers(4, 6)
    grout = (np.mod(xx * n, 1) < 0.08) | (np.mod(yy * n, 1) < 0.08)
    v = np.where(grout, 0.35, 0.75 + 0.05 * _smooth_noise(rng, s, 6))
    return v[..., None] * np.array([0.9, 0.9, 0.95]), np.ones((s, s), bool)


def _disk(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    yy, xx = _grid(s)
    cy, cx = 0.5 + rng.normal(0, 0.02, 2)
    r = np.hypot(yy - cy, xx - cx)
    obj = r < rng.uniform(0.33, 0.38)
    bg = 0.15 + 0.05 * _smooth_noise(rng, s, 4)
    shade = 0.45 + 0.35 * (1 - r / 0.4)
    img = np.where(obj[..., None], shade[..., None] * np.array([0.3, 0.6, 0.4]), bg[..., None] * np.ones(3))
    return img, obj


def _capsule(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    yy, xx = _grid(s)
    ang = rng.uniform(-0.3, 0.3)
    u = (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)
    v = -(xx - 0.5) * np.sin(ang) + (yy - 0.5) * np.cos(ang)
    obj = (np.clip(np.abs(u) - 0.2, 0, None) ** 2 + v**2) < 0.14**2
    speck = rng.random((s, s)) < 0.02
    body = np.where(speck, 0.6, 0.92)
    img = np.where(obj[..., None], body[..., None] * np.array([0.95, 0.9, 0.8]), np.array([0.2, 0.22, 0.25]))
    return img, obj


def _skin(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    n = _smooth_noise(rng, s, 5)
    img = (0.75 + 0.1 * n)[..., None] * np.array([0.95, 0.72, 0.6])
    return img, np.ones((s, s), bool)


def _scan(rng: np.random.Generator, s: int) -> tuple[Array, Array]:
    yy, xx = _grid(s)
    obj = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.34) ** 2 < 1
    tissue = 0.45 + 0.2 * _smooth_noise(rng, s, 10)
    v = np.where(obj, tissue, 0.02)
    return np.repeat(v[..., None], 3, axis=2), obj


RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[Array, Array]]] = {
    "weave": _weave,
    "stripes": _stripes,
    "tiles": _tiles,
    "disk": _disk,
    "capsule": _capsule,
    "skin": _skin,
    "scan": _scan,
}


# ----------------------------------------------------------------------------- defects
def _centre(rng: np.random.Generator, support: Array) -> tuple[float, float]:
    """A random point inside ``support`` (normalised coordinates), away from the border."""
    s = support.shape[0]
    inner = support.copy()
    m = s // 6
    inner[:m], inner[-m:], inner[:, :m], inner[:, -m:] = False, False, False, False
    ys, xs = np.nonzero(inner if inner.any() else support)
    i = rng.integers(len(ys))
    return ys[i] / s, xs[i] / s


def _polyline_mask(s: int, pts: Array, width: float) -> Array:
    """Pixels within ``width`` (normalised) of the polyline through ``pts``."""
    yy, xx = _grid(s)
    out = np.zeros((s, s), bool)
    for (y0, x0), (y1, x1) in itertools.pairwise(pts):
        dy, dx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
        out |= np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)) < width
    return out


def _blob(rng: np.random.Generator, s: int, cy: float, cx: float, r: float) -> Array:
    yy, xx = _grid(s)
    ang = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.25 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.1 * np.sin(5 * ang + rng.uniform(0, 6.3))
    return np.hypot(yy - cy, xx - cx) < r * wobble


def _defect(kind: str, rng: np.random.Generator, img: Array, obj: Array) -> tuple[Array, Array]:
    """Paint one defect on ``img``; returns (image, mask) with mask = changed pixels' support."""
    s = img.shape[0]
    cy, cx = _centre(rng, obj)
    out = img.copy()
    if kind == "scratch":
        a = rng.uniform(0, np.pi)
        half = rng.uniform(0.12, 0.2)
        pts = np.array([[cy - half * np.sin(a), cx - half * np.cos(a)], [cy + half * np.sin(a), cx + half * np.cos(a)]])
        mask = _polyline_mask(s, pts, 0.012)
        out[mask] = 0.97
    elif kind == "hole":
        mask = _blob(rng, s, cy, cx, rng.uniform(0.05, 0.08))
        out[mask] = 0.03
    elif kind == "stain":
        mask = _blob(rng, s, cy, cx, rng.uniform(0.07, 0.11))
        out[mask] = out[mask] * 0.5 + np.array([0.35, 0.25, 0.05])
    elif kind == "crack":
        steps = rng.normal(0, 0.05, (6, 2)).cumsum(0) + [cy, cx]
        mask = _polyline_mask(s, steps, 0.008)
        out[mask] = out[mask] * 0.25
    elif kind == "missing_part":
        mask = _blob(rng, s, cy, cx, rng.uniform(0.09, 0.13)) & obj
        bg = np.median(img[~obj], axis=0) if (~obj).any() else np.array([0.1, 0.1, 0.1])
        out[mask] = bg
    elif kind == "colour_change":
        mask = _blob(rng, s, cy, cx, rng.uniform(0.08, 0.12))
        out[mask] = out[mask][:, [2, 0, 1]] * 0.8 + 0.15
    else:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECTS)}")
    changed = np.abs(_to_uint8(out).astype(int) - _to_uint8(img).astype(int)).max(axis=2) > 0
    return out, mask & changed


def _to_uint8(img: Array) -> Array:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_pair(spec: SynthSpec, category: str, split: str, defect: str, index: int) -> tuple[Array, Array, Array]:
    """The clean image, the same image with the defect, and the defect's mask.

    Returns:
        clean (S, S, 3) uint8, defective (S, S, 3) uint8 (equal to clean for "good"), mask (S, S) bool.
    """
    names = sorted(spec.categories)
    family = spec.categories[category][1]
    split_id = {"train": 0, "test": 1}[split]
    defect_id = 0 if defect == "good" else 1 + DEFECTS.index(defect)
    rng = np.random.default_rng([spec.seed, names.index(category), split_id, defect_id, index])
    img, obj = RENDERERS[family](rng, spec.size)
    img = img + rng.normal(0, 0.01, img.shape)  # sensor noise
    clean = _to_uint8(img)
    if defect == "good":
        return clean, clean, np.zeros(clean.shape[:2], bool)
    out, mask = _defect(defect, rng, img, obj)
    return clean, _to_uint8(out), mask


def render_sample(spec: SynthSpec, category: str, split: str, defect: str, index: int) -> tuple[Array, Array | None]:
    """Render one image (uint8, (S, S, 3)) and its mask (bool, (S, S)), or None for normal images."""
    _, image, mask = render_pair(spec, category, split, defect, index)
    return image, (None if defect == "good" else mask)


# ----------------------------------------------------------------------------- writing
def _save_png(path: Path, array: Array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def write_synth(root: Path, spec: SynthSpec) -> None:
    """Write every image and mask of ``spec`` under ``root`` (which must not exist yet)."""
    for category in sorted(spec.categories):
        base = root / category
        for i in range(spec.n_train):
            _save_png(base / "train" / "good" / f"{i:03d}.png", render_sample(spec, category, "train", "good", i)[0])
        for i in range(spec.n_test_good):
            _save_png(base / "test" / "good" / f"{i:03d}.png", render_sample(spec, category, "test", "good", i)[0])
        for defect in DEFECTS:
            for i in range(spec.n_per_defect):
                img, mask = render_sample(spec, category, "test", defect, i)
                assert mask is not None  # DEFECTS has no "good": every defect image has a mask
                _save_png(base / "test" / defect / f"{i:03d}.png", img)
                _save_png(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    (root / "synth.json").write_text(json.dumps(spec.manifest(), indent=1, sort_keys=True))


def ensure_synth(root: Path, spec: SynthSpec) -> Path:
    """Generate the copy at ``root`` unless an identical one is there; safe for concurrent jobs.

    The files are written to a temporary sibling folder and renamed into place, so a
    reader never sees a half-written copy and two jobs racing leave one complete copy.
    """
    root = Path(root)
    manifest = root / "synth.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == spec.manifest():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write_synth(tmp, spec)
        if root.exists():  # an older or different copy: replace it
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}-old-", dir=root.parent))
            os.replace(root, stale / "copy")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, root)
        logger.info("wrote the synthetic dataset (seed %d) to %s", spec.seed, root)
    except OSError:
        if not (manifest.is_file() and json.loads(manifest.read_text()) == spec.manifest()):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
