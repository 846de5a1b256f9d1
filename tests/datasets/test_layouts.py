"""The shared layout readers: file discovery, folder lookup, MVTec-style and paired-folder records."""

from __future__ import annotations

import pytest
from fakes.common import region, write_image, write_mask, write_text

from zsad_bench.layouts import (
    MaskIndex,
    child_dir,
    descend,
    list_images,
    mvtec_style_records,
    natural_key,
    paired_folder_records,
)


def test_natural_order():
    names = ["10.png", "2.png", "1.png", "a10.jpg", "a9.jpg"]
    assert sorted(names, key=natural_key) == ["1.png", "2.png", "10.png", "a9.jpg", "a10.jpg"]


def test_list_images_any_case_skips_hidden_and_other_files(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.JPEG", "d.bmp", "e.TIF", "f.tiff"):
        write_image(tmp_path / name, 1)
    write_text(tmp_path / "notes.txt", "x")
    write_image(tmp_path / "._a.png", 1)
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JPEG", "d.bmp", "e.TIF", "f.tiff"]
    assert list_images(tmp_path / "absent") == []


def test_child_dir_ignores_case_and_prefers_exact(tmp_path):
    (tmp_path / "Train").mkdir()
    (tmp_path / "Ground Truth").mkdir()
    assert child_dir(tmp_path, "train") == tmp_path / "Train"
    assert child_dir(tmp_path, "missing", "ground truth") == tmp_path / "Ground Truth"
    assert child_dir(tmp_path, "nope") is None
    assert child_dir(tmp_path / "absent", "x") is None


def test_descend_through_wrappers_and_single_children(tmp_path):
    target = tmp_path / "outer" / "Inner" / "data"
    (target / "marker").mkdir(parents=True)
    assert descend(tmp_path / "outer", lambda p: (p / "marker").is_dir(), ("inner",), depth=3) == target
    assert descend(tmp_path / "outer", lambda p: (p / "marker").is_dir(), depth=1) == tmp_path / "outer"


def test_mask_index_by_stem_and_expected_path(tmp_path):
    write_mask(tmp_path / "000_mask.png", region(1))
    write_mask(tmp_path / "001.bmp", region(1))
    index = MaskIndex(tmp_path, ("_mask", ""))
    assert len(index) == 2
    assert index.find("000") == tmp_path / "000_mask.png"
    assert index.find("001") == tmp_path / "001.bmp"
    assert index.lookup(tmp_path / "img" / "002.jpg") == (tmp_path / "002_mask.png", False)
    assert MaskIndex(tmp_path, ("",), default_ext=None).lookup(tmp_path / "9.jpg") == (tmp_path / "9.png", False)
    empty = MaskIndex(tmp_path / "none", ("",), default_ext=None)
    assert empty.lookup(tmp_path / "9.jpg") == (tmp_path / "none" / "9.jpg", False)


def _category(root, normal="good"):
    write_image(root / "cat" / "train" / normal / "000.png", 1)
    write_image(root / "cat" / "test" / normal.upper() / "000.png", 2)
    for i in (0, 1, 10):
        write_image(root / "cat" / "test" / "dent" / f"{i:d}.png", 3 + i)
    write_mask(root / "cat" / "ground_truth" / "dent" / "0_mask.png", region(0))
    write_mask(root / "cat" / "ground_truth" / "dent" / "10_mask.png", region(0))


def test_mvtec_style_records(tmp_path):
    _category(tmp_path)
    test = mvtec_style_records(tmp_path, "cat", "test", "demo")
    assert [(r.defect_type, r.image_path.name, r.label) for r in test] == [
        ("dent", "0.png", 1),
        ("dent", "1.png", 1),
        ("dent", "10.png", 1),
        ("good", "000.png", 0),
    ]
    assert test[1].mask_path == tmp_path / "cat" / "ground_truth" / "dent" / "1_mask.png"  # missing: expected path
    assert not test[1].mask_path.exists()
    assert test[2].mask_path.name == "10_mask.png"
    train = mvtec_style_records(tmp_path, "cat", "train", "demo")
    assert [r.split for r in train] == ["train"]
    assert all(r.mask_path is None for r in mvtec_style_records(tmp_path, "cat", "test", "demo", has_masks=False))


def test_mvtec_style_missing_folders(tmp_path):
    _category(tmp_path)
    with pytest.raises(FileNotFoundError, match="category 'other' of demo"):
        mvtec_style_records(tmp_path, "other", "test", "demo")
    (tmp_path / "cat" / "train" / "good" / "000.png").unlink()
    (tmp_path / "cat" / "train" / "good").rmdir()
    (tmp_path / "cat" / "train").rmdir()
    assert mvtec_style_records(tmp_path, "cat", "train", "demo") == []
    with pytest.raises(FileNotFoundError, match="train split"):
        mvtec_style_records(tmp_path, "cat", "train", "demo", required_splits=("train",))


def test_mvtec_style_custom_normal_folder_and_category_dir(tmp_path):
    _category(tmp_path / "x", normal="ok")
    recs = mvtec_style_records(tmp_path / "x", "renamed", "test", "demo", normal_dirs=("ok",), category_dir="cat")
    assert {r.category for r in recs} == {"renamed"}
    assert sum(r.label == 0 for r in recs) == 1


def test_paired_folder_records(tmp_path):
    for stem in ("2", "1"):
        write_image(tmp_path / "img" / f"{stem}.jpg", 1)
    write_mask(tmp_path / "gt" / "1_seg.png", region(1))
    recs = paired_folder_records(tmp_path / "img", tmp_path / "gt", "c", "test", "demo", "_seg")
    assert [r.image_path.name for r in recs] == ["1.jpg", "2.jpg"]
    assert recs[0].mask_path == tmp_path / "gt" / "1_seg.png"
    assert recs[1].mask_path == tmp_path / "gt" / "2_seg.png"  # expected (the folder's usual extension), missing
    assert all(r.label == 1 for r in recs)
    assert all(r.mask_path is None for r in paired_folder_records(tmp_path / "img", None, "c", "test", "demo"))
