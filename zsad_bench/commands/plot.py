"""``zsad-bench plot {grid,curves,bar,all} RESULTS_DIR``: figures (PNG and PDF) from job files.

Examples::

    zsad-bench plot grid results/demo --dataset synth --norm per_dataset
    zsad-bench plot curves results/demo --dataset synth --kind pro --level pixel
    zsad-bench plot bar results/demo --metric image_auroc
    zsad-bench plot all results/demo

Figures go to ``RESULTS_DIR/figures/`` unless ``--out`` names a path (without suffix).
For grids and curves one job per leaderboard row is used: the given ``--seed`` and
``--shots`` (default: the smallest present).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zsad_bench.commands import echo

__all__ = ["main", "select_jobs"]

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zsad-bench plot", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name, text in (
        ("grid", "anomaly-map grid"),
        ("curves", "ROC / PR / PRO curves"),
        ("bar", "bar chart of a leaderboard metric"),
        ("all", "every figure"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("results", type=Path, help="a results folder")
        s.add_argument("--dataset", default=None, help="dataset (default: every dataset, one figure each)")
        s.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
        s.add_argument("--seed", type=int, default=None)
        s.add_argument("--shots", type=int, default=None)
        s.add_argument("--out", type=Path, default=None, help="output path without suffix")
        if name in ("grid", "all"):
            s.add_argument("--category", default=None, help="comma-separated categories (default: all)")
            s.add_argument("--norm", default="per_image", choices=("per_image", "per_dataset"))
            s.add_argument("--rows", type=int, default=6, help="example images (rows)")
        if name in ("curves", "all"):
            s.add_argument("--kind", default="roc", choices=("roc", "pr", "pro"))
            s.add_argument("--level", default="image", choices=("image", "pixel"))
        if name in ("bar", "all"):
            s.add_argument("--metric", default="image_auroc")
    return p


def select_jobs(jobs: Any, dataset: str, methods: list[str] | None, seed: int | None, shots: int | None) -> list[Path]:
    """One finished job folder per leaderboard row for ``dataset`` (given or smallest seed and shots)."""
    j = jobs[(jobs["dataset"] == dataset) & jobs["status"].isin(("ok", "partial"))]
    if methods:
        j = j[j["method"].isin(methods)]
    if j.empty:
        return []
    j = j[j["shots"] == (shots if shots is not None else j["shots"].min())]
    j = j[j["seed"] == (seed if seed is not None else j["seed"].min())]
    return [Path(p) for p in j.sort_values("entry").drop_duplicates("entry")["job"]]


def _datasets(res: Any, wanted: str | None) -> list[str]:
    return [wanted] if wanted else sorted(res.jobs["dataset"].dropna().unique())


def _grid(res: Any, args: argparse.Namespace, out: Path) -> list[Path]:
    from zsad_bench.plots import map_grid

    paths = []
    cats = args.category.split(",") if args.category else None
    for ds in _datasets(res, args.dataset):
        dirs = [res.root / p for p in select_jobs(res.jobs, ds, _methods(args), args.seed, args.shots)]
        if dirs:
            paths += map_grid(dirs, args.out or out / f"grid_{ds}_{args.norm}", cats, args.norm, args.rows)
    return paths


def _curves(res: Any, args: argparse.Namespace, out: Path) -> list[Path]:
    from zsad_bench.plots import curve_figure

    paths = []
    for ds in _datasets(res, args.dataset):
        dirs = [res.root / p for p in select_jobs(res.jobs, ds, _methods(args), args.seed, args.shots)]
        if dirs:
            stem = args.out or out / f"{args.kind}_{args.level}_{ds}"
            paths += curve_figure(dirs, stem, args.kind, args.level)
    return paths


def _bar(res: Any, args: argparse.Namespace, out: Path) -> list[Path]:
    from zsad_bench.leaderboard import leaderboard_table
    from zsad_bench.plots import bar_chart

    table = leaderboard_table(res, [args.metric], [args.dataset] if args.dataset else None, rank=False)
    return bar_chart(table, args.metric, args.out or out / f"bar_{args.metric}")


def _methods(args: argparse.Namespace) -> list[str] | None:
    return args.methods.split(",") if args.methods else None


def _all(res: Any, args: argparse.Namespace, out: Path) -> list[Path]:
    paths = _grid(res, args, out) + _bar(res, args, out)
    for kind, level in (("roc", "image"), ("pr", "pixel"), ("pro", "pixel")):
        args.kind, args.level = kind, level
        try:
            paths += _curves(res, args, out)
        except ValueError as exc:  # e.g. a dataset without masks has no pixel curves
            logger.warning("%s %s curves: %s", level, kind, exc)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 1 nothing to plot)."""
    from zsad_bench.leaderboard import load_results

    args = _parser().parse_args(list(argv or []))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.what == "all":
        args.out = None  # several figures: always under RESULTS/figures
    try:
        res = load_results(args.results)
        out = args.results / "figures"
        paths = {"grid": _grid, "curves": _curves, "bar": _bar, "all": _all}[args.what](res, args, out)
    except (FileNotFoundError, ValueError) as exc:
        echo(f"zsad-bench plot: {exc}", err=True)
        return 1
    if not paths:
        echo(f"zsad-bench plot: no finished job to plot under {args.results}", err=True)
        return 1
    echo("\n".join(str(p) for p in paths))
    return 0
