"""Fake copies of the medical datasets in their exact distributed layouts, quirks included."""

from __future__ import annotations

from pathlib import Path

from fakes.common import (
    FakeCopy,
    pixels,
    region,
    write_image,
    write_json,
    write_mask,
    write_text,
    write_tiff_pillow_cannot_open,
)

_seed = iter(range(500_000, 1_000_000))


def write_headct(root: Path) -> FakeCopy:
    """HeadCT: ``labels.csv`` with the ``' hemorrhage'`` header and ``head_ct/head_ct/NNN.png``."""
    fake = FakeCopy(root)
    rows = ["id, hemorrhage"]
    for i in range(6):
        label = int(i % 2 == 0)
        img = write_image(root / "head_ct" / "head_ct" / f"{i:03d}.png", next(_seed), mode="L", size=(18, 14))
        rows.append(f"{i},{label}")
        fake.add("brain", "test", label, img)
    write_text(root / "labels.csv", "\n".join(rows) + "\n")
    return fake


def write_brainmri(root: Path) -> FakeCopy:
    """BrainMRI: ``brain_tumor_dataset/{no,yes}`` plus the duplicate top-level ``no/``, ``yes/``; odd file names."""
    fake = FakeCopy(root)
    names = {"no": ("1 no.jpeg", "N2.JPG", "no 3.jpg"), "yes": ("Y1.jpg", "Y2.png", "y3.JPG", "Y 4.jpeg")}
    for top in (root / "brain_tumor_dataset", root):
        for cls, files in names.items():
            for f in files:
                img = write_image(top / cls / f, next(_seed))
                if top != root:
                    fake.add("brain", "test", int(cls == "yes"), img)
    return fake


def write_br35h(root: Path) -> FakeCopy:
    """Br35H: ``no/``, ``yes/`` and the extra ``pred/`` and ``Br35H-Mask-RCNN/`` folders that must be ignored."""
    fake = FakeCopy(root)
    for cls, prefix in (("no", "no"), ("yes", "y")):
        for i in range(3):
            fake.add("brain", "test", int(cls == "yes"), write_image(root / cls / f"{prefix}{i}.jpg", next(_seed)))
    for i in range(2):
        write_image(root / "pred" / f"pred{i}.jpg", next(_seed))
    write_image(root / "Br35H-Mask-RCNN" / "TRAIN" / "y100.jpg", next(_seed))
    write_json(root / "Br35H-Mask-RCNN" / "annotations_train.json", {"images": []})
    return fake


def write_covid19(root: Path, release: str = "current") -> FakeCopy:
    """COVID-19 Radiography, current release (``Normal``, ``Viral Pneumonia``, images/ + masks/) or the early one."""
    fake = FakeCopy(root)
    if release == "current":
        base = root / "COVID-19_Radiography_Dataset"
        for cls, n in (("COVID", 2), ("Normal", 3), ("Lung_Opacity", 1), ("Viral Pneumonia", 2)):
            for i in range(n):
                s = next(_seed)
                img = write_image(base / cls / "images" / f"{cls}-{i + 1}.png", s, mode="L")
                write_mask(base / cls / "masks" / f"{cls}-{i + 1}.png", region(s))  # lung masks: ignored
                fake.add("chest", "test", int(cls != "Normal"), img)
            write_text(base / f"{cls}.metadata.xlsx", "not a spreadsheet")
        write_text(base / "README.md.txt", "COVID-19 Radiography Database\n")
    else:
        for cls, n in (("COVID", 2), ("NORMAL", 2), ("Viral Pneumonia", 1)):
            for i in range(n):
                img = write_image(root / cls / f"{cls} ({i + 1}).png", next(_seed), mode="L")
                fake.add("chest", "test", int(cls != "NORMAL"), img)
    return fake


def _paired(fake: FakeCopy, images: Path, masks: Path, category: str, split: str, names: list[str], **kw) -> None:
    """Lesion images ``images/<name><img_ext>`` and masks ``masks/<name><suffix><mask_ext>``."""
    img_ext, mask_ext, suffix = kw.get("img_ext", ".png"), kw.get("mask_ext", ".png"), kw.get("suffix", "")
    for name in names:
        s = next(_seed)
        img = write_image(images / f"{name}{img_ext}", s)
        mask = write_mask(masks / f"{name}{suffix}{mask_ext}", region(s))
        fake.regions[mask] = region(s)
        fake.add(category, split, 1, img, mask)


def write_isic2016(root: Path) -> FakeCopy:
    """ISIC 2016 part 1: ``..._Test_Data/ISIC_#######.jpg`` + ``..._Test_GroundTruth/<stem>_Segmentation.png``.

    The image folders also hold text files (attribution, licence) that are not images.
    """
    fake = FakeCopy(root)
    for split, tag in (("test", "Test"), ("train", "Training")):
        names = [f"ISIC_{n:07d}" for n in ((9, 1, 30) if split == "test" else (2, 4))]
        d, g = root / f"ISBI2016_ISIC_Part1_{tag}_Data", root / f"ISBI2016_ISIC_Part1_{tag}_GroundTruth"
        _paired(fake, d, g, "skin", split, names, img_ext=".jpg", suffix="_Segmentation")
        write_text(d / "ATTRIBUTION.txt", "ISIC Archive\n")
        write_text(d / "LICENSE.txt", "CC-0\n")
    return fake


def write_clinicdb(root: Path) -> FakeCopy:
    """CVC-ClinicDB: ``Original/<n>.tif`` and ``Ground Truth/<n>.tif``: float TIFFs that Pillow cannot open."""
    fake = FakeCopy(root)
    for n in (1, 2, 10):
        s = next(_seed)
        img = write_tiff_pillow_cannot_open(root / "Original" / f"{n}.tif", pixels(s).astype(float))
        mask = write_tiff_pillow_cannot_open(root / "Ground Truth" / f"{n}.tif", region(s) * 255.0)
        fake.regions[mask] = region(s)
        fake.add("colon", "test", 1, img, mask)
    write_text(root / "README.txt", "CVC-ClinicDB\n")
    return fake


def write_colondb(root: Path) -> FakeCopy:
    """CVC-ColonDB as in the polyp benchmarks: ``CVC-ColonDB/{images,masks}/<n>.png``."""
    fake = FakeCopy(root)
    base = root / "CVC-ColonDB"
    _paired(fake, base / "images", base / "masks", "colon", "test", ["1", "2", "3"])
    return fake


def write_kvasir(root: Path) -> FakeCopy:
    """Kvasir-SEG: ``Kvasir-SEG/{images,masks}/*.jpg`` (JPEG masks) and ``kavsir_bboxes.json``."""
    fake = FakeCopy(root)
    base = root / "Kvasir-SEG"
    names = ["cju0qkwl35piu0993l0dewei2", "cju0roawvklrq0799vmjorwfv", "cju0s690hkp960855tjuaqvv0"]
    _paired(fake, base / "images", base / "masks", "colon", "test", names, img_ext=".jpg", mask_ext=".jpg")
    write_json(base / "kavsir_bboxes.json", {})
    return fake


def write_endo(root: Path) -> FakeCopy:
    """EndoTect 2020 segmentation test set: ``images/`` + ``masks/`` (JPEG)."""
    fake = FakeCopy(root)
    base = root / "EndoTect_2020_Segmentation_Test_Dataset"
    names = ["0a1b2c", "3d4e5f"]
    _paired(fake, base / "images", base / "masks", "colon", "test", names, img_ext=".jpg", mask_ext=".jpg")
    return fake


def write_tn3k(root: Path) -> FakeCopy:
    """TN3K inside ``Thyroid Dataset/tn3k/``: numeric names (2 before 10), JPEG masks, fold JSON files."""
    fake = FakeCopy(root)
    base = root / "Thyroid Dataset" / "tn3k"
    kw = {"img_ext": ".jpg", "mask_ext": ".jpg"}
    _paired(fake, base / "test-image", base / "test-mask", "thyroid", "test", ["1", "10", "2"], **kw)
    _paired(fake, base / "trainval-image", base / "trainval-mask", "thyroid", "train", ["0", "3"], **kw)
    write_json(base / "tn3k-trainval-fold0.json", {"train": [0], "val": [1]})
    return fake


def write_bmad(root: Path, name: str, category: str, variant: str = "mvfa") -> FakeCopy:
    """A BMAD set in one of its folder variants.

    "mvfa": ``test/{good,Ungood}/img`` + ``Ungood/anomaly_mask``; "label": the mask folder is ``label``;
    "swapped": ``test/img/{good,Ungood}`` + ``test/label/Ungood``; "resc": ``Test/test/...`` + ``Test/test_label``.
    """
    fake = FakeCopy(root)
    base = root / name
    for split, folder in (("test", "test"), ("validation", "valid"), ("train", "train")):
        n_bad = 0 if split == "train" else 2
        d = base / (folder.title() if variant == "resc" else folder)
        for cls, n in (("good", 2), ("Ungood", n_bad)):
            for i in range(n):
                s = next(_seed)
                img_dir = {
                    "mvfa": d / cls / "img",
                    "label": d / cls / "img",
                    "swapped": d / "img" / cls,
                    "resc": d / folder / cls,
                }[variant]
                mask_dir = {
                    "mvfa": d / "Ungood" / "anomaly_mask",
                    "label": d / "Ungood" / "label",
                    "swapped": d / "label" / "Ungood",
                    "resc": d / f"{folder}_label" / "Ungood",
                }[variant]
                img = write_image(img_dir / f"{i + 3}_{40 + i}.png", s, mode="L")
                mask = None
                if cls == "Ungood":
                    mask = write_mask(mask_dir / f"{i + 3}_{40 + i}.png", region(s))
                    fake.regions[mask] = region(s)
                fake.add(category, split, int(cls == "Ungood"), img, mask)
    return fake


def write_liverct(root: Path, variant: str = "mvfa") -> FakeCopy:
    """LiverCT as MVFA-AD ships it (``Liver_AD/``), or another BMAD variant."""
    return write_bmad(root, "Liver_AD", "liver", variant)


def write_resc(root: Path, variant: str = "resc") -> FakeCopy:
    """RESC as BMAD's own copy (``RESC/Test/test/...``), or another variant."""
    return write_bmad(root, "RESC", "retina", variant)
