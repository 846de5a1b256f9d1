"""Fake inputs of the generic datasets: a ``meta.json`` preparation and a user's image folder."""

from __future__ import annotations

from pathlib import Path

from fakes.common import FakeCopy, region, write_image, write_json, write_mask

_seed = iter(range(900_000, 1_000_000))


def write_meta_json(root: Path, phase_case: str = "lower") -> FakeCopy:
    """An APRIL-GAN-style ``meta.json`` over MVTec-like files: class ``bottle`` with relative paths,
    class ``colon`` with absolute paths (as AnomalyCLIP's medical scripts write them, ``//`` included) and
    an anomalous record without mask. ``phase_case="title"`` writes "Train"/"Test" like AnomalyCLIP's DAGM script.
    """
    fake = FakeCopy(root)
    test: dict[str, list[dict]] = {"bottle": [], "colon": []}
    for i in range(2):
        rel = f"bottle/test/good/{i:03d}.png"
        fake.add("bottle", "test", 0, write_image(root / rel, next(_seed)))
        test["bottle"].append(_rec(rel, "", "bottle", "good", 0))
    for i in range(2):
        s = next(_seed)
        rel, mrel = f"bottle/test/broken/{i:03d}.png", f"bottle/ground_truth/broken/{i:03d}_mask.png"
        img, mask = write_image(root / rel, s), write_mask(root / mrel, region(s))
        fake.add("bottle", "test", 1, img, mask)
        test["bottle"].append(_rec(rel, mrel, "bottle", "broken", 1))
    for i in range(2):
        s = next(_seed)
        img = write_image(root / "colon" / "images" / f"{i}.png", s)
        mask = write_mask(root / "colon" / "masks" / f"{i}.png", region(s))
        fake.add("colon", "test", 1, img, mask)
        test["colon"].append(_rec(f"{root}//colon/images/{i}.png", f"{root}//colon/masks/{i}.png", "colon", "", 1))
    img = write_image(root / "colon" / "images" / "nomask.png", next(_seed))
    fake.add("colon", "test", 1, img)
    test["colon"].append(_rec("colon/images/nomask.png", "", "colon", "", 1))
    keys = ("Train", "Test") if phase_case == "title" else ("train", "test")
    write_json(root / "meta.json", {keys[0]: {}, keys[1]: test})
    return fake


def _rec(img: str, mask: str, cls: str, specie: str, anomaly: int) -> dict:
    return {"img_path": img, "mask_path": mask, "cls_name": cls, "specie_name": specie, "anomaly": anomaly}


def write_folder(root: Path) -> FakeCopy:
    """A user's folder: ``widget/{good,scratch,masks/scratch}`` (one mask of another size) and ``my part/{good,dent}``
    (a space in the name, no masks)."""
    fake = FakeCopy(root)
    w = root / "widget"
    for i in range(3):
        fake.add("widget", "test", 0, write_image(w / "good" / f"{i}.png", next(_seed)))
    for i in range(2):
        s = next(_seed)
        img = write_image(w / "scratch" / f"s{i}.jpg", s)
        mask = write_mask(w / "masks" / "scratch" / f"s{i}_mask.png", region(s))
        fake.add("widget", "test", 1, img, mask)
    big = write_mask(w / "masks" / "scratch" / "s1_mask.png", region(7, (32, 32)))  # another size than its image
    fake.notes["resized_mask"] = big
    for i in range(2):
        fake.add("my part", "test", 0, write_image(root / "my part" / "good" / f"g{i}.png", next(_seed)))
    fake.add("my part", "test", 1, write_image(root / "my part" / "dent" / "d0.png", next(_seed)))
    return fake
