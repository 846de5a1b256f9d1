"""``zsad-bench list methods|datasets|backbones [PATTERN]``: tables from the registry cards."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from zsad_bench.registry import BACKBONES, DATASETS, METHODS

__all__ = ["backbone_rows", "dataset_rows", "main", "method_rows"]


def method_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per registered method: name, paper, code, licence, trainable, shots, backbone, origin."""
    rows = []
    for name in METHODS.list(pattern):
        e = METHODS.entry(name)
        c = e.card
        rows.append(
            {
                "name": name,
                "paper": " ".join(x for x in (c.paper, f"arXiv:{c.arxiv}" if c.arxiv else "") if x),
                "code": c.code or "none",
                "license": c.license,
                "trainable": "yes" if c.trainable else "no",
                "shots": ",".join(map(str, c.shots)),
                "backbone": c.backbone,
                "module": e.module,
            }
        )
    return rows


def _counts(info: Any) -> str:
    counts = info.expected_counts("test")
    return f"{counts[0]}/{counts[1]}" if counts else "?"


def dataset_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per dataset: name, domain, modality, ground truth kinds, categories, test counts."""
    rows = []
    for name in DATASETS.list(pattern):
        info = DATASETS.get(name).info()
        rows.append(
            {
                "name": name,
                "domain": info.domain,
                "modality": info.modality,
                "image GT": "yes" if info.has_image_labels else "no",
                "pixel GT": "yes" if info.has_masks else "no",
                "categories": len(info.categories),
                "test normal/anomalous": _counts(info),
                "aux (zero-shot)": info.default_aux or "",
            }
        )
    return rows


def backbone_rows(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per backbone: name, family, architecture, input size, licence."""
    return [
        {"name": n, "family": c.family, "arch": c.arch, "input": c.input_size, "license": c.license}
        for n, c in ((n, BACKBONES.card(n)) for n in BACKBONES.list(pattern))
    ]


ROWS = {"methods": method_rows, "datasets": dataset_rows, "backbones": backbone_rows}


def main(argv: Sequence[str]) -> int:
    """Print the table of one registry; returns the exit code."""
    parser = argparse.ArgumentParser(prog="zsad-bench list", description=__doc__)
    parser.add_argument("what", choices=sorted(ROWS))
    parser.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*clip*'")
    args = parser.parse_args(list(argv))
    rows = ROWS[args.what](args.pattern)
    table = Table(title=f"zsad-bench {args.what} ({len(rows)})")
    for col in rows[0] if rows else ["name"]:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    return 0
