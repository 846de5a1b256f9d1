"""The embedded synthetic datasets ``synth`` (test) and ``synth_aux`` (auxiliary training).

Generated on first use into ``<data_root>/synth`` and ``<data_root>/synth_aux`` by
:mod:`zsad_bench.synth`, in the MVTec AD layout, and read back with the same MVTec-style
reader as the real datasets. The two have disjoint categories, so training on ``synth_aux``
and testing on ``synth`` respects the zero-shot protocol.
"""

from __future__ import annotations

from pathlib import Path

from zsad_bench.registry import register_dataset
from zsad_bench.types import DatasetFamily, DatasetInfo, DownloadInfo, SampleRecord

__all__ = ["Synth", "SynthAux"]


def _info(name: str, categories: dict[str, tuple[str, str]], aux: str, n: tuple[int, int, int]) -> DatasetInfo:
    from zsad_bench.synth import DEFECTS

    n_train, n_good, n_per_defect = n
    return DatasetInfo(
        name=name,
        domain="mixed",
        category_domains={c: d for c, (d, _) in categories.items()},
        modality="synthetic",
        categories=tuple(sorted(categories)),
        prompt_names={c: c.removesuffix("_like") for c in categories},
        expected={c: {"train": (n_train, 0), "test": (n_good, n_per_defect * len(DEFECTS))} for c in categories},
        default_aux=aux,
        download=DownloadInfo(notes="generated on first use by zsad_bench.synth; nothing to download"),
        subdir=name,
    )


class _SynthBase(DatasetFamily):
    categories_attr = "TEST_CATEGORIES"
    seed = 0

    def spec(self):  # zsad_bench.synth is imported lazily
        """The generator spec of this dataset."""
        from zsad_bench import synth

        return synth.SynthSpec(getattr(synth, self.categories_attr), seed=self.seed)

    def records(self, root: Path, category: str, split: str) -> list[SampleRecord]:
        """Generate the copy if needed, then read it as MVTec AD."""
        from zsad_bench.layouts import mvtec_style_records
        from zsad_bench.synth import ensure_synth

        if category not in self.info().categories:
            raise KeyError(f"{self.name} has no category {category!r}; categories: {', '.join(self.info().categories)}")
        ensure_synth(Path(root), self.spec())
        return mvtec_style_records(Path(root), category, split, dataset=self.name)


@register_dataset("synth", title="zsad-bench synthetic anomalies", summary="embedded, generated on first use")
class Synth(_SynthBase):
    """Six synthetic categories (four industrial, two medical-looking) with six defect kinds."""

    name = "synth"

    @classmethod
    def info(cls) -> DatasetInfo:
        """Static facts."""
        from zsad_bench.synth import TEST_CATEGORIES

        return _info(cls.name, TEST_CATEGORIES, "synth_aux", (6, 4, 1))


@register_dataset("synth_aux", title="zsad-bench synthetic anomalies (auxiliary)", summary="disjoint categories")
class SynthAux(_SynthBase):
    """Four further synthetic categories, disjoint from ``synth``: the auxiliary training set."""

    name = "synth_aux"
    categories_attr = "AUX_CATEGORIES"
    seed = 1

    @classmethod
    def info(cls) -> DatasetInfo:
        """Static facts."""
        from zsad_bench.synth import AUX_CATEGORIES

        return _info(cls.name, AUX_CATEGORIES, "synth", (6, 4, 1))
