"""The layout quirks known to break loaders, one test each (datasets.md §0.3 and the per-dataset sections)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from fakes import generic, industrial, medical
from fakes.common import write_mask, write_text
from PIL import Image

from zsad_bench.datasets.dagm import read_labels_txt
from zsad_bench.imageio import load_image, load_mask, read_array
from zsad_bench.registry import DATASETS


def recs(name, root, category, split="test", **options):
    return DATASETS.get(name)(**options).records(root, category, split)


def test_mvtec_grayscale_category_loads_as_rgb(tmp_path):
    fake = industrial.write_mvtec_ad(tmp_path / "mvtec_ad")
    r = recs("mvtec_ad", fake.root, "grid")[0]
    assert Image.open(r.image_path).mode == "L"
    assert load_image(r.image_path).mode == "RGB"


def test_mvtec_pairs_by_stem_despite_an_extra_mask(tmp_path):
    fake = industrial.write_mvtec_ad(tmp_path / "mvtec_ad")
    broken = [r for r in recs("mvtec_ad", fake.root, "bottle") if r.defect_type == "broken_large"]
    assert [r.mask_path.name for r in broken] == ["000_mask.png", "001_mask.png"]  # not 000a_mask.png


def test_mvtec_missing_mask_keeps_the_expected_path(tmp_path, caplog):
    fake = industrial.write_mvtec_ad(tmp_path / "mvtec_ad")
    gone = fake.root / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    gone.unlink()
    with caplog.at_level("WARNING"):
        r = next(r for r in recs("mvtec_ad", fake.root, "bottle") if r.defect_type == "contamination")
    assert r.label == 1
    assert r.mask_path == gone
    assert "have no mask" in caplog.text


def test_mvtec_archive_wrapper_folder_is_found(tmp_path):
    fake = industrial.write_mvtec_ad(tmp_path / "inner")
    root = tmp_path / "mvtec_ad"
    root.mkdir()
    shutil.move(fake.root, root / "mvtec_anomaly_detection")
    assert len(recs("mvtec_ad", root, "bottle")) == sum(fake.expected("bottle", "test"))


def test_visa_class_id_masks(tmp_path):
    fake = industrial.write_visa(tmp_path / "visa")
    anomalies = [r for r in recs("visa", fake.root, "pcb1") if r.label]
    assert [r.image_path.suffix for r in anomalies] == [".JPG"] * 3
    values = {int(read_array(r.mask_path).max()) for r in anomalies}
    assert values == {1, 2, 3}  # class ids, not 255
    assert all(load_mask(r.mask_path).any() for r in anomalies)


def test_visa_without_split_csv_explains_the_fix(tmp_path):
    fake = industrial.write_visa(tmp_path / "visa")
    (fake.root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(FileNotFoundError, match="spot-diff"):
        recs("visa", fake.root, "candle")


def test_visa_converted_1cls_layout_is_read(tmp_path):
    root = tmp_path / "visa"
    fake = industrial._mvtec_category
    from fakes.common import FakeCopy

    copy = FakeCopy(root)
    fake(copy, root / "1cls" / "candle", "candle", {"bad": 2}, mask_suffix="")
    got = recs("visa", root, "candle")
    assert (sum(r.label == 0 for r in got), sum(r.label for r in got)) == copy.expected("candle", "test")
    assert all(r.mask_path is not None and r.mask_path.is_file() for r in got if r.label)


def test_btad_mixes_bmp_and_png(tmp_path):
    fake = industrial.write_btad(tmp_path / "btad")
    by_cat = {c: [r for r in recs("btad", fake.root, c) if r.label] for c in ("01", "03")}
    assert {r.image_path.suffix for r in by_cat["01"]} == {".bmp"}
    assert {r.mask_path.suffix for r in by_cat["01"]} == {".png"}
    assert {r.mask_path.suffix for r in by_cat["03"]} == {".bmp"}
    assert all(r.mask_path.stem == r.image_path.stem for rs in by_cat.values() for r in rs)
    assert {r.defect_type for r in recs("btad", fake.root, "01")} == {"good", "ko"}


def test_mpdd_upper_case_extension(tmp_path):
    fake = industrial.write_mpdd(tmp_path / "mpdd")
    assert {r.image_path.suffix for r in recs("mpdd", fake.root, "tubes")} == {".PNG"}


def test_mvtec_3d_reads_rgb_only_with_class_coded_masks_and_validation(tmp_path):
    fake = industrial.write_mvtec_3d(tmp_path / "mvtec_3d")
    test = recs("mvtec_3d", fake.root, "bagel")
    assert all(r.image_path.parent.name == "rgb" for r in test)
    combined = next(r for r in test if r.defect_type == "combined")
    assert set(np.unique(read_array(combined.mask_path))) == {0, 253, 255}
    assert all(r.mask_path is None for r in test if r.label == 0)  # test/good/gt exists but is ignored
    assert len(recs("mvtec_3d", fake.root, "bagel", "validation")) == sum(fake.expected("bagel", "validation"))


def test_ksdd_labels_come_from_mask_content(tmp_path):
    fake = industrial.write_ksdd(tmp_path / "ksdd")
    got = recs("ksdd", fake.root, "electrical_commutators")
    defective = sorted(f"{r.image_path.parent.name}/{r.image_path.name}" for r in got if r.label)
    assert defective == ["kos02/Part1.jpg", "kos03/Part0.jpg"]
    assert all(r.mask_path.name.endswith("_label.bmp") for r in got if r.label)
    assert recs("ksdd", fake.root, "electrical_commutators", "train") == []


def test_ksdd_prepared_copy_with_a_space_in_the_class_folder(tmp_path):
    fake = industrial.write_ksdd_prepared(tmp_path / "ksdd")
    got = recs("ksdd", fake.root, "electrical_commutators")
    assert (sum(r.label == 0 for r in got), sum(r.label for r in got)) == fake.expected(
        "electrical_commutators", "test"
    )
    assert all(" " in r.image_path.parent.parent.parent.name for r in got)


def test_ksdd2_masks_beside_images_are_not_images(tmp_path):
    fake = industrial.write_ksdd2(tmp_path / "ksdd2")
    got = recs("ksdd2", fake.root, "ksdd2", "train") + recs("ksdd2", fake.root, "ksdd2")
    assert not any(r.image_path.stem.endswith("_GT") for r in got)


def test_dagm_nested_class_folder_upper_case_png_and_labels_txt(tmp_path):
    fake = industrial.write_dagm(tmp_path / "dagm")
    c2 = recs("dagm", fake.root, "Class2")
    assert all(r.image_path.parent.parent.name == "Class2" == r.image_path.parent.parent.parent.name for r in c2)
    assert {r.image_path.suffix for r in c2} == {".PNG"}
    assert [r.label for r in c2] == [0, 1, 0, 1]


def test_dagm_labels_txt_decides_over_a_stray_label_file(tmp_path):
    fake = industrial.write_dagm(tmp_path / "dagm")
    label_dir = fake.root / "DAGM_KaggleUpload" / "Class1" / "Test" / "Label"
    write_mask(label_dir / "0001_label.PNG", np.ones((16, 16), bool))  # flag 0 in Labels.txt
    assert recs("dagm", fake.root, "Class1")[0].label == 0
    (label_dir / "Labels.txt").unlink()  # without the table, a label image means anomalous
    assert recs("dagm", fake.root, "Class1")[0].label == 1


def test_dagm_labels_txt_parsing(tmp_path):
    path = write_text(tmp_path / "Labels.txt", "1\n1\t0\t0001.PNG\t0\n2\t1\t0002.PNG\t0\t0002_label.PNG\n\n")
    assert read_labels_txt(path) == {"0001.png": (0, ""), "0002.png": (1, "0002_label.PNG")}
    write_text(path, "1\n1\tx\t0001.PNG\n")
    with pytest.raises(ValueError, match=r"Labels.txt:2"):
        read_labels_txt(path)


def test_real_iad_masks_come_from_json_and_resolution_option(tmp_path):
    fake = industrial.write_real_iad(tmp_path / "real_iad")
    got = recs("real_iad", fake.root, "audiojack")
    assert {r.defect_type for r in got} == {"good", "AK", "QS"}
    assert all(r.mask_path.suffix == ".png" for r in got if r.label)
    with pytest.raises(FileNotFoundError, match="realiad_512"):
        recs("real_iad", fake.root, "audiojack", resolution="512")
    with pytest.raises(ValueError, match="resolution"):
        DATASETS.get("real_iad")(resolution="999")


def test_headct_header_with_a_leading_space(tmp_path):
    fake = medical.write_headct(tmp_path / "headct")
    assert "id, hemorrhage" in (fake.root / "labels.csv").read_text()
    got = recs("headct", fake.root, "brain")
    assert [r.image_path.parent.parent.name for r in got] == ["head_ct"] * 6
    assert recs("headct", fake.root, "brain", "train") == []


def test_brainmri_reads_one_copy_of_the_duplicate_folders(tmp_path):
    fake = medical.write_brainmri(tmp_path / "brainmri")
    got = recs("brainmri", fake.root, "brain")
    assert all("brain_tumor_dataset" in r.image_path.parts for r in got)
    assert {r.image_path.name for r in got} >= {"1 no.jpeg", "N2.JPG", "Y 4.jpeg"}


def test_br35h_ignores_pred_and_mask_rcnn_folders(tmp_path):
    fake = medical.write_br35h(tmp_path / "br35h")
    got = recs("br35h", fake.root, "brain")
    assert {r.image_path.parent.name for r in got} == {"no", "yes"}


@pytest.mark.parametrize("release", ["current", "early"])
def test_covid_normal_folder_case_and_space_in_class_name(tmp_path, release):
    fake = medical.write_covid19(tmp_path / "covid19", release)
    got = recs("covid19", fake.root, "chest")
    assert (sum(r.label == 0 for r in got), sum(r.label for r in got)) == fake.expected("chest", "test")
    assert "Viral Pneumonia" in {r.defect_type for r in got}
    assert not any(r.image_path.parent.name == "masks" for r in got)


def test_covid_anomalous_classes_option(tmp_path):
    fake = medical.write_covid19(tmp_path / "covid19")
    got = recs("covid19", fake.root, "chest", anomalous_classes=["COVID"])
    assert {r.defect_type for r in got} == {"good", "COVID"}


def test_isic_pairs_segmentation_masks_and_skips_text_files(tmp_path):
    fake = medical.write_isic2016(tmp_path / "isic2016")
    got = recs("isic2016", fake.root, "skin")
    assert [r.image_path.name for r in got] == ["ISIC_0000001.jpg", "ISIC_0000009.jpg", "ISIC_0000030.jpg"]
    assert all(r.mask_path.name == f"{r.image_path.stem}_Segmentation.png" for r in got)


def test_clinicdb_tiffs_pillow_cannot_open(tmp_path):
    from PIL import UnidentifiedImageError

    fake = medical.write_clinicdb(tmp_path / "clinicdb")
    r = recs("clinicdb", fake.root, "colon")[0]
    assert r.mask_path.parent.name == "Ground Truth"
    with pytest.raises(UnidentifiedImageError):
        Image.open(r.image_path)
    assert load_image(r.image_path).size == (16, 16)


@pytest.mark.parametrize("name", ["kvasir", "tn3k", "endo"])
def test_jpeg_masks_are_thresholded(tmp_path, name):
    fake = getattr(medical, f"write_{name}")(tmp_path / name)
    info = DATASETS.get(name).info()
    assert info.mask_threshold == 127
    r = recs(name, fake.root, info.categories[0])[0]
    assert r.mask_path.suffix == ".jpg"
    assert load_mask(r.mask_path, 0).sum() > load_mask(r.mask_path, info.mask_threshold).sum()


def test_tn3k_numeric_order_inside_a_folder_with_a_space(tmp_path):
    fake = medical.write_tn3k(tmp_path / "tn3k")
    got = recs("tn3k", fake.root, "thyroid")
    assert [r.image_path.stem for r in got] == ["1", "2", "10"]
    assert "Thyroid Dataset" in got[0].image_path.parts


@pytest.mark.parametrize("variant", ["mvfa", "label", "swapped", "resc"])
def test_bmad_folder_variants(tmp_path, variant):
    fake = medical.write_liverct(tmp_path / "liverct", variant)
    for split in ("test", "validation", "train"):
        got = recs("liverct", fake.root, "liver", split)
        assert (sum(r.label == 0 for r in got), sum(r.label for r in got)) == fake.expected("liver", split)
        assert all(r.mask_path.is_file() and r.mask_path.name == r.image_path.name for r in got if r.label)


def test_meta_json_relative_absolute_and_title_case_phases(tmp_path):
    fake = generic.write_meta_json(tmp_path / "meta", phase_case="title")
    family = DATASETS.get("meta_json")()
    assert family.available_categories(fake.root) == ["bottle", "colon"]
    colon = family.records(fake.root, "colon", "test")
    assert all(r.image_path.is_file() for r in colon)
    assert colon[-1].mask_path is None  # anomalous record with mask_path ''
    assert family.records(fake.root, "bottle", "train") == []


def test_meta_json_bad_record_names_the_file(tmp_path):
    fake = generic.write_meta_json(tmp_path / "meta")
    write_text(fake.root / "meta.json", '{"test": {"bottle": [{"mask_path": ""}]}}')
    with pytest.raises(ValueError, match=r"meta.json: test/bottle\[0\]"):
        DATASETS.get("meta_json")().records(fake.root, "bottle", "test")


def test_folder_categories_with_a_space_and_optional_masks(tmp_path):
    fake = generic.write_folder(tmp_path / "mine")
    family = DATASETS.get("folder")()
    assert family.available_categories(fake.root) == ["my part", "widget"]
    assert all(r.mask_path is None for r in family.records(fake.root, "my part", "test"))
    single = family.records(fake.root / "widget", "widget", "test")  # the root itself is one category
    assert len(single) == sum(fake.expected("widget", "test"))


def test_folder_in_mvtec_layout(tmp_path):
    fake = industrial.write_mvtec_ad(tmp_path / "mvtec_ad")
    got = DATASETS.get("folder")().records(fake.root, "bottle", "train")
    assert len(got) == fake.expected("bottle", "train")[0]
