"""Shared base classes of the built-in dataset families (not a plugin: the name starts with "_")."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from zsad_bench.layouts import descend, mvtec_style_records, require_root
from zsad_bench.types import DatasetFamily, DatasetInfo, SampleRecord

__all__ = ["Family", "MVTecStyleFamily", "expected_counts"]

Counts = Mapping[str, tuple[int, int]]


def expected_counts(test: Counts, train: Counts | None = None) -> dict[str, dict[str, tuple[int, int]]]:
    """Build ``expected``: category → split → (normal, anomalous) from per-split tables.

    Example:
        >>> expected_counts({"a": (2, 3)}, {"a": (5, 0)})
        {'a': {'test': (2, 3), 'train': (5, 0)}}
    """
    out: dict[str, dict[str, tuple[int, int]]] = {c: {"test": n} for c, n in test.items()}
    for c, n in (train or {}).items():
        out.setdefault(c, {})["train"] = n
    return out


class Family(DatasetFamily):
    """A family with a fixed :class:`DatasetInfo` in ``INFO``; checks root, category and split.

    Subclasses set ``INFO`` and implement :meth:`_records` on the located dataset folder.
    """

    INFO: ClassVar[DatasetInfo]

    @classmethod
    def info(cls) -> DatasetInfo:
        """Static facts (see the class's ``INFO``)."""
        return cls.INFO

    def locate(self, root: Path) -> Path:
        """The folder holding the data under the configured root (skips archive wrapper folders)."""
        return root

    def records(self, root: Path, category: str, split: str) -> list[SampleRecord]:
        """All samples of one category and split, sorted and deterministic.

        Raises:
            FileNotFoundError: the root is missing (the message says where to get the data).
            KeyError: unknown category.
            ValueError: unknown split.
        """
        info = self.info()
        base = self.locate(require_root(Path(root), info))
        cats = self.available_categories(base)
        if category not in cats:
            raise KeyError(f"{info.name} has no category {category!r}; categories: {', '.join(cats)}")
        if split not in info.splits:
            raise ValueError(f"{info.name} has no split {split!r}; splits: {', '.join(info.splits)}")
        return self._records(base, category, split)

    @abstractmethod
    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        """Records under the located folder ``base``; category and split are already valid."""


class MVTecStyleFamily(Family):
    """A dataset in the MVTec AD layout (``<cat>/{train,test}/<defect>``, ``<cat>/ground_truth``).

    Class attributes set the variations: ``NORMAL_DIRS`` (folders of normal images), ``MASK_SUFFIX``
    (``_mask`` or "" for masks named like their image), ``WRAPPERS`` (archive folders to look into).
    """

    NORMAL_DIRS: ClassVar[Sequence[str]] = ("good",)
    MASK_SUFFIX: ClassVar[str] = "_mask"
    MASK_DIR: ClassVar[str] = "ground_truth"
    WRAPPERS: ClassVar[Sequence[str]] = ()

    def locate(self, root: Path) -> Path:
        """The folder that holds the category folders."""
        cats = self.info().categories
        return descend(root, lambda p: any((p / c).is_dir() for c in cats), self.WRAPPERS)

    def _records(self, base: Path, category: str, split: str) -> list[SampleRecord]:
        return mvtec_style_records(
            base,
            category,
            split,
            self.info().name,
            self.MASK_DIR,
            self.MASK_SUFFIX,
            normal_dirs=self.NORMAL_DIRS,
            has_masks=self.info().has_masks,
        )
