"""Leaderboards from job result files: tables of methods × datasets, categories and domains.

Reads only ``metrics.json`` files under a results folder (:func:`load_results`), never the
models. Definitions:

* A **row** is a method setting: method, backbone, shots, variant (extra overrides) and, when
  several sweeps are read at once, the sweep. Only the parts that vary are shown in its label.
* A **cell** is the mean over seeds of the job's value (the dataset summary, i.e. the
  unweighted mean over categories), ± the sample std when there are several seeds.
* **Average**: the mean of a row's dataset cells, shown only when the row has every dataset.
* **Rank** (AdaCLIP Tables 1–2): per dataset and metric, rows are ranked by their cell
  (1 = best, ties share the average rank); a row's rank is the mean over the datasets.
* **Domain means**: per domain, the mean over datasets of the mean over that dataset's
  categories of the domain (a "mixed" dataset such as ``synth`` contributes to several).
* **Reported rows**: see :mod:`zsad_bench.reported`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from zsad_bench.results import METRICS_FILE, metric_value, read_result
from zsad_bench.tables import Row, Table

__all__ = [
    "DEFAULT_METRICS",
    "Results",
    "category_table",
    "domain_table",
    "failures",
    "leaderboard_table",
    "load_results",
    "split_overrides",
    "usable_cells",
    "wide_frames",
]

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("image_auroc", "image_f1max", "pixel_auroc", "pixel_aupro")
ENTRY_KEYS = ("method", "backbone", "shots", "variant", "sweep")
SETTING = ("method", "dataset", "backbone", "shots", "seed", "variant", "sweep")
JOB_COLUMNS = (
    "job",
    *SETTING,
    "domain",
    "random_weights",
    "status",
    "error",
    "failed_categories",
    "n_categories",
    "n_skipped",
    "created",
    "ok_categories",
)
LONG_COLUMNS = ("job", *SETTING, "random_weights", "status", "category", "domain", "metric", "value", "reason")
RANDOM_NOTE = "‡ random backbone weights: a smoke test, not comparable with published numbers."
PARTIAL_NOTE = "* some categories failed in at least one job; its mean covers the others (see failures)."


@dataclass
class Results:
    """The job files of a results folder as two DataFrames.

    Attributes:
        root: the folder read.
        jobs: one row per job (status, error, setting, label of its leaderboard row).
        long: one row per (job, category or "mean", metric) with the value as a fraction.
    """

    root: Path
    jobs: pd.DataFrame
    long: pd.DataFrame


# ----------------------------------------------------------------------------- loading
def _job_row(rel: str, data: dict) -> dict:
    cats = data["categories"].values()
    return {
        "job": rel,
        "sweep": data["job"].get("sweep", ""),
        "method": data["method"]["name"],
        "dataset": data["test"]["dataset"],
        "domain": data["test"].get("domain", ""),
        "backbone": data["backbone"].get("name", ""),
        "shots": int(data["shots"]),
        "seed": int(data["seed"]),
        "variant": data["job"].get("variant", "") or "",
        "random_weights": bool(data["backbone"].get("random_weights")),
        "status": data["status"],
        "error": (data.get("error") or {}).get("message", ""),
        "failed_categories": ", ".join(k for k, c in data["categories"].items() if c["status"] == "failed"),
        "n_categories": len(data["categories"]),
        "n_skipped": len(data["skipped"]),
        "created": data.get("created", ""),
        "ok_categories": sum(c["status"] == "ok" for c in cats),
    }


def _long_rows(job: dict, data: dict) -> list[dict]:
    base = {k: job[k] for k in ("job", *SETTING)}
    base.update(random_weights=job["random_weights"], status=job["status"])
    rows = []
    for name, cat in data["categories"].items():
        for metric, entry in cat["metrics"].items():
            rows.append(
                {
                    **base,
                    "category": name,
                    "domain": cat.get("domain", ""),
                    "metric": metric,
                    "value": metric_value(entry),
                    "reason": entry.get("reason"),
                }
            )
    for metric, entry in data["summary"].items():
        rows.append(
            {
                **base,
                "category": "mean",
                "domain": job["domain"],
                "metric": metric,
                "value": metric_value(entry),
                "reason": entry.get("reason"),
            }
        )
    return rows


def load_results(root: Path | str) -> Results:
    """Read every ``metrics.json`` under ``root`` (invalid files become jobs with status "invalid").

    Raises:
        FileNotFoundError: when ``root`` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist; run a sweep first (zsad-bench -m ...)")
    jobs, long = [], []
    for path in sorted(root.rglob(METRICS_FILE)):
        rel = str(path.parent.relative_to(root)) if path.parent != root else "."
        try:
            data = read_result(path)
        except ValueError as exc:
            logger.warning("%s", exc)
            jobs.append({"job": rel, "status": "invalid", "error": str(exc)})
            continue
        job = _job_row(rel, data)
        jobs.append(job)
        long += _long_rows(job, data)
    jobs_df = pd.DataFrame(jobs, columns=[*JOB_COLUMNS, "entry"])
    long_df = pd.DataFrame(long, columns=[*LONG_COLUMNS, "entry"])
    _label_entries(jobs_df, long_df)
    return Results(root, jobs_df, _dedupe(long_df, jobs_df))


def split_overrides(text: str) -> list[str]:
    """Split Hydra's ``override_dirname`` at the commas that separate overrides (not inside brackets).

    Example:
        >>> split_overrides("dataset.categories=[a,b],method.k=3")
        ['dataset.categories=[a,b]', 'method.k=3']
    """
    out, depth, cur = [], 0, ""
    for ch in text or "":
        depth += 1 if ch in "[{(" else (-1 if ch in "]})" else 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [t for t in [*out, cur] if t]


def _label_entries(jobs: pd.DataFrame, long: pd.DataFrame) -> None:
    """Give every job the label of its leaderboard row: the method, then the setting parts that vary.

    Overrides shared by every job (e.g. ``dataset.categories=[...]`` on a whole sweep) are not repeated.
    """
    valid = jobs[jobs["status"] != "invalid"]
    varying = [k for k in ENTRY_KEYS[1:] if valid[k].astype(str).nunique() > 1]
    token_sets = [set(split_overrides(v)) for v in valid["variant"].fillna("")]
    common = set.intersection(*token_sets) if token_sets else set()

    def label(row: pd.Series) -> str:
        parts = []
        for k in varying:
            v = row[k]
            if k == "shots":
                parts.append(f"{int(v)}-shot")
            elif k == "variant":
                parts += [t for t in split_overrides(v) if t not in common]
            elif v not in ("", None) and not (isinstance(v, float) and math.isnan(v)):
                parts.append(str(v))
        return f"{row['method']} [{', '.join(parts)}]" if parts else str(row["method"])

    jobs["entry"] = [label(r) if r["status"] != "invalid" else "" for _, r in jobs.iterrows()]
    long["entry"] = long["job"].map(dict(zip(jobs["job"], jobs["entry"], strict=True)))


def _dedupe(long: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """Keep the newest job when two jobs give the same (row, dataset, seed)."""
    valid = jobs[jobs["status"] != "invalid"].sort_values("created")
    keep = valid.drop_duplicates(["entry", "dataset", "seed"], keep="last")["job"]
    dropped = sorted(set(valid["job"]) - set(keep))
    if dropped:
        logger.warning("duplicate jobs for the same row, dataset and seed; keeping the newest, ignoring %s", dropped)
    return long[long["job"].isin(set(keep))].reset_index(drop=True)


# ----------------------------------------------------------------------------- building blocks
def usable_cells(results: Results) -> pd.DataFrame:
    """The long rows of finished jobs (status ok or partial)."""
    return results.long[results.long["status"].isin(("ok", "partial"))]


def _row_meta(results: Results, labels: Sequence[str]) -> list[Row]:
    jobs = results.jobs[results.jobs["entry"].isin(labels)]
    rows = []
    for label in labels:
        mine = jobs[jobs["entry"] == label]
        marks = ("‡" if mine["random_weights"].any() else "") + ("*" if (mine["status"] == "partial").any() else "")
        rows.append(Row(label, "ours", marks))
    return rows


def _stats(cells: pd.DataFrame, group: str, scale: float) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (entry, group, metric)."""
    g = cells.assign(value=cells["value"] * scale).groupby(["entry", group, "metric"])["value"]
    return g.agg(["mean", "std", "count"]).reset_index().rename(columns={group: "group", "count": "n"})


def _average(cells: pd.DataFrame, stats: pd.DataFrame, groups: list[str], scale: float) -> pd.DataFrame:
    """The Average group: mean of a row's cells when it has every group; std over seeds whose cells are complete."""
    out = []
    for (entry, metric), part in stats.groupby(["entry", "metric"]):
        have = part.dropna(subset=["mean"])
        if set(have["group"]) != set(groups):
            continue
        mine = cells[(cells["entry"] == entry) & (cells["metric"] == metric)]
        per_seed = mine.pivot_table(index="seed", columns="dataset", values="value", aggfunc="mean").dropna()
        per_seed = per_seed.reindex(columns=groups).dropna() * scale
        std = per_seed.mean(axis=1).std() if len(per_seed) > 1 else math.nan
        out.append(
            {
                "entry": entry,
                "group": "Average",
                "metric": metric,
                "mean": have["mean"].mean(),
                "std": std,
                "n": len(per_seed),
            }
        )
    return pd.DataFrame(out, columns=["entry", "group", "metric", "mean", "std", "n"])


def _rank(stats: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """The Rank group: per metric, :func:`zsad_bench.metrics.average_ranks` of the row means over the groups.

    Only groups where every row has a value are ranked (so every row is ranked on the same datasets).
    """
    from zsad_bench.metrics import average_ranks

    out = []
    for metric, part in stats[stats["group"].isin(groups)].groupby("metric"):
        frame = part.pivot_table(index="entry", columns="group", values="mean", aggfunc="first", dropna=False)
        try:
            ranks = average_ranks(frame)
        except ValueError:  # no dataset has a value for every row
            continue
        n = int(frame.notna().all(axis=0).sum())
        out += [
            {"entry": e, "group": "Rank", "metric": metric, "mean": r, "std": math.nan, "n": n}
            for e, r in ranks.items()
        ]
    return pd.DataFrame(out, columns=["entry", "group", "metric", "mean", "std", "n"])


def wide_frames(stats: pd.DataFrame, labels: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean, std and n as row-label × (group, metric) frames, rows in ``labels`` order."""
    out = []
    for what in ("mean", "std", "n"):
        wide = stats.pivot_table(index="entry", columns=["group", "metric"], values=what, aggfunc="first", dropna=False)
        out.append(wide.reindex(index=labels))
    return out[0], out[1], out[2]


def _table(
    stats: pd.DataFrame,
    rows: list[Row],
    groups: list[str],
    metrics: list[str],
    title: str,
    precision: int,
    notes: list[str],
) -> Table:
    mean, std, n = wide_frames(stats, [r.label for r in rows]) if not stats.empty else (pd.DataFrame(),) * 3
    marks = "".join(r.marks for r in rows)
    footnotes = [note for sym, note in (("‡", RANDOM_NOTE), ("*", PARTIAL_NOTE)) if sym in marks] + notes
    return Table(title, rows, groups, metrics, mean, std, n, precision, footnotes)


def _ordered(values: pd.Series, wanted: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in wanted if v in present] if wanted else sorted(present)


# ----------------------------------------------------------------------------- tables
def leaderboard_table(
    results: Results,
    metrics: Sequence[str] = DEFAULT_METRICS,
    datasets: Sequence[str] | None = None,
    scale: float = 100.0,
    precision: int = 1,
    average: bool = True,
    rank: bool = True,
) -> Table:
    """Rows = method settings, column groups = datasets (+ Average, Rank), one column per metric."""
    cells = usable_cells(results)
    cells = cells[(cells["category"] == "mean") & cells["metric"].isin(metrics)]
    groups = _ordered(cells["dataset"], datasets)
    cells = cells[cells["dataset"].isin(groups)]
    stats = _stats(cells, "dataset", scale)
    extra, notes = [], ["Values: percent, mean over seeds (± sample std with several seeds)."]
    if average and len(groups) > 1:
        extra.append(_average(cells, stats, groups, scale))
    if rank and len(groups) > 0 and cells["entry"].nunique() > 1:
        extra.append(_rank(stats, groups))
        notes.append("Rank: mean over the datasets every row has of the per-dataset rank (1 = best).")
    stats = pd.concat([stats, *[e for e in extra if not e.empty]], ignore_index=True)
    all_groups = groups + [g for g in ("Average", "Rank") if g in set(stats["group"])]
    labels = sorted(cells["entry"].unique())
    present = [m for m in metrics if m in set(cells["metric"])]
    return _table(stats, _row_meta(results, labels), all_groups, present, "Leaderboard", precision, notes)


def category_table(
    results: Results,
    dataset: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    scale: float = 100.0,
    precision: int = 1,
) -> Table:
    """Rows = method settings, column groups = the dataset's categories, then its Mean."""
    cells = usable_cells(results)
    cells = cells[(cells["dataset"] == dataset) & cells["metric"].isin(metrics)]
    cats = sorted(c for c in cells["category"].unique() if c != "mean")
    cells = cells.assign(group=cells["category"].where(cells["category"] != "mean", "Mean"))
    stats = _stats(cells, "group", scale)
    labels = sorted(cells["entry"].unique())
    present = [m for m in metrics if m in set(cells["metric"])]
    notes = ["Values: percent, mean over seeds (± sample std with several seeds)."]
    return _table(
        stats, _row_meta(results, labels), [*cats, "Mean"], present, f"{dataset} per category", precision, notes
    )


def domain_table(
    results: Results,
    metrics: Sequence[str] = DEFAULT_METRICS,
    scale: float = 100.0,
    precision: int = 1,
) -> Table:
    """Rows = method settings, column groups = domains.

    A dataset contributes, per domain, the mean over its categories of that domain (a pure
    dataset: its summary; a mixed one: one part per domain); a domain mean is the mean of its
    parts (:func:`zsad_bench.metrics.domain_means`, NaN when a row lacks a part), per seed,
    then mean ± std over seeds.
    """
    from zsad_bench.metrics import domain_means

    cells = usable_cells(results)
    cells = cells[(cells["category"] != "mean") & cells["metric"].isin(metrics)]
    parts = cells.assign(part=cells["dataset"] + "[" + cells["domain"].astype(str) + "]")
    per_part = parts.groupby(["entry", "seed", "part", "domain", "metric"], as_index=False)["value"].mean()
    part_domain = dict(zip(per_part["part"], per_part["domain"], strict=True))
    rows = []
    for metric, m in per_part.groupby("metric"):
        frame = m.pivot_table(index=["entry", "seed"], columns="part", values="value", aggfunc="first", dropna=False)
        means = domain_means(frame, part_domain).rename_axis(columns="domain")
        means = means.stack(future_stack=True).rename("value").reset_index()
        rows.append(means.assign(metric=metric))
    per_domain = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["entry", "seed", "domain", "metric", "value"])
    )
    stats = _stats(per_domain.dropna(subset=["value"]), "domain", scale)
    labels = sorted(per_domain["entry"].unique())
    present = [m for m in metrics if m in set(per_domain["metric"])]
    notes = ["Domain mean: mean over datasets of the mean over their categories of that domain."]
    domains = sorted(per_domain["domain"].unique())
    return _table(stats, _row_meta(results, labels), domains, present, "Domain means", precision, notes)


def failures(results: Results) -> pd.DataFrame:
    """Everything that did not go to plan: failed, invalid and partial jobs, skipped images (counts)."""
    j = results.jobs
    bad = j[(j["status"] != "ok") | (j["n_skipped"].fillna(0) > 0)]
    cols = ["job", "status", "error", "failed_categories", "n_skipped"]
    return bad[cols].astype(object).fillna("").reset_index(drop=True)
