"""The embedded synthetic dataset: determinism, layout, masks aligned with the defects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsad_bench.synth import DEFECTS, TEST_CATEGORIES, SynthSpec, ensure_synth, render_pair


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    spec = SynthSpec(TEST_CATEGORIES, seed=3)
    a = digest(ensure_synth(tmp_path / "a" / "synth", spec))
    b = digest(ensure_synth(tmp_path / "b" / "synth", SynthSpec(TEST_CATEGORIES, seed=3)))
    assert a == b
    assert len(a) > 100
    other = digest(ensure_synth(tmp_path / "c" / "synth", SynthSpec(TEST_CATEGORIES, seed=4)))
    assert other != a


def test_layout_is_mvtec_ad(tmp_path):
    root = ensure_synth(tmp_path / "synth", SynthSpec(TEST_CATEGORIES))
    for cat in TEST_CATEGORIES:
        assert len(list((root / cat / "train" / "good").glob("*.png"))) == 6
        assert len(list((root / cat / "test" / "good").glob("*.png"))) == 4
        for defect in DEFECTS:
            img = root / cat / "test" / defect / "000.png"
            mask = root / cat / "ground_truth" / defect / "000_mask.png"
            assert img.is_file()
            assert mask.is_file()
            assert Image.open(mask).size == Image.open(img).size
            assert set(np.unique(np.asarray(Image.open(mask)))) == {0, 255}


@pytest.mark.parametrize("category", sorted(TEST_CATEGORIES))
@pytest.mark.parametrize("defect", DEFECTS)
def test_mask_is_exactly_the_changed_pixels(category, defect):
    clean, bad, mask = render_pair(SynthSpec(TEST_CATEGORIES), category, "test", defect, 0)
    changed = np.abs(bad.astype(int) - clean.astype(int)).max(axis=2) > 0
    assert mask.sum() >= 20, "every defect must be visible"
    np.testing.assert_array_equal(changed, mask)


def test_good_images_have_no_changes():
    clean, same, mask = render_pair(SynthSpec(TEST_CATEGORIES), "bottle_like", "test", "good", 1)
    np.testing.assert_array_equal(clean, same)
    assert not mask.any()


def test_existing_identical_copy_is_kept(tmp_path):
    spec = SynthSpec(TEST_CATEGORIES)
    root = ensure_synth(tmp_path / "synth", spec)
    marker = root / "carpet_like" / "train" / "good" / "000.png"
    before = marker.stat().st_mtime_ns
    ensure_synth(root, spec)
    assert marker.stat().st_mtime_ns == before
