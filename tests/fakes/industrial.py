"""Fake copies of the industrial datasets in their exact distributed layouts (two categories, a few images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fakes.common import FakeCopy, region, write_image, write_json, write_mask, write_text

_seed = iter(range(1, 1_000_000))


def _mvtec_category(
    fake: FakeCopy,
    cat_dir: Path,
    category: str,
    defects: dict[str, int],
    *,
    n_train: int = 3,
    n_good: int = 2,
    normal: str = "good",
    img_ext: str = ".png",
    mask_ext: str = ".png",
    mask_suffix: str = "_mask",
    mode: str = "RGB",
) -> None:
    """``<cat>/train/<normal>``, ``<cat>/test/{<normal>,<defect>}``, ``<cat>/ground_truth/<defect>``."""
    for i in range(n_train):
        fake.add(category, "train", 0, write_image(cat_dir / "train" / normal / f"{i:03d}{img_ext}", next(_seed), mode))
    for i in range(n_good):
        fake.add(category, "test", 0, write_image(cat_dir / "test" / normal / f"{i:03d}{img_ext}", next(_seed), mode))
    for defect, n in defects.items():
        for i in range(n):
            s = next(_seed)
            img = write_image(cat_dir / "test" / defect / f"{i:03d}{img_ext}", s, mode)
            mask = write_mask(cat_dir / "ground_truth" / defect / f"{i:03d}{mask_suffix}{mask_ext}", region(s))
            fake.regions[mask] = region(s)
            fake.add(category, "test", 1, img, mask)


def write_mvtec_ad(root: Path) -> FakeCopy:
    """MVTec AD: ``bottle`` (RGB) and ``grid`` (8-bit grayscale), readme/licence at the top, a stray .DS_Store."""
    fake = FakeCopy(root)
    _mvtec_category(fake, root / "bottle", "bottle", {"broken_large": 2, "contamination": 1})
    _mvtec_category(fake, root / "grid", "grid", {"bent": 2}, mode="L")
    write_text(root / "readme.txt", "MVTec AD\n")
    write_text(root / "license.txt", "CC BY-NC-SA 4.0\n")
    (root / "bottle" / "ground_truth" / ".DS_Store").write_bytes(b"\x00\x01")
    # an extra mask without image: pairing by stem must not shift (index pairing would)
    write_mask(root / "bottle" / "ground_truth" / "broken_large" / "000a_mask.png", region(0))
    return fake


def write_mpdd(root: Path) -> FakeCopy:
    """MPDD: ``bracket_black`` and ``tubes``; one image with an upper-case ``.PNG`` extension."""
    fake = FakeCopy(root)
    _mvtec_category(fake, root / "bracket_black", "bracket_black", {"hole": 1, "scratches": 2})
    _mvtec_category(fake, root / "tubes", "tubes", {"flattening": 2}, img_ext=".PNG")
    return fake


def write_btad(root: Path) -> FakeCopy:
    """BTAD inside ``BTech_Dataset_transformed/``: ok/ko, masks named like images; 01 bmp+png, 03 bmp+bmp."""
    fake = FakeCopy(root)
    base = root / "BTech_Dataset_transformed"
    _mvtec_category(fake, base / "01", "01", {"ko": 2}, normal="ok", img_ext=".bmp", mask_suffix="")
    _mvtec_category(fake, base / "03", "03", {"ko": 2}, normal="ok", img_ext=".bmp", mask_ext=".bmp", mask_suffix="")
    return fake


def write_dtd_synthetic(root: Path) -> FakeCopy:
    """DTD-Synthetic: ``Woven_001`` and ``Blotchy_099`` with the anomaly folder ``bad``."""
    fake = FakeCopy(root)
    _mvtec_category(fake, root / "Woven_001", "Woven_001", {"bad": 3})
    _mvtec_category(fake, root / "Blotchy_099", "Blotchy_099", {"bad": 2}, mask_suffix="")
    return fake


def write_mvtec_3d(root: Path) -> FakeCopy:
    """MVTec 3D-AD: ``bagel``, ``tire``; rgb/xyz/gt per sample, class-id masks, zero gt for good, a validation split."""
    import tifffile

    fake = FakeCopy(root)
    for cat, ids in (("bagel", {"crack": 254, "combined": 0}), ("tire", {"cut": 254})):
        write_json(root / cat / "class_ids.json", {"255": "contamination", "254": "cut", "253": "hole", "0": "good"})
        write_text(root / cat / "license.txt", "CC BY-NC-SA 4.0\n")
        write_json(root / cat / "calibration" / "camera_parameters.json", {"fx": 1.0})
        for split, defects in (("train", {"good": 0}), ("validation", {"good": 0}), ("test", {"good": 0, **ids})):
            for defect, value in defects.items():
                for i in range(2):
                    s = next(_seed)
                    d = root / cat / split / defect
                    img = write_image(d / "rgb" / f"{i:03d}.png", s)
                    d.joinpath("xyz").mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(d / "xyz" / f"{i:03d}.tiff", np.zeros((16, 16, 3), np.float32), photometric="rgb")
                    area = region(s) if defect != "good" else np.zeros((16, 16), bool)
                    mask = _class_mask(d / "gt" / f"{i:03d}.png", area, value)
                    if defect == "good":
                        fake.add(cat, split, 0, img)
                    else:
                        fake.regions[mask] = area
                        fake.add(cat, split, 1, img, mask)
    return fake


def _class_mask(path: Path, area: np.ndarray, value: int) -> Path:
    """A class-id mask; value 0 means "combined": two classes, 253 and 255."""
    if value:
        return write_mask(path, area, value)
    arr = np.where(area, 253, 0).astype(np.uint8)
    arr[area.nonzero()[0][:3], area.nonzero()[1][:3]] = 255
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


def write_visa(root: Path) -> FakeCopy:
    """VisA: ``candle`` and ``pcb1``; ``.JPG`` images, class-id masks (values 1..3), 1cls.csv, image_anno.csv."""
    fake = FakeCopy(root)
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        anno = ["image,label,mask"]
        for i, split in enumerate(("train", "train", "train", "test", "test")):
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            fake.add(cat, split, 0, write_image(root / rel, next(_seed)))
            rows.append(f"{cat},{split},normal,{rel},")
            anno.append(f"{rel},normal,")
        for i in range(3):
            s = next(_seed)
            rel, mrel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG", f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            img = write_image(root / rel, s)
            mask = write_mask(root / mrel, region(s), value=1 + i)  # class ids, not 0/255
            fake.regions[mask] = region(s)
            fake.add(cat, "test", 1, img, mask)
            rows.append(f"{cat},test,anomaly,{rel},{mrel}")
            anno.append(f'{rel},"melt, scratch",{mrel}')
        write_text(root / cat / "image_anno.csv", "\n".join(anno) + "\n")
    write_text(root / "split_csv" / "1cls.csv", "\n".join(rows) + "\n")
    write_text(root / "split_csv" / "2cls_fewshot.csv", "object,split,label,image,mask\n")
    return fake


def write_ksdd(root: Path) -> FakeCopy:
    """KolektorSDD: flat ``kosNN/PartN.jpg`` + ``PartN_label.bmp``; defective iff the label has a non-zero pixel."""
    fake = FakeCopy(root)
    for k in (1, 2, 3):
        for p in range(3):
            s = next(_seed)
            d = root / f"kos{k:02d}"
            img = write_image(d / f"Part{p}.jpg", s, mode="L", size=(24, 10))
            defective = (k, p) in ((2, 1), (3, 0))
            area = region(s, (24, 10)) if defective else np.zeros((24, 10), bool)
            mask = write_mask(d / f"Part{p}_label.bmp", area)
            fake.add("electrical_commutators", "test", int(defective), img, mask if defective else None)
            if defective:
                fake.regions[mask] = area
    return fake


def write_ksdd_prepared(root: Path) -> FakeCopy:
    """The AnomalyCLIP "SDD" copy: MVTec layout in a folder with a space, ``electrical commutators``."""
    fake = FakeCopy(root)
    cat_dir = root / "electrical commutators"
    _mvtec_category(fake, cat_dir, "electrical_commutators", {"defect": 2})
    return fake


def write_ksdd2(root: Path) -> FakeCopy:
    """KolektorSDD2: ``{train,test}/NNNNN.png`` with ``NNNNN_GT.png`` in the same folder."""
    fake = FakeCopy(root)
    n = 0
    for split, defective in (("train", (1,)), ("test", (0, 2))):
        for i in range(4):
            n, s = n + 1, next(_seed)
            img = write_image(root / split / f"{10000 + n:05d}.png", s, size=(20, 12))
            area = region(s, (20, 12)) if i in defective else np.zeros((20, 12), bool)
            mask = write_mask(root / split / f"{10000 + n:05d}_GT.png", area)
            fake.add("ksdd2", split, int(i in defective), img, mask if i in defective else None)
    return fake


def write_dagm(root: Path) -> FakeCopy:
    """DAGM 2007 in ``DAGM_KaggleUpload/``: Class1 flat, Class2 nested (``Class2/Class2/Train``).

    Upper-case ``.PNG`` files and a tab-separated ``Label/Labels.txt`` with CRLF line ends.
    """
    fake = FakeCopy(root)
    base = root / "DAGM_KaggleUpload"
    for cat, class_dir in (("Class1", base / "Class1"), ("Class2", base / "Class2" / "Class2")):
        for split in ("Train", "Test"):
            d = class_dir / split
            lines = ["1"]
            for i in range(4):
                s = next(_seed)
                img = write_image(d / f"{i + 1:04d}.PNG", s, mode="L")
                defective = i in (1, 3)
                if defective:
                    mask = write_mask(d / "Label" / f"{i + 1:04d}_label.PNG", region(s))
                    fake.regions[mask] = region(s)
                    lines.append(f"{i + 1}\t1\t{i + 1:04d}.PNG\t0\t{i + 1:04d}_label.PNG")
                else:
                    mask = None
                    lines.append(f"{i + 1}\t0\t{i + 1:04d}.PNG\t0")
                fake.add(cat, split.lower(), int(defective), img, mask)
            write_text(d / "Label" / "Labels.txt", "\r\n".join(lines) + "\r\n")
    return fake


def write_real_iad(root: Path) -> FakeCopy:
    """Real-IAD: ``realiad_1024/<cat>/{OK,NG/<code>}/S####/*_C#_*.jpg`` (+ .png masks), ``realiad_jsons/<cat>.json``."""
    fake = FakeCopy(root)
    for cat in ("audiojack", "toothbrush"):
        items: dict[str, list[dict]] = {"train": [], "test": []}
        for n, (split, cls) in enumerate(
            (("train", "OK"), ("train", "OK"), ("test", "OK"), ("test", "AK"), ("test", "QS"))
        ):
            for view in (1, 2):
                s = next(_seed)
                kind = "OK" if cls == "OK" else "NG"
                rel = f"{kind}/S{n:04d}/{cat}_{n:04d}_{kind}_C{view}_20230922.jpg"
                rel = rel if cls == "OK" else f"NG/{cls}/S{n:04d}/{cat}_{n:04d}_NG_C{view}_20230922.jpg"
                img = write_image(root / "realiad_1024" / cat / rel, s)
                mask_rel = None
                if cls != "OK":
                    mask_rel = rel.replace(".jpg", ".png")
                    mask = write_mask(root / "realiad_1024" / cat / mask_rel, region(s))
                    fake.regions[mask] = region(s)
                fake.add(cat, split, int(cls != "OK"), img, None if mask_rel is None else mask)
                items[split].append({"category": cat, "anomaly_class": cls, "image_path": rel, "mask_path": mask_rel})
        write_json(root / "realiad_jsons" / f"{cat}.json", {"meta": {"prefix": cat, "normal_class": "OK"}, **items})
    return fake
