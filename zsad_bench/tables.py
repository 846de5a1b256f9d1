"""A leaderboard table and its exports: CSV, Markdown and LaTeX (booktabs).

A :class:`Table` holds, for every row (a method setting), column group (a dataset, a
category, "Average", "Rank") and metric, the mean over seeds, the sample standard deviation
(ddof = 1, NaN for one seed) and the number of seeds. Values are in the display scale
(percent for metrics, plain numbers for ranks).

Highlighting follows the papers: per column, the best value among the ranked rows is
**bold** and the second best is underlined, comparing the values as displayed (rounded), so
that ties are highlighted alike. Rows of reported numbers, deltas and rows that are not
ranked are never highlighted. ``pair=True`` puts all metrics of a group into one cell,
"(AUROC, max-F1)" as in AdaCLIP Tables 1–2.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["METRIC_LABELS", "Row", "Table", "latex_escape", "to_csv", "to_latex", "to_markdown"]

METRIC_LABELS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "pixel_aupro": "P-AUPRO",
    "rank": "Rank",
}
LOWER_IS_BETTER_GROUPS = ("Rank",)


@dataclass
class Row:
    """One table row.

    Attributes:
        label: what the first column shows.
        kind: "ours" (measured, ranked), "reported" (a paper's number), "delta" (ours − reported)
            or "unranked" (measured but excluded from highlighting).
        marks: footnote symbols appended to the label ("‡" random weights, "*" partial, "†" reported).
    """

    label: str
    kind: str = "ours"
    marks: str = ""


@dataclass
class Table:
    """Mean, std and seed count per (row, group, metric).

    Attributes:
        title: a caption.
        rows: the rows in display order.
        groups: column groups in display order.
        metrics: the metrics of each group (a group may lack some: its cells are empty).
        mean: DataFrame indexed by row label, columns MultiIndex (group, metric).
        std: same shape; NaN where fewer than two seeds.
        n: same shape; number of seeds (0 where no value).
        precision: decimals shown.
        footnotes: lines printed under the table.
    """

    title: str
    rows: list[Row]
    groups: list[str]
    metrics: list[str]
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    precision: int = 1
    footnotes: list[str] = field(default_factory=list)

    def value(self, row: str, group: str, metric: str, what: str = "mean") -> float:
        """One cell's mean (or "std", "n"); NaN when absent."""
        frame = {"mean": self.mean, "std": self.std, "n": self.n}[what]
        key = (group, metric)
        if row not in frame.index or key not in frame.columns:
            return math.nan
        v = frame.at[row, key]
        return math.nan if pd.isna(v) else float(v)

    def highlight(self, group: str, metric: str) -> dict[str, str]:
        """Row label → "best" / "second" for one column (ranked rows only, compared as displayed)."""
        lower = group in LOWER_IS_BETTER_GROUPS
        shown = {}
        for r in self.rows:
            v = self.value(r.label, group, metric)
            if r.kind == "ours" and not math.isnan(v):
                shown[r.label] = round(v, self.precision)
        distinct = sorted(set(shown.values()), reverse=not lower)
        if len(shown) < 2:
            return {}
        out = {lab: "best" for lab, v in shown.items() if v == distinct[0]}
        if len(distinct) > 1:
            out.update({lab: "second" for lab, v in shown.items() if v == distinct[1]})
        return out

    def columns(self) -> list[tuple[str, str]]:
        """(group, metric) pairs present, in display order."""
        present = set(self.mean.columns)
        return [(g, m) for g in self.groups for m in self.metrics if (g, m) in present]


# ----------------------------------------------------------------------------- text of a cell
def _number(v: float, precision: int, signed: bool) -> str:
    return f"{v:+.{precision}f}" if signed else f"{v:.{precision}f}"


def _cell(t: Table, row: Row, group: str, metric: str, fmt: str, marks: dict[str, str]) -> str:
    mean = t.value(row.label, group, metric)
    if math.isnan(mean):
        return "–" if fmt != "tex" else "--"
    text = _number(mean, t.precision, signed=row.kind == "delta")
    mark = marks.get(row.label)
    if mark == "best":
        text = {"md": f"**{text}**", "tex": rf"\textbf{{{text}}}"}.get(fmt, text)
    elif mark == "second":
        text = {"md": f"<u>{text}</u>", "tex": rf"\underline{{{text}}}"}.get(fmt, text)
    std = t.value(row.label, group, metric, "std")
    if not math.isnan(std):
        pm = r"$\pm$" if fmt == "tex" else "±"
        text = f"{text} {pm} {std:.{t.precision}f}"
    return text


def _cells(t: Table, row: Row, fmt: str, pair: bool) -> list[str]:
    marks = {k: t.highlight(*k) for k in t.columns()}
    if not pair:
        return [_cell(t, row, g, m, fmt, marks[(g, m)]) for g, m in t.columns()]
    out = []
    for g in t.groups:
        parts = [_cell(t, row, g, m, fmt, marks[(g, m)]) for m in t.metrics if (g, m) in marks]
        out.append(f"({', '.join(parts)})" if parts else "")
    return out


def _metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _pair_header(t: Table) -> str:
    return "(" + ", ".join(_metric_label(m) for m in t.metrics) + ")"


# ----------------------------------------------------------------------------- CSV
def to_csv(t: Table, path: Path) -> None:
    """Wide CSV: row, kind, marks, then ``<group>/<metric>``, ``…_std``, ``…_n`` (full precision)."""
    cols = t.columns()
    header = ["row", "kind", "marks"]
    for g, m in cols:
        header += [f"{g}/{m}", f"{g}/{m}_std", f"{g}/{m}_n"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in t.rows:
            line: list[object] = [r.label, r.kind, r.marks]
            for g, m in cols:
                vals = [t.value(r.label, g, m, k) for k in ("mean", "std", "n")]
                line += ["" if math.isnan(v) else (int(v) if k == 2 else v) for k, v in enumerate(vals)]
            w.writerow(line)


# ----------------------------------------------------------------------------- Markdown
def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def to_markdown(t: Table, pair: bool = False) -> str:
    """A GitHub-flavoured Markdown table with the title above and the footnotes below."""
    if pair:
        head = ["Method", *(f"{g} {_pair_header(t)}" for g in t.groups)]
    else:
        head = ["Method", *(f"{g} {_metric_label(m)}" for g, m in t.columns())]
    lines = [f"**{_md_escape(t.title)}**", "", "| " + " | ".join(map(_md_escape, head)) + " |"]
    lines.append("|" + "|".join([":---", *[":---:"] * (len(head) - 1)]) + "|")
    for r in t.rows:
        cells = [_md_escape(r.label + r.marks), *_cells(t, r, "md", pair)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"{_md_escape(n)}  " for n in t.footnotes)] if t.footnotes else []
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- LaTeX
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "Δ": r"$\Delta$",
    "–": "--",
    "−": "-",
}


def latex_escape(text: str) -> str:
    r"""Escape LaTeX specials (and map ±, †, ‡, Δ to math).

    Example:
        >>> latex_escape("mvtec_ad 50%")
        'mvtec\\_ad 50\\%'
    """
    return "".join(_TEX.get(c, c) for c in str(text))


def _tex_row(cells: Sequence[str]) -> str:
    return " & ".join(cells) + r" \\"


def _tex_header(t: Table, pair: bool) -> list[str]:
    if pair:
        return [_tex_row([latex_escape(_pair_header(t)), *(latex_escape(g) for g in t.groups)])]
    cols = t.columns()
    spans, rules, start = [], [], 2
    for g in t.groups:
        k = sum(1 for c in cols if c[0] == g)
        if k:
            spans.append(rf"\multicolumn{{{k}}}{{c}}{{{latex_escape(g)}}}" if k > 1 else latex_escape(g))
            rules.append(rf"\cmidrule(lr){{{start}-{start + k - 1}}}")
            start += k
    metric_row = _tex_row(["", *(latex_escape(_metric_label(m)) for _, m in cols)])
    return [_tex_row(["Method", *spans]), " ".join(rules), metric_row]


def to_latex(t: Table, pair: bool = False, label: str = "tab:leaderboard") -> str:
    r"""A complete ``table`` environment with booktabs rules (needs ``\usepackage{booktabs}``)."""
    n_cols = len(t.groups) if pair else len(t.columns())
    lines = [
        r"% zsad-bench leaderboard; requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(t.title)}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\linewidth}{!}{%" if n_cols > 6 else "",
        rf"\begin{{tabular}}{{l{'c' * n_cols}}}",
        r"\toprule",
        *_tex_header(t, pair),
        r"\midrule",
    ]
    for r in t.rows:
        lines.append(_tex_row([latex_escape(r.label + r.marks), *_cells(t, r, "tex", pair)]))
    lines += [r"\bottomrule", r"\end{tabular}", "}" if n_cols > 6 else ""]
    if t.footnotes:
        lines.append(r"\par\footnotesize " + r" \\ ".join(latex_escape(n) for n in t.footnotes))
    lines.append(r"\end{table}")
    return "\n".join(line for line in lines if line) + "\n"
