"""The zero-shot protocol: auxiliary training data and test data must not share categories.

A trained ZSAD method learns on an auxiliary annotated dataset and is tested on *other*
categories (AdaCLIP §3: "training using an auxiliary anomaly detection dataset … which contains
categories distinct from those in the testing dataset"). :func:`check_protocol` enforces it:

* the same ``dataset/category`` on both sides is a conflict;
* a declared overlap (``DatasetInfo.overlaps`` of either dataset) makes categories of the two
  datasets conflict when their names match, when either dataset has a single category
  (ClinicDB and ColonDB are both "colon polyps"), or when the declaration names the category
  (``"real_iad/toothbrush"``); ``"other/*"`` declares every pair;
* the same category name in two datasets without a declaration is only recorded (and logged).

A conflict raises :class:`ProtocolError` unless ``allow_overlap`` is set; then the returned
:class:`ProtocolRecord` says ``overridden=True`` and the evaluation writes it into the result.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from zsad_bench.types import DatasetInfo

__all__ = ["DataSelection", "ProtocolError", "ProtocolRecord", "check_protocol", "resolve_aux_names"]

logger = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """The auxiliary and test data share categories and no override was given."""


@dataclass(frozen=True)
class DataSelection:
    """Some categories of one split of one dataset.

    Attributes:
        dataset: the registered dataset name.
        categories: the selected categories.
        split: the split used.
    """

    dataset: str
    categories: tuple[str, ...]
    split: str = "test"

    def describe(self) -> str:
        """``dataset[split]: a, b, c``."""
        return f"{self.dataset}[{self.split}]: {', '.join(self.categories)}"


@dataclass
class ProtocolRecord:
    """What the guard found; written into the training record and the result.

    Attributes:
        aux: the auxiliary selections.
        test: the test selection.
        conflicts: ``aux_dataset/category ~ test_dataset/category`` pairs that break the protocol.
        name_matches: same category names in different datasets without a declared overlap.
        allow_overlap: whether the override was given.
        overridden: True when conflicts exist and the override let the run go on.
    """

    aux: list[DataSelection]
    test: DataSelection
    conflicts: list[str] = field(default_factory=list)
    name_matches: list[str] = field(default_factory=list)
    allow_overlap: bool = False
    overridden: bool = False

    @property
    def zero_shot(self) -> bool:
        """Whether the pairing respects the zero-shot protocol."""
        return not self.conflicts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``zero_shot``)."""
        out = asdict(self)
        for sel in [*out["aux"], out["test"]]:
            sel["categories"] = list(sel["categories"])
        out["zero_shot"] = self.zero_shot
        return out


def _norm(name: str) -> str:
    """Lower-case alphanumerics only: ``Metal-Nut`` and ``metal_nut`` compare equal."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _declared(a: DatasetInfo, b: DatasetInfo) -> list[str]:
    """The overlap declarations between ``a`` and ``b`` (either direction), as ``"dataset[/category]"``."""
    out = [d for d in a.overlaps if d.split("/", 1)[0] == b.name]
    out += [d for d in b.overlaps if d.split("/", 1)[0] == a.name]
    return out


def _pair_conflicts(a_info: DatasetInfo, a: str, b_info: DatasetInfo, b: str, declared: Sequence[str]) -> bool:
    """Whether category ``a`` of ``a_info`` and ``b`` of ``b_info`` count as the same."""
    if a_info.name == b_info.name:
        return a == b
    if not declared:
        return False
    for d in declared:
        _, _, cat = d.partition("/")
        if cat == "*" or (cat and cat in (a, b)):
            return True
    whole = any("/" not in d for d in declared)
    single = len(a_info.categories) == 1 or len(b_info.categories) == 1
    return whole and (single or _norm(a) == _norm(b))


def _compare(aux: DataSelection, test: DataSelection, infos: Mapping[str, DatasetInfo]) -> tuple[list[str], list[str]]:
    a_info, t_info = infos[aux.dataset], infos[test.dataset]
    declared = _declared(a_info, t_info)
    conflicts, matches = [], []
    for a in aux.categories:
        for t in test.categories:
            pair = f"{aux.dataset}/{a} ~ {test.dataset}/{t}"
            if _pair_conflicts(a_info, a, t_info, t, declared):
                conflicts.append(pair)
            elif _norm(a) == _norm(t):
                matches.append(pair)
    return conflicts, matches


def _message(record: ProtocolRecord) -> str:
    shown = "; ".join(record.conflicts[:8]) + (" …" if len(record.conflicts) > 8 else "")
    aux = " + ".join(s.describe() for s in record.aux)
    return (
        f"zero-shot protocol violated: the auxiliary data ({aux}) and the test data ({record.test.describe()}) "
        f"share {len(record.conflicts)} category pair(s): {shown}. Train on data without these categories "
        f"(train.aux=<dataset>; train.aux=auto uses the papers' pairing for {record.test.dataset}), "
        "or pass train.allow_overlap=true to run anyway; the result is then marked as not zero-shot."
    )


def check_protocol(
    aux: Sequence[DataSelection],
    test: DataSelection,
    infos: Mapping[str, DatasetInfo],
    allow_overlap: bool = False,
) -> ProtocolRecord:
    """Check that the auxiliary data and the test data share no category.

    Args:
        aux: the auxiliary selections (one per auxiliary dataset).
        test: the test selection.
        infos: dataset name → :class:`DatasetInfo` for every dataset named above.
        allow_overlap: run anyway when categories are shared (recorded as ``overridden``).

    Returns:
        The record of the check.

    Raises:
        ProtocolError: categories are shared and ``allow_overlap`` is False.
        KeyError: a dataset is missing from ``infos``.
    """
    missing = sorted({s.dataset for s in [*aux, test]} - set(infos))
    if missing:
        raise KeyError(f"check_protocol: no DatasetInfo for {missing}")
    record = ProtocolRecord(aux=list(aux), test=test, allow_overlap=allow_overlap)
    for sel in aux:
        conflicts, matches = _compare(sel, test, infos)
        record.conflicts += conflicts
        record.name_matches += matches
    if record.name_matches:
        logger.warning(
            "auxiliary and test data have categories of the same name in different datasets (%s); "
            "no overlap is declared between these datasets, so the run goes on",
            "; ".join(record.name_matches[:5]),
        )
    if record.conflicts:
        if not allow_overlap:
            raise ProtocolError(_message(record))
        record.overridden = True
        logger.warning("zero-shot protocol overridden (train.allow_overlap=true): %s", "; ".join(record.conflicts[:8]))
    return record


def resolve_aux_names(
    aux: Any, test_dataset: str, dataset_aux: Any = None, default_aux: str | None = None
) -> list[str]:
    """The auxiliary dataset names a run trains on.

    Args:
        aux: ``train.aux``: ``"auto"``, a name, ``"a+b"``, or a list of names.
        test_dataset: the test dataset's name (named in the error).
        dataset_aux: the test dataset config's ``aux`` key (the papers' pairing), used for ``auto``.
        default_aux: ``DatasetInfo.default_aux``, used for ``auto`` when the config has no ``aux``.

    Returns:
        One or more names, in order, without duplicates.

    Raises:
        ValueError: ``auto`` with no pairing known for the test dataset.

    Example:
        >>> resolve_aux_names("auto", "mvtec_ad", dataset_aux="visa")
        ['visa']
        >>> resolve_aux_names("mvtec_ad+clinicdb", "visa")
        ['mvtec_ad', 'clinicdb']
    """
    value = aux
    if value is None or value == "auto":
        value = dataset_aux if dataset_aux not in (None, "auto", "") else default_aux
        if not value:
            raise ValueError(
                f"train.aux=auto but no auxiliary dataset is known for {test_dataset!r}: add `aux: <name>` to "
                f"conf/dataset/{test_dataset}.yaml or pass train.aux=<dataset> (e.g. train.aux=mvtec_ad)"
            )
    names = value.split("+") if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for n in (n.strip() for n in names):
        if n and n not in out:
            out.append(n)
    if not out:
        raise ValueError(f"train.aux={aux!r} names no dataset")
    return out
