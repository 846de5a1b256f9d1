"""``zsad-bench leaderboard RESULTS_DIR``: tables from the job files of a results folder.

Prints the leaderboard (Markdown) and the failures, and writes into ``RESULTS_DIR/leaderboard/``
(or ``--out``): ``leaderboard.{csv,md,tex}``, ``domains.{csv,md,tex}``,
``per_category/<dataset>.{csv,md,tex}``, ``reported_comparison.{csv,md}`` when reported
numbers match, and ``failures.{csv,md}`` when something failed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zsad_bench.commands import echo

if TYPE_CHECKING:
    import pandas as pd

    from zsad_bench.tables import Table

__all__ = ["find_reported", "main", "write_all"]

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zsad-bench leaderboard", description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a results folder (results/<sweep>, or results/ for every sweep)")
    p.add_argument(
        "--metrics", default=None, help="comma-separated metric keys (default: I-AUROC, I-F1max, P-AUROC, P-AUPRO)"
    )
    p.add_argument("--datasets", default=None, help="comma-separated datasets, in column order (default: all, sorted)")
    p.add_argument("--pair", action="store_true", help='one "(AUROC, max-F1)" cell per dataset, as in AdaCLIP')
    p.add_argument("--precision", type=int, default=1, help="decimals shown (default 1)")
    p.add_argument("--reported", type=Path, default=None, help="paper_reported.csv (default: found next to RESULTS)")
    p.add_argument("--no-reported", action="store_true", help="leave the papers' reported numbers out")
    p.add_argument("--sources", default=None, help="comma-separated reported sources to show (default: all)")
    p.add_argument("--compare-random", action="store_true", help="compare random-weight rows with reported numbers too")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RESULTS/leaderboard)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def find_reported(results: Path) -> Path | None:
    """The reported-numbers file: ``paper_reported.csv`` in RESULTS, its parent, or ``./results/``."""
    for cand in (
        results / "paper_reported.csv",
        results.parent / "paper_reported.csv",
        Path("results/paper_reported.csv"),
    ):
        if cand.is_file():
            return cand
    return None


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _export(table: Table, stem: Path, pair: bool, label: str) -> list[Path]:
    from zsad_bench.tables import to_csv, to_latex, to_markdown

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]
    to_csv(table, paths[0])
    paths[1].write_text(to_markdown(table, pair=pair))
    paths[2].write_text(to_latex(table, pair=pair, label=label))
    return paths


def write_all(results_dir: Path, out: Path, args: argparse.Namespace) -> tuple[str, list[Path], int]:
    """Build every table, write the files; return (the leaderboard's Markdown, written paths, number of jobs)."""
    from zsad_bench import leaderboard as lb
    from zsad_bench import reported as rp
    from zsad_bench.tables import to_markdown

    res = lb.load_results(results_dir)
    metrics = _split(args.metrics) or list(lb.DEFAULT_METRICS)
    main_table = lb.leaderboard_table(res, metrics, _split(args.datasets), precision=args.precision)
    written: list[Path] = []
    reported_path = None if args.no_reported else (args.reported or find_reported(results_dir))
    if reported_path is not None:
        reported = rp.load_reported(reported_path)
        if _split(args.sources):
            reported = reported[reported["source"].isin(_split(args.sources))]
        comparison = rp.reported_comparison(res, reported, compare_random=args.compare_random)
        if not comparison.empty:
            rp.add_reported(main_table, comparison)
            out.mkdir(parents=True, exist_ok=True)
            comparison.to_csv(out / "reported_comparison.csv", index=False)
            (out / "reported_comparison.md").write_text(_frame_markdown(comparison, args.precision))
            written += [out / "reported_comparison.csv", out / "reported_comparison.md"]
    written += _export(main_table, out / "leaderboard", args.pair, "tab:leaderboard")
    written += _export(
        lb.domain_table(res, metrics, precision=args.precision), out / "domains", args.pair, "tab:domains"
    )
    for dataset in sorted(res.long["dataset"].dropna().unique()):
        table = lb.category_table(res, dataset, metrics, precision=args.precision)
        written += _export(table, out / "per_category" / dataset, args.pair, f"tab:{dataset}")
    fails = lb.failures(res)
    if not fails.empty:
        fails.to_csv(out / "failures.csv", index=False)
        (out / "failures.md").write_text(_frame_markdown(fails, args.precision))
        written += [out / "failures.csv", out / "failures.md"]
    return to_markdown(main_table, pair=args.pair), written, len(res.jobs)


def _frame_markdown(frame: pd.DataFrame, precision: int) -> str:
    """A plain Markdown table of a DataFrame (no tabulate dependency)."""
    import pandas as pd

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{precision}f}"
        return str(v).replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 1 no results, 2 usage)."""
    args = _parser().parse_args(list(argv or []))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not args.results.is_dir():
        echo(f"zsad-bench leaderboard: {args.results} is not a folder; run a sweep first", err=True)
        return 1
    out = args.out or args.results / "leaderboard"
    markdown, written, n_jobs = write_all(args.results, out, args)
    if n_jobs == 0:
        echo(f"zsad-bench leaderboard: no job result (metrics.json) under {args.results}", err=True)
        return 1
    if not args.quiet:
        echo(markdown)
        fails = out / "failures.md"
        if fails.is_file():
            echo("Failures and skipped images:\n\n" + fails.read_text())
        echo(f"wrote {len(written)} files to {out}")
    return 0
