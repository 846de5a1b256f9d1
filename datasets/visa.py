"""VisA (Zou et al., ECCV 2022), read through the authors' ``split_csv/1cls.csv``.

Layout (``docs/datasets.md``): ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``,
``<cat>/Data/Masks/Anomaly/*.png`` and ``split_csv/1cls.csv`` with columns
``object,split,label,image,mask`` (paths relative to the VisA folder). Masks hold class ids
(0 background, 1..K defect classes), binarised as > 0. Copies already converted to the
MVTec layout (``1cls/<cat>`` from the authors' script, ``visa_pytorch/<cat>`` from anomalib)
are read too when the CSV is absent.
"""

from __future__ import annotations

import csv
from pathlib import Path

from zsad_bench.datasets._base import Family, expected_counts
from zsad_bench.layouts import child_dir, descend, mvtec_style_records, natural_key, require_dir
from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["VisA"]

SPLIT_CSV = Path("split_csv") / "1cls.csv"
_COLUMNS = ("object", "split", "label", "image", "mask")

# computed from the authors' 1cls.csv (datasets.md §2 [S]): test (normal, anomalous), train normals
_TEST = {
    "candle": (100, 100), "capsules": (60, 100), "cashew": (50, 100), "chewinggum": (50, 100),
    "fryum": (50, 100), "macaroni1": (100, 100), "macaroni2": (100, 100), "pcb1": (100, 100),
    "pcb2": (100, 100), "pcb3": (101, 100), "pcb4": (101, 100), "pipe_fryum": (50, 100),
}  # fmt: skip
_TRAIN = {
    "candle": 900, "capsules": 542, "cashew": 450, "chewinggum": 453, "fryum": 450, "macaroni1": 900,
    "macaroni2": 900, "pcb1": 904, "pcb2": 901, "pcb3": 905, "pcb4": 904, "pipe_fryum": 450,
}  # fmt: skip


@register_dataset("visa", title="VisA", summary="12 objects, 1cls split CSV, class-id masks")
class VisA(Family):
    """VisA with the authors' one-class split from ``split_csv/1cls.csv``; normal records first, then anomalous."""

    name = "visa"
    INFO = DatasetInfo(
        name="visa",
        domain="industrial",
        modality="rgb",
        categories=tuple(_TEST),
        expected=expected_counts(_TEST, {c: (n, 0) for c, n in _TRAIN.items()}),
        default_aux="mvtec_ad",
        download=DownloadInfo(
            page="https://github.com/amazon-science/spot-diff",
            archive="VisA_20220922.tar",
            sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
            notes="Direct URL: https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar . "
            "The folder must hold candle/, ..., pipe_fryum/ and split_csv/1cls.csv (also in the spot-diff repo). "
            "Licence CC BY 4.0 per the authors (anomalib says CC BY-NC-SA 4.0).",
        ),
        count_notes="counted from the authors' split_csv/1cls.csv",
    )

    def __init__(self) -> None:
        self._rows: dict[Path, list[dict[str, str]]] = {}

    def locate(self, root: Path) -> Path:
        """The folder holding ``split_csv/`` (or a converted ``1cls``/``visa_pytorch`` copy)."""

        def marker(p: Path) -> bool:
            return (p / SPLIT_CSV).is_file() or (p / "candle").is_dir()

        return descend(root, marker, ("VisA_20220922", "VisA", "visa"))

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        csv_path = base / SPLIT_CSV
        if csv_path.is_file():
            require_dir(child_dir(base, category), f"category {category!r} of visa", base / category)
            rows = [r for r in self._read_csv(csv_path) if r["object"] == category and r["split"] == split]
            return sorted(
                (self._record(base, r) for r in rows), key=lambda r: (r.label, natural_key(r.image_path.name))
            )
        for converted in (base, child_dir(base, "1cls"), child_dir(base, "visa_pytorch")):
            if converted is not None and (converted / category / "test").is_dir():
                return mvtec_style_records(converted, category, split, "visa", mask_suffix="")
        raise FileNotFoundError(
            f"{csv_path} not found: VisA is read through the authors' split file. Copy split_csv/1cls.csv "
            "from https://github.com/amazon-science/spot-diff into the VisA folder."
        )

    def _read_csv(self, path: Path) -> list[dict[str, str]]:
        if path not in self._rows:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = tuple(h.strip() for h in reader.fieldnames or ())
                if not set(_COLUMNS) <= set(header):
                    raise ValueError(f"{path}: header {header} lacks one of {_COLUMNS}; is it VisA's 1cls.csv?")
                self._rows[path] = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        return self._rows[path]

    @staticmethod
    def _record(base: Path, row: dict[str, str]) -> SampleRecord:
        image = base / row["image"]
        if row["label"] == "normal":
            return SampleRecord(image, 0, None, row["object"], "good", row["split"], "visa")
        # an anomaly row without a mask entry points at where the mask should be (data check reports it)
        mask = (
            base / row["mask"]
            if row["mask"]
            else base / row["object"] / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
        )
        return SampleRecord(image, 1, mask, row["object"], "anomaly", row["split"], "visa")
