"""Every registered loader on a fake copy in its distributed layout: counts, labels, mask pairing, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakes.writers import WRITERS

from zsad_bench.imageio import load_image, load_mask
from zsad_bench.registry import DATASETS

LEAD_OWNED = {"synth", "synth_aux"}  # tested in tests/core/test_synth.py


def test_every_registered_dataset_has_a_fake_writer():
    assert set(DATASETS.list()) - LEAD_OWNED == set(WRITERS)
    assert len(WRITERS) == 24


@pytest.fixture(params=sorted(WRITERS))
def written(request, tmp_path):
    name = request.param
    fake = WRITERS[name](tmp_path / name)
    return name, DATASETS.get(name)(), fake


def _all_records(family, fake):
    info = family.info()
    return {(cat, split): family.records(fake.root, cat, split) for cat in sorted(fake.counts) for split in info.splits}


def test_categories_match_the_copy(written):
    _name, family, fake = written
    found = family.available_categories(fake.root)
    assert set(fake.counts) <= set(found)
    if family.info().categories:
        assert set(found) == set(family.info().categories)


MULTI_CATEGORY = sorted(n for n in WRITERS if len(DATASETS.get(n).info().categories) > 2)


@pytest.mark.parametrize("name", MULTI_CATEGORY)
def test_a_category_missing_from_the_copy_is_named(tmp_path, name):
    fake = WRITERS[name](tmp_path / name)  # two categories only, like an incomplete download
    family = DATASETS.get(name)()
    absent = [c for c in family.info().categories if c not in fake.counts]
    with pytest.raises(FileNotFoundError, match=absent[0]):
        family.records(fake.root, absent[0], "test")


def test_counts_and_labels_match_what_was_written(written):
    name, family, fake = written
    for (cat, split), records in _all_records(family, fake).items():
        got = (sum(r.label == 0 for r in records), sum(r.label == 1 for r in records))
        assert got == fake.expected(cat, split), (name, cat, split)
        for r in records:
            assert r.dataset == name
            assert r.category == cat
            assert r.split == split
            assert r.label in (0, 1)
            assert (r.defect_type == "good") == (r.label == 0)


def test_masks_pair_with_their_own_image(written):
    _name, family, fake = written
    records = [r for rs in _all_records(family, fake).values() for r in rs]
    for r in records:
        if r.label == 0:
            assert r.mask_path is None
        elif r.image_path in fake.masks:
            assert r.mask_path == fake.masks[r.image_path], r.image_path
    paired = [r for r in records if r.image_path in fake.masks]
    assert len(paired) == len(fake.masks)  # every written mask is found


def test_masks_decode_to_the_written_region(written):
    _name, family, fake = written
    threshold = family.info().mask_threshold
    for r in (r for rs in _all_records(family, fake).values() for r in rs if r.mask_path in fake.regions):
        np.testing.assert_array_equal(load_mask(r.mask_path, threshold), fake.regions[r.mask_path])


def test_every_image_decodes_to_rgb(written):
    _name, family, fake = written
    for records in _all_records(family, fake).values():
        for r in records:
            img = load_image(r.image_path)
            assert img.mode == "RGB"
            assert r.image_path.is_file()


def test_records_are_deterministic_and_sorted_within_folders(written):
    name, family, fake = written
    first = _all_records(family, fake)
    again = _all_records(DATASETS.get(name)(), fake)
    assert first == again
    for records in first.values():
        assert len({r.image_path for r in records}) == len(records)


def test_missing_root_says_where_to_get_the_data(written, tmp_path):
    name, family, _fake = written
    info = family.info()
    missing = tmp_path / "nowhere" / name
    with pytest.raises(FileNotFoundError) as err:
        family.records(missing, (info.categories or ("x",))[0], "test")
    msg = str(err.value)
    assert str(missing) in msg
    assert info.download.page in msg
    assert "paths.data_root" in msg


def test_unknown_category_and_split_are_rejected(written):
    _name, family, fake = written
    cat = family.available_categories(fake.root)[0]
    with pytest.raises(KeyError, match="no category"):
        family.records(fake.root, "no_such_category", "test")
    with pytest.raises(ValueError, match="no split"):
        family.records(fake.root, cat, "holdout")


def test_info_is_complete(written):
    name, family, _fake = written
    info = family.info()
    assert info.name == name
    assert info.domain in ("industrial", "medical")
    assert info.modality
    assert set(info.expected) <= set(info.categories)
    assert info.default_aux is None or info.default_aux in DATASETS
    assert all(o in DATASETS for o in info.overlaps)
    if info.categories:
        assert info.download.page
    if info.categories and name != "real_iad":  # Real-IAD's counts live in its JSON split files
        assert info.expected_counts("test") is not None
    if not info.has_image_labels:
        assert info.expected_counts("test")[0] == 0
    assert isinstance(Path(info.subdir or name), Path)
