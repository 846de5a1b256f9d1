"""A writer of schema-valid job results with chosen numbers, for hand-computed leaderboard tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from zsad_bench.results import SCHEMA, SCHEMA_VERSION, metric_entry, write_json_atomic


def _entries(values: dict[str, float | None]) -> dict[str, dict]:
    return {k: metric_entry(v, None if v is not None else "undefined") for k, v in values.items()}


def write_job(
    root: Path,
    method: str,
    dataset: str,
    seed: int,
    categories: dict[str, float | dict[str, float | None]],
    *,
    domains: dict[str, str] | None = None,
    status: str = "ok",
    random_weights: bool = False,
    shots: int = 0,
    backbone: str = "bb",
    failed: tuple[str, ...] = (),
    created: str = "2026-01-01T00:00:00",
    sweep: str = "s",
) -> Path:
    """Write ``root/<method>/<dataset>/<backbone>/k<shots>_s<seed>/metrics.json``; floats mean image_auroc.

    The summary is the unweighted mean over the non-failed categories, as the metrics engine computes it.
    """
    cats = {c: (v if isinstance(v, dict) else {"image_auroc": v}) for c, v in categories.items()}
    domains = domains or {}
    keys = sorted({k for v in cats.values() for k in v})
    ok = [c for c in cats if c not in failed]
    summary = {}
    for k in keys:
        vals = [cats[c][k] for c in ok if cats[c].get(k) is not None]
        summary[k] = sum(vals) / len(vals) if vals else None
    out = root / method / dataset / backbone / f"k{shots}_s{seed}"
    data = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "created": created,
        "job": {"sweep": sweep, "dir": str(out), "variant": "", "config_fingerprint": "f"},
        "method": {"name": method, "config": {}, "card": None},
        "backbone": {"name": backbone, "random_weights": random_weights},
        "train": {},
        "test": {"dataset": dataset, "domain": "mixed" if len(set(domains.values())) > 1 else "industrial"},
        "shots": shots,
        "seed": seed,
        "evaluation": {},
        "metric_definitions": {},
        "code": {},
        "timings": {},
        "categories": {
            c: {
                "status": "failed" if c in failed else "ok",
                "domain": domains.get(c, "industrial"),
                "metrics": {} if c in failed else _entries(v),
                "error": {"message": "boom"} if c in failed else None,
            }
            for c, v in cats.items()
        },
        "summary": _entries(summary) if status != "failed" else {},
        "skipped": [],
        "error": {"type": "RuntimeError", "message": "deliberately broken"} if status == "failed" else None,
    }
    write_json_atomic(out / "metrics.json", data)
    return out


@pytest.fixture
def job_writer():
    """The :func:`write_job` function."""
    return write_job
