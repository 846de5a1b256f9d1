"""The papers' reported numbers (``results/paper_reported.csv``) beside ours, with the delta.

The file has one row per published number: ``source,table,page,method,dataset,category,domain,
shots,metric,value,note``, values in percent as printed, ``category`` empty for a dataset
mean. A reported number matches our row when method, shots, dataset, category and metric
agree (any backbone); a reported method named in :data:`FEW_SHOT_ALIASES` is our registry
method with ``shots`` > 0. Rows from random weights are left out of the comparison unless
``compare_random`` is set: their numbers say nothing about a reproduction.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from zsad_bench.leaderboard import Results, usable_cells, wide_frames
from zsad_bench.tables import Row, Table

__all__ = ["FEW_SHOT_ALIASES", "REPORTED_COLUMNS", "add_reported", "load_reported", "reported_comparison"]

REPORTED_COLUMNS = (
    "source",
    "table",
    "page",
    "method",
    "dataset",
    "category",
    "domain",
    "shots",
    "metric",
    "value",
    "note",
)
FEW_SHOT_ALIASES = {"anomalyclip_plus": "anomalyclip"}  # the AdaptCLIP paper's AnomalyCLIP+ = ours, shots > 0
REPORTED_NOTE = "† reported in the cited paper (source, table, page); Δ = ours − reported."


def load_reported(path: Path | str | None) -> pd.DataFrame:
    """Read ``paper_reported.csv`` (percent values); a missing file gives an empty table.

    Raises:
        ValueError: naming the file and its missing columns.
    """
    if path is None or not Path(path).is_file():
        return pd.DataFrame(columns=REPORTED_COLUMNS)
    df = pd.read_csv(path, dtype={"category": str, "table": str, "page": str, "source": str})
    missing = [c for c in ("source", "method", "dataset", "metric", "value") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {', '.join(REPORTED_COLUMNS)}")
    for col in REPORTED_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df["category"] = df["category"].fillna("").astype(str).str.strip()
    df.loc[df["category"].str.lower().isin(("mean", "average", "avg", "all")), "category"] = ""
    df["shots"] = pd.to_numeric(df["shots"], errors="coerce").fillna(0).astype(int)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df.fillna({"table": "", "page": "", "note": ""}).dropna(subset=["value"])


def _source_label(row: pd.Series) -> str:
    parts = [str(row["source"])]
    table = str(row["table"]).strip()
    if table:
        parts.append(f"T{table}" if table.isdigit() else table)
    if str(row["page"]).strip():
        parts.append(f"p.{row['page']}")
    return " ".join(parts)


def reported_comparison(
    results: Results, reported: pd.DataFrame, scale: float = 100.0, compare_random: bool = False
) -> pd.DataFrame:
    """Ours next to every matching reported number (method, shots, dataset, category, metric), with the delta."""
    cols = [
        "entry",
        "method",
        "shots",
        "dataset",
        "category",
        "metric",
        "ours",
        "ours_std",
        "n_seeds",
        "reported",
        "delta",
        "source",
        "table",
        "page",
        "random_weights",
    ]
    cells = usable_cells(results)
    if not compare_random:
        cells = cells[~cells["random_weights"]]
    if cells.empty or reported.empty:
        return pd.DataFrame(columns=cols)
    cells = cells.assign(category=cells["category"].where(cells["category"] != "mean", ""))
    keys = ["entry", "method", "shots", "dataset", "category", "metric"]
    ours = cells.groupby(keys, as_index=False).agg(
        ours=("value", "mean"),
        ours_std=("value", "std"),
        n_seeds=("value", "count"),
        random_weights=("random_weights", "any"),
    )
    ours[["ours", "ours_std"]] *= scale
    rep = reported.rename(columns={"value": "reported"})[
        ["method", "shots", "dataset", "category", "metric", "reported", "source", "table", "page"]
    ]
    few_shot_alias = rep["method"].isin(list(FEW_SHOT_ALIASES)) & (rep["shots"] > 0)
    rep = rep.assign(method=rep["method"].where(~few_shot_alias, rep["method"].map(FEW_SHOT_ALIASES)))
    merged = ours.merge(rep, on=["method", "shots", "dataset", "category", "metric"], how="inner")
    merged["reported"] = merged["reported"] * scale / 100.0
    merged["delta"] = merged["ours"] - merged["reported"]
    return merged[cols].sort_values(["entry", "dataset", "category", "metric", "source"]).reset_index(drop=True)


def add_reported(table: Table, comparison: pd.DataFrame) -> Table:
    """Insert, under each of our rows, one reported row per source and its Δ row (dataset means only)."""
    comp = comparison[(comparison["category"] == "") & comparison["dataset"].isin(table.groups)]
    if comp.empty:
        return table
    comp = comp.assign(src=comp.apply(_source_label, axis=1))
    rows, extra = [], []
    for row in table.rows:
        rows.append(row)
        for src, part in comp[comp["entry"] == row.label].groupby("src", sort=True):
            for kind, label in (("reported", f"{row.label} ({src})"), ("delta", f"Δ {row.label} vs {src}")):
                rows.append(Row(label, kind, "†" if kind == "reported" else ""))
                extra += [
                    {
                        "entry": label,
                        "group": r.dataset,
                        "metric": r.metric,
                        "mean": getattr(r, kind),
                        "std": math.nan,
                        "n": 1,
                    }
                    for r in part.itertuples()
                ]
    extra_df = pd.DataFrame(extra)
    mean, std, n = wide_frames(extra_df, [r.label for r in rows if r.kind != "ours"])
    table.mean = pd.concat([table.mean, mean]).reindex(index=[r.label for r in rows])
    table.std = pd.concat([table.std, std]).reindex(index=[r.label for r in rows])
    table.n = pd.concat([table.n, n]).reindex(index=[r.label for r in rows])
    table.rows = rows
    table.footnotes.append(REPORTED_NOTE)
    return table
