"""``zsad-bench data list | info <name> | check dataset=<name> [key=value ...]``.

``check`` walks a copy of a dataset as its loader reads it and reports, per category and split,
the normal/anomalous counts against the published ones, unreadable or truncated files, missing
masks and masks whose size differs from their image. It exits with 1 on a broken copy (any
error; with ``strict=true`` also any warning, e.g. a count mismatch), else 0.

Keys of ``check`` (Hydra-style overrides, parsed here so that no run config is needed):
    ``dataset=<name>`` (required); ``paths.data_root=<dir>`` (default ``$ZSAD_DATA`` or ``data``);
    ``dataset.root=<dir>`` (the dataset folder itself; default ``<data_root>/<subdir or name>``);
    ``dataset.options.<option>=<value>`` (a loader option, e.g. ``dataset.options.resolution=512`` for
    Real-IAD; ``dataset.<option>`` works too);
    ``categories=a,b``; ``splits=test``; ``quick=true`` (headers only, no full decode);
    ``strict=true``; ``workers=<n>``; ``show=<n>`` (problems listed, default 30).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.table import Table
from rich.text import Text

from zsad_bench.build import build_dataset as build_family
from zsad_bench.imageio import ImageReadError, MaskSizeError, check_mask_size, image_hw, load_image, load_mask
from zsad_bench.layouts import require_root
from zsad_bench.registry import DATASETS
from zsad_bench.types import DatasetFamily, DatasetInfo, SampleRecord

__all__ = ["CheckReport", "Problem", "build_family", "check_dataset", "dataset_root", "main"]

USAGE = """usage: zsad-bench data list
       zsad-bench data info <name>
       zsad-bench data check dataset=<name> [paths.data_root=<dir> | dataset.root=<dir>] [categories=a,b]
                             [splits=test] [quick=true] [strict=true] [workers=N] [show=N]"""


@dataclass(frozen=True)
class Problem:
    """One finding of ``data check``: severity "error", "warning" or "note"."""

    severity: str
    kind: str
    path: Path | None
    message: str


@dataclass
class SplitCount:
    """Counts of one category and split, with the published ones."""

    category: str
    split: str
    normal: int = 0
    anomalous: int = 0
    expected: tuple[int, int] | None = None


@dataclass
class CheckReport:
    """What ``data check`` found."""

    dataset: str
    root: Path
    counts: list[SplitCount] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_images: int = 0

    def by_severity(self, severity: str) -> list[Problem]:
        """The problems of one severity."""
        return [p for p in self.problems if p.severity == severity]

    def ok(self, strict: bool = False) -> bool:
        """No error (and, when strict, no warning)."""
        return not self.by_severity("error") and not (strict and self.by_severity("warning"))


# ----------------------------------------------------------------------------- config
def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments as a dict (a leading ``+`` or ``++`` is dropped).

    Raises:
        ValueError: for an argument without ``=``.
    """
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {arg!r}")
        out[key.lstrip("+")] = value
    return out


def _value(raw: str) -> Any:
    import yaml

    return yaml.safe_load(raw) if raw else raw


def dataset_root(info: DatasetInfo, overrides: dict[str, str]) -> Path:
    """``dataset.root``, else ``<paths.data_root>/<subdir or name>`` (data_root: ``$ZSAD_DATA`` or ``data``)."""
    if overrides.get("dataset.root"):
        return Path(overrides["dataset.root"]).expanduser()
    data_root = overrides.get("paths.data_root") or os.environ.get("ZSAD_DATA") or "data"
    return Path(data_root).expanduser() / (info.subdir or info.name)


# ----------------------------------------------------------------------------- check
def _check_record(rec: SampleRecord, info: DatasetInfo, quick: bool) -> list[Problem]:
    out: list[Problem] = []
    try:
        hw = image_hw(rec.image_path) if quick else load_image(rec.image_path).size[::-1]
    except ImageReadError as exc:
        return [Problem("error", f"image {exc.kind}", exc.path, str(exc))]
    if rec.label != 1 or not info.has_masks:
        return out
    if rec.mask_path is None:
        return [Problem("warning", "no mask path", rec.image_path, f"{rec.image_path}: anomalous image without a mask")]
    try:
        if quick:
            mhw = image_hw(rec.mask_path)
        else:
            mask = load_mask(rec.mask_path, info.mask_threshold)
            mhw = mask.shape
            if not mask.any():
                out.append(
                    Problem(
                        "warning", "empty mask", rec.mask_path, f"{rec.mask_path}: mask of an anomalous image is empty"
                    )
                )
        image_hw_, mask_hw = cast(tuple[int, int], tuple(hw)), cast(tuple[int, int], tuple(mhw))  # both (H, W)
        check_mask_size(rec.image_path, rec.mask_path, image_hw_, mask_hw)
    except MaskSizeError as exc:
        severity = "error" if info.mask_size_must_match else "note"
        out.append(Problem(severity, "mask size", exc.path, str(exc)))
    except ImageReadError as exc:
        out.append(Problem("error", f"mask {exc.kind}", exc.path, str(exc)))
    return out


def _compare(count: SplitCount) -> Problem | None:
    if count.expected is None or (count.normal, count.anomalous) == tuple(count.expected):
        return None
    n, a = count.expected
    return Problem(
        "warning",
        "count",
        None,
        f"{count.category}/{count.split}: {count.normal} normal / {count.anomalous} anomalous, published {n} / {a}",
    )


def check_dataset(
    family: DatasetFamily,
    root: Path,
    categories: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    quick: bool = False,
    workers: int | None = None,
) -> CheckReport:
    """Walk a dataset copy through its loader and decode every image and mask.

    Args:
        family: the dataset loader.
        root: the dataset folder.
        categories: the categories to check (default: all found).
        splits: the splits to check (default: the dataset's splits).
        quick: read file headers only (finds missing files and size mismatches, not truncation).
        workers: decoding threads (default: up to 8, one per CPU).

    Returns:
        The report; ``report.ok()`` is False on a broken copy.
    """
    info = family.info()
    report = CheckReport(info.name, Path(root))
    try:
        if not Path(root).is_dir():  # a generated dataset (synth) creates its folder on first use
            probe = list(categories or info.categories)
            if not probe:
                require_root(Path(root), info)
            family.records(Path(root), probe[0], "test")
        found = family.available_categories(require_root(Path(root), info))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        report.problems.append(Problem("error", "dataset", Path(root), str(exc).strip("'\"")))
        return report
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for cat in categories or found:
            for split in splits or info.splits:
                _check_split(family, info, Path(root), cat, split, quick, pool, report)
    _check_totals(info, report, splits or info.splits, complete=not categories)
    return report


def _check_split(
    family: DatasetFamily,
    info: DatasetInfo,
    root: Path,
    cat: str,
    split: str,
    quick: bool,
    pool: ThreadPoolExecutor,
    report: CheckReport,
) -> None:
    count = SplitCount(cat, split, expected=info.expected.get(cat, {}).get(split))
    try:
        records = family.records(root, cat, split)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        report.problems.append(Problem("error", "category", root / cat, str(exc).strip("'\"")))
        report.counts.append(count)
        return
    count.normal = sum(r.label == 0 for r in records)
    count.anomalous = len(records) - count.normal
    report.counts.append(count)
    report.n_images += len(records)
    if split == "test" and not records:
        report.problems.append(Problem("error", "empty", root / cat, f"{cat}: no test images found"))
    for problems in pool.map(lambda r: _check_record(r, info, quick), records):
        report.problems.extend(problems)
    mismatch = _compare(count)
    if mismatch:
        report.problems.append(mismatch)


def _check_totals(info: DatasetInfo, report: CheckReport, splits: Sequence[str], complete: bool) -> None:
    for split in splits:
        rows = [c for c in report.counts if c.split == split]
        published = info.expected_totals.get(split)
        if not complete or published is None or any(c.expected is not None for c in rows):
            continue
        total = (sum(c.normal for c in rows), sum(c.anomalous for c in rows))
        if total != tuple(published):
            msg = f"{split} total: {total[0]} normal / {total[1]} anomalous, published {published[0]} / {published[1]}"
            report.problems.append(Problem("warning", "count", None, msg))


# ----------------------------------------------------------------------------- output
def _fmt(counts: tuple[int, int] | None) -> str:
    return "?" if counts is None else f"{counts[0]}/{counts[1]}"


def _print_report(report: CheckReport, console: Console, show: int, strict: bool) -> None:
    if report.counts:
        table = Table(title=f"data check {report.dataset}: {report.root}")
        table.add_column("category", no_wrap=True)
        for col in ("split", "normal/anomalous", "published", "problems"):
            table.add_column(col, overflow="fold")
        for c in report.counts:
            differs = c.expected is not None and (c.normal, c.anomalous) != tuple(c.expected)
            table.add_row(
                c.category, c.split, _fmt((c.normal, c.anomalous)), _fmt(c.expected), "count" if differs else ""
            )
        console.print(table)
    kinds = Counter((p.severity, p.kind) for p in report.problems)
    for (severity, kind), n in sorted(kinds.items()):
        console.print(f"{severity}: {n} × {kind}", markup=False)
    order = {"error": 0, "warning": 1}
    for p in sorted(report.problems, key=lambda p: order.get(p.severity, 2))[:show]:
        style = {"error": "bold red", "warning": "yellow"}.get(p.severity, "")
        console.print(Text.assemble((p.severity.upper(), style), " ", p.message), soft_wrap=True)
    if len(report.problems) > show:
        console.print(f"... {len(report.problems) - show} more (show=<n> to list them)", markup=False)
    verdict = "OK" if report.ok(strict) else "BROKEN"
    errors, warnings = len(report.by_severity("error")), len(report.by_severity("warning"))
    console.print(f"{verdict}: {report.n_images} images, {errors} errors, {warnings} warnings", markup=False)


def _info_lines(name: str) -> list[str]:
    entry = DATASETS.entry(name)
    info: DatasetInfo = entry.obj.info()
    d = info.download
    lines = [
        f"{name}: {entry.card.title} — {entry.card.summary}",
        f"  domain {info.domain}, modality {info.modality}; image labels: {'yes' if info.has_image_labels else 'no'}, "
        f"pixel masks: {'yes' if info.has_masks else 'no'} (mask value > {info.mask_threshold} is anomalous)",
        f"  categories ({len(info.categories) or 'from the data'}): "
        + ", ".join(f"{c} ('{info.prompt_name(c)}')" for c in info.categories),
        f"  splits {', '.join(info.splits)}; test counts {_fmt(info.expected_counts('test'))} (normal/anomalous)",
        f"  counts: {info.count_notes or '-'}",
        f"  default auxiliary training set: {info.default_aux or '-'}; overlaps: {', '.join(info.overlaps) or '-'}",
        f"  folder: <paths.data_root>/{info.subdir or name}  (or dataset.root=<dir>)",
        f"  download: {d.page or '-'}",
    ]
    lines += [
        f"  {k}: {v}"
        for k, v in (("archive", d.archive), ("sha256", d.sha256), ("md5", d.md5), ("notes", d.notes))
        if v
    ]
    lines.append(f"  loader: {entry.origin}")
    return lines


def _list(console: Console) -> int:
    table = Table(title="zsad-bench datasets")
    table.add_column("name", no_wrap=True)
    for col in ("domain", "modality", "categories", "image GT", "pixel GT", "test normal/anomalous", "aux"):
        table.add_column(col, overflow="fold")
    for entry in DATASETS.entries():
        i = entry.obj.info()
        yn = ("no", "yes")
        n_cat = str(len(i.categories)) if i.categories else "data"
        row = (
            entry.name,
            i.domain,
            i.modality,
            n_cat,
            yn[i.has_image_labels],
            yn[i.has_masks],
            _fmt(i.expected_counts("test")),
            i.default_aux or "",
        )
        table.add_row(*row)
    console.print(table)
    return 0


def _check(args: Sequence[str], console: Console) -> int:
    ov = parse_overrides(args)
    if "dataset" not in ov:
        console.print("data check needs dataset=<name>\n" + USAGE, markup=False)
        return 2
    opt_keys = [k for k in ov if k.startswith("dataset.") and k != "dataset.root"]
    options = {k.rsplit(".", 1)[1]: _value(ov[k]) for k in opt_keys}
    family = build_family(ov["dataset"], options)
    root = dataset_root(family.info(), ov)
    split_list = ov["splits"].split(",") if ov.get("splits") else None
    report = check_dataset(
        family,
        root,
        categories=ov["categories"].split(",") if ov.get("categories") else None,
        splits=split_list,
        quick=bool(_value(ov.get("quick", "false"))),
        workers=int(ov["workers"]) if ov.get("workers") else None,
    )
    strict = bool(_value(ov.get("strict", "false")))
    _print_report(report, console, int(ov.get("show", 30)), strict)
    return 0 if report.ok(strict) else 1


def main(argv: Sequence[str]) -> int:
    """Run ``zsad-bench data ...``; returns the exit code (0 ok, 1 broken copy, 2 usage error)."""
    console = Console()
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        console.print(USAGE, markup=False)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "list":
            return _list(console)
        if cmd == "info" and len(rest) == 1:
            console.print("\n".join(_info_lines(rest[0])), markup=False, highlight=False, soft_wrap=True)
            return 0
        if cmd == "check":
            return _check(rest, console)
    except (KeyError, TypeError, ValueError) as exc:
        console.print(f"zsad-bench data {cmd}: {str(exc).strip(chr(39) + chr(34))}", markup=False, highlight=False)
        return 2
    console.print(USAGE, markup=False)
    return 2
