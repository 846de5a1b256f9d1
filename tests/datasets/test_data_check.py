"""``zsad-bench data check|info|list`` on fake copies: a good copy passes, each kind of damage is named."""

from __future__ import annotations

import pytest
from fakes import generic, industrial, medical
from fakes.common import corrupt, truncate, write_mask
from fakes.writers import WRITERS

from zsad_bench.commands.data import build_family, check_dataset, dataset_root, main, parse_overrides
from zsad_bench.registry import DATASETS


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_check_passes_on_a_good_copy(tmp_path, capsys):
    industrial.write_mvtec_ad(tmp_path / "mvtec_ad")
    code, out = run(capsys, "check", "dataset=mvtec_ad", f"paths.data_root={tmp_path}", "categories=bottle,grid")
    assert code == 0, out
    assert "OK:" in out
    assert "bottle" in out


def test_missing_categories_break_the_copy(tmp_path, capsys):
    industrial.write_mpdd(tmp_path / "mpdd")  # 2 of 6 categories, as in AnomalyCLIP issue #5
    code, out = run(capsys, "check", "dataset=mpdd", f"paths.data_root={tmp_path}")
    assert code == 1
    assert "bracket_brown" in out
    assert "BROKEN" in out


@pytest.fixture
def broken(tmp_path):
    fake = industrial.write_mvtec_ad(tmp_path / "mvtec_ad")
    test = fake.root / "bottle" / "test"
    damage = {
        "image unreadable": corrupt(test / "good" / "000.png"),
        "image truncated": truncate(test / "broken_large" / "001.png"),
        "mask missing": fake.root / "bottle" / "ground_truth" / "contamination" / "000_mask.png",
        "mask size": fake.root / "bottle" / "ground_truth" / "broken_large" / "000_mask.png",
    }
    damage["mask missing"].unlink()
    write_mask(damage["mask size"], fake.regions[damage["mask size"]].repeat(2, axis=0))  # 32x16 for a 16x16 image
    return fake, damage


def test_each_damage_is_reported_with_its_file(broken):
    fake, damage = broken
    report = check_dataset(DATASETS.get("mvtec_ad")(), fake.root, categories=["bottle"])
    assert not report.ok()
    found = {p.kind: p for p in report.by_severity("error")}
    for kind, path in damage.items():
        assert kind in found, (kind, report.problems)
        assert found[kind].path == path
        assert str(path) in found[kind].message
    assert "truncated" in found["image truncated"].message
    assert "file not found" in found["mask missing"].message
    assert "32" in found["mask size"].message


def test_broken_copy_exits_non_zero_and_names_files(broken, capsys, tmp_path):
    fake, damage = broken
    code, out = run(capsys, "check", "dataset=mvtec_ad", f"dataset.root={fake.root}", "categories=bottle", "show=50")
    assert code == 1
    flat = out.replace("\n", "")
    for path in damage.values():
        assert path.name in flat


def test_quick_check_finds_missing_and_resized_masks_without_decoding(broken):
    fake, _damage = broken
    report = check_dataset(DATASETS.get("mvtec_ad")(), fake.root, categories=["bottle"], quick=True)
    kinds = {p.kind for p in report.by_severity("error")}
    assert {"mask missing", "mask size", "image unreadable"} <= kinds
    assert "image truncated" not in kinds  # the header of a truncated file still reads


def test_count_mismatch_is_a_warning_unless_strict(tmp_path, capsys):
    fake = medical.write_headct(tmp_path / "headct")  # 6 images where 200 are published
    code, out = run(capsys, "check", "dataset=headct", f"dataset.root={fake.root}")
    assert code == 0
    assert "published 100 / 100" in out
    code, _ = run(capsys, "check", "dataset=headct", f"dataset.root={fake.root}", "strict=true")
    assert code == 1


def test_mask_of_another_size_is_a_note_where_allowed(tmp_path):
    fake = generic.write_folder(tmp_path / "mine")
    report = check_dataset(DATASETS.get("folder")(), fake.root)
    assert report.ok()
    notes = [p for p in report.problems if p.kind == "mask size"]
    assert [p.severity for p in notes] == ["note"]
    assert notes[0].path == fake.notes["resized_mask"]


def test_missing_root_is_one_clear_error(tmp_path, capsys):
    code, out = run(capsys, "check", "dataset=visa", f"paths.data_root={tmp_path}")
    assert code == 1
    flat = out.replace("\n", "")
    assert "VisA_20220922.tar" in flat
    assert str(tmp_path / "visa") in flat


@pytest.mark.parametrize("name", ["dagm", "clinicdb", "kvasir", "liverct", "real_iad", "meta_json"])
def test_check_passes_on_other_fakes(tmp_path, name):
    fake = WRITERS[name](tmp_path / name)
    family = DATASETS.get(name)()
    report = check_dataset(family, fake.root, categories=sorted(fake.counts))
    assert report.ok(), report.problems
    assert report.n_images == sum(sum(v) for c in fake.counts.values() for v in c.values())


def test_check_on_synth(tmp_path, capsys):
    code, out = run(capsys, "check", "dataset=synth", f"paths.data_root={tmp_path}", "workers=2")
    assert code == 0, out
    assert (tmp_path / "synth").is_dir()


def test_info_shows_download_and_layout(capsys):
    code, out = run(capsys, "info", "btad")
    assert code == 0
    assert "btad.zip" in out
    assert "461c9387" in out
    assert "451/290" in out
    assert "<paths.data_root>/btad" in out


def test_list_shows_every_dataset(capsys):
    code, out = run(capsys, "list")
    assert code == 0
    for name in ("mvtec_ad", "tn3k", "meta_json"):
        assert name in out


def test_usage_errors(capsys):
    assert run(capsys, "check")[0] == 2
    assert run(capsys, "check", "dataset=nosuch")[0] == 2
    assert run(capsys, "info")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "--help")[0] == 0
    code, out = run(capsys, "check", "dataset=real_iad", "dataset.nosuch=1")
    assert code == 2
    assert "resolution" in out


def test_overrides_and_root_resolution(tmp_path, monkeypatch):
    ov = parse_overrides(["dataset=visa", "+paths.data_root=/d"])
    assert ov == {"dataset": "visa", "paths.data_root": "/d"}
    info = DATASETS.get("visa").info()
    assert str(dataset_root(info, ov)) == "/d/visa"
    assert dataset_root(info, {"dataset.root": str(tmp_path)}) == tmp_path
    monkeypatch.setenv("ZSAD_DATA", str(tmp_path))
    assert dataset_root(info, {}) == tmp_path / "visa"
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["visa"])
    assert build_family("real_iad", {"resolution": 512, "root": "x"}).resolution == "512"
