"""The auxiliary training data of a trained method: which datasets, which records, decoded batches.

``train.aux`` names the auxiliary datasets: ``auto`` (the method config's ``aux`` key when it
sets one, e.g. AdaCLIP's named training sets; else the test dataset config's ``aux`` key, the
papers' pairing; else ``DatasetInfo.default_aux``), a name, ``"a+b"``, a list of names, or a
list of mappings ``{name, root, categories}``. A dataset's root and categories default to its
``conf/dataset/<name>.yaml`` (interpolated with ``paths``), else ``<data_root>/<subdir>`` and all
categories. Images and masks are decoded with :mod:`zsad_bench.preprocess` at the backbone's
input size (masks: bilinear on 0/255, then > 0.5, as the reference code does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from zsad_bench.checkpoints import config_hash

if TYPE_CHECKING:
    import torch

    from zsad_bench.protocol import DataSelection, ProtocolRecord
    from zsad_bench.types import Batch, DatasetInfo, SampleRecord

__all__ = ["AuxData", "AuxDataset", "aux_entries", "build_aux", "check_aux", "plain", "section", "to_batch"]

logger = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """An OmegaConf node as plain containers (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def section(cfg: Any, key: str) -> dict[str, Any]:
    """``cfg[key]`` as a plain dict ({} when absent)."""
    value = cfg.get(key) if hasattr(cfg, "get") else None
    return dict(plain(value) or {})


@dataclass
class AuxData:
    """The resolved auxiliary data.

    Attributes:
        names: the auxiliary dataset names, in order.
        selections: what is used of each (categories, split).
        records: every record used, in order.
        infos: dataset name → info.
        roots: dataset name → folder.
        families: dataset name → the dataset family that lists its records.
    """

    names: list[str]
    selections: list[DataSelection]
    records: list[SampleRecord]
    infos: dict[str, DatasetInfo]
    roots: dict[str, Path]
    families: dict[str, Any] = field(default_factory=dict)

    def list_records(self, max_per_category: int | None = None) -> None:
        """Fill :attr:`records` from the datasets on disk (at most ``max_per_category`` per category).

        Raises:
            ValueError: no record at all.
            FileNotFoundError: a dataset folder is missing (raised by the dataset, naming it).
        """
        self.records = []
        for sel in self.selections:
            for cat in sel.categories:
                recs = self.families[sel.dataset].records(self.roots[sel.dataset], cat, sel.split)
                self.records += recs[:max_per_category] if max_per_category else recs
        if not self.records:
            where = [s.describe() for s in self.selections]
            raise ValueError(f"no auxiliary records in {where}; check paths.data_root")

    def digest(self) -> str:
        """Identity of the record list (keys and labels, in order)."""
        return config_hash([(r.key, r.label) for r in self.records])


def _dataset_yaml(name: str) -> dict[str, Any]:
    from importlib import resources

    from omegaconf import OmegaConf

    path = resources.files("zsad_bench.conf") / "dataset" / f"{name}.yaml"
    if not path.is_file():
        return {}
    # to_container of a DictConfig is a dict; OmegaConf types it as any container (or str/None)
    return dict(cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(str(path)))))


def _resolve_entry(entry: Mapping[str, Any], paths: Mapping[str, Any]) -> dict[str, Any]:
    """name/root/categories of one auxiliary dataset: the entry's keys, else its conf/dataset yaml."""
    from omegaconf import OmegaConf

    merged = {**_dataset_yaml(entry["name"]), **{k: v for k, v in entry.items() if v is not None}}
    resolved = OmegaConf.create({"paths": dict(paths), "dataset": merged})
    container = cast(dict[str, Any], OmegaConf.to_container(resolved, resolve=True))  # a DictConfig → a dict
    return dict(container["dataset"])


def aux_entries(cfg: Any) -> list[dict[str, Any]]:
    """The auxiliary datasets of a run, each ``{name, root?, categories?}`` (``train.aux`` resolved).

    Raises:
        ValueError: ``train.aux=auto`` and no pairing is known for the test dataset.
    """
    from zsad_bench.protocol import resolve_aux_names
    from zsad_bench.registry import DATASETS

    raw, dataset = section(cfg, "train").get("aux", "auto"), section(cfg, "dataset")
    if raw in (None, "auto") and section(cfg, "method").get("aux"):  # a method's own training sets (AdaCLIP)
        raw = section(cfg, "method")["aux"]
    if isinstance(raw, list) and raw and all(isinstance(e, Mapping) for e in raw):
        return [dict(e) for e in raw]
    name = str(dataset.get("name"))
    default = DATASETS.get(name).info().default_aux if name in DATASETS else None
    return [{"name": n} for n in resolve_aux_names(raw, name, dataset.get("aux"), default)]


def build_aux(
    entries: Sequence[Mapping[str, Any]],
    paths: Mapping[str, Any],
    split: str = "test",
    max_per_category: int | None = None,
    list_records: bool = True,
) -> AuxData:
    """Resolve the auxiliary datasets and (unless ``list_records`` is False) list their records.

    Without the records, the selections (datasets, categories, split) are known from the
    datasets' static info alone: enough for the zero-shot guard and to find a stored training
    when the auxiliary data is not on this machine.

    Args:
        entries: from :func:`aux_entries`.
        paths: the ``paths`` config group (``data_root`` …).
        split: the split trained on (the papers use the auxiliary datasets' test split).
        max_per_category: keep at most this many records per category (None: all).
        list_records: list the records now (see :meth:`AuxData.list_records`).

    Raises:
        ValueError: no record at all.
        FileNotFoundError: a dataset folder is missing (raised by the dataset, naming it).
    """
    from zsad_bench.evaluate import select_categories
    from zsad_bench.protocol import DataSelection
    from zsad_bench.registry import DATASETS

    aux = AuxData([], [], [], {}, {})
    for entry in (_resolve_entry(e, paths) for e in entries):
        name = entry["name"]
        family = DATASETS.get(name)()
        info = family.info()
        root = Path(entry.get("root") or Path(str(paths.get("data_root", "data"))) / (info.subdir or name))
        cats = select_categories(info, entry.get("categories", "all"))
        aux.names.append(name)
        aux.infos[name], aux.roots[name], aux.families[name] = info, root, family
        aux.selections.append(DataSelection(name, tuple(cats), split))
    if list_records:
        aux.list_records(max_per_category)
    return aux


def check_aux(cfg: Any, aux: AuxData) -> ProtocolRecord:
    """Run the zero-shot guard between ``aux`` and the run's test dataset (``train.allow_overlap``)."""
    from zsad_bench.evaluate import select_categories
    from zsad_bench.protocol import DataSelection, check_protocol
    from zsad_bench.registry import DATASETS

    dataset = section(cfg, "dataset")
    info = DATASETS.get(dataset["name"]).info()
    test = DataSelection(info.name, tuple(select_categories(info, dataset.get("categories", "all"))), "test")
    allow = bool(section(cfg, "train").get("allow_overlap", False))
    return check_protocol(aux.selections, test, {**aux.infos, info.name: info}, allow_overlap=allow)


class AuxDataset:
    """Decodes auxiliary records (image + mask at input size); item ``i`` is ``aux.records[i]``.

    One :class:`~zsad_bench.preprocess.RecordDataset` per auxiliary dataset (each has its own
    mask threshold). A file that fails to decode gives an item with ``error`` set. ``mosaic``
    (dataset → probability) turns items into 2×2 mosaics of their category, drawn from
    (``seed``, ``epoch``, item) (:mod:`zsad_bench.mosaic`).
    """

    def __init__(
        self,
        aux: AuxData,
        backbone_cfg: Mapping[str, Any],
        mosaic: Mapping[str, float] | None = None,
        seed: int = 0,
        epoch: int = 1,
    ) -> None:
        from zsad_bench.preprocess import PreprocessSpec, RecordDataset

        self.aux, self.mosaic, self.seed, self.epoch = aux, dict(mosaic or {}), seed, epoch
        self.where: list[tuple[str, int]] = []
        by_dataset: dict[str, list[SampleRecord]] = {name: [] for name in aux.infos}
        for record in aux.records:
            self.where.append((record.dataset, len(by_dataset[record.dataset])))
            by_dataset[record.dataset].append(record)
        self.parts = {
            name: RecordDataset(recs, PreprocessSpec.from_cfg(backbone_cfg, "input", aux.infos[name].mask_threshold))
            for name, recs in by_dataset.items()
        }

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, local = self.where[index]
        if self.mosaic:  # APRIL-GAN / AdaCLIP 2x2 mosaics (zsad_bench/mosaic.py)
            item = self._mosaic(index, name)
            if item is not None:
                return item
        return {**self.parts[name][local], "index": index}

    def _mosaic(self, index: int, name: str) -> dict[str, Any] | None:
        from zsad_bench.mosaic import mosaic_draw, mosaic_item

        record = self.aux.records[index]
        pool = [r for r in self.parts[name].records if r.category == record.category]
        draw = mosaic_draw(self.mosaic, record, pool, self.seed, self.epoch, index)
        if draw is None:
            return None
        try:
            return {**mosaic_item(draw, self.parts[name].spec), "index": index, "error": None, "mosaic": True}
        except Exception as exc:  # recorded and skipped like any undecodable item
            return {"index": index, "error": f"mosaic: {type(exc).__name__}: {exc}", "image": None, "mask": None}


def to_batch(items: list[dict[str, Any]], aux: AuxData, device: torch.device) -> Batch | None:
    """Stack the decoded items of one step into a training :class:`Batch` (None if all failed)."""
    import torch

    from zsad_bench.types import Batch

    for it in items:
        if it["error"] is not None:
            logger.warning("skipping auxiliary image %s: %s", aux.records[it["index"]].image_path, it["error"])
    good = [it for it in items if it["error"] is None]
    if not good:
        return None
    records = [_record_of(it, aux) for it in good]
    return Batch(
        images=torch.stack([it["image"] for it in good]).to(device),  # (B, 3, S, S)
        records=records,
        class_names=[aux.infos[r.dataset].prompt_name(r.category) for r in records],
        labels=torch.tensor([r.label for r in records], dtype=torch.long, device=device),  # (B,)
        masks=torch.stack([it["mask"] for it in good]).to(device, torch.float32),  # (B, S, S)
    )


def _record_of(item: dict[str, Any], aux: AuxData) -> SampleRecord:
    """The item's record; a mosaic's is marked ``defect_type="mosaic"`` (its pixels are not its file's)."""
    import dataclasses

    from zsad_bench.mosaic import MOSAIC

    record = aux.records[item["index"]]
    return dataclasses.replace(record, defect_type=MOSAIC) if item.get("mosaic") else record
