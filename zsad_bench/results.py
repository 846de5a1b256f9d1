"""The job result files and their versioned schema.

One evaluation job writes into its folder ``results/<sweep>/<job>/``:

* ``metrics.json``: everything needed to interpret the numbers (see :data:`REQUIRED` and
  ``docs/evaluation.md``). Written atomically, last, so that its presence with a finished
  ``status`` means the job is done (the resume rule).
* ``per_category.csv``: one row per category (plus a ``mean`` row) with counts and metrics.
* ``scores.csv``: one row per evaluated image (key, category, defect type, label, score).
* ``maps/`` and ``curves/``: example anomaly maps and downsampled curve data (see
  :mod:`zsad_bench.plots`).

Metric values are stored as ``{"value": float | null, "reason": str | null}``; JSON has no
NaN, so an undefined metric is ``null`` with its reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FINISHED",
    "METRICS_FILE",
    "SCHEMA_VERSION",
    "STATUSES",
    "config_fingerprint",
    "finished_result",
    "metric_entry",
    "metric_value",
    "read_result",
    "validate_result",
    "write_category_csv",
    "write_json_atomic",
    "write_scores_csv",
]

SCHEMA = "zsad-bench/metrics"
SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
# ok: every category evaluated; partial: some categories failed (the summary covers the others);
# failed: the job itself failed (see "error"); unsupported: the method cannot run this protocol.
STATUSES = ("ok", "partial", "failed", "unsupported")
FINISHED = ("ok", "partial", "unsupported")

# top-level key -> expected JSON type(s)
REQUIRED: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "schema_version": (int,),
    "status": (str,),
    "job": (dict,),
    "method": (dict,),
    "backbone": (dict,),
    "train": (dict,),
    "test": (dict,),
    "shots": (int,),
    "seed": (int,),
    "evaluation": (dict,),
    "metric_definitions": (dict,),
    "code": (dict,),
    "timings": (dict,),
    "categories": (dict,),
    "summary": (dict,),
    "skipped": (list,),
    "error": (dict, type(None)),
}

# Keys that do not change the numbers; they are left out of the job's config fingerprint.
FINGERPRINT_IGNORE = (
    "paths",
    "device",
    "sweep",
    "dataset.root",
    "eval.num_workers",
    "eval.resume",
    "eval.retry_failed",
    "eval.examples_per_category",
    "eval.save_curves",
    "eval.curve_size",
    "eval.example_size",
    "eval.feature_cache",
)


# ----------------------------------------------------------------------------- values
def metric_entry(value: float | None, reason: str | None = None, bound: float | None = None) -> dict[str, Any]:
    """The JSON form of one metric value: NaN and None become ``null``; ``bound`` only when given.

    Example:
        >>> metric_entry(float("nan"), "no anomalous pixels")
        {'value': None, 'reason': 'no anomalous pixels'}
    """
    out: dict[str, Any]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        out = {"value": None, "reason": reason or "undefined"}
    else:
        out = {"value": float(value), "reason": reason}
    if bound is not None:
        out["bound"] = float(bound)
    return out


def metric_value(entry: Mapping[str, Any] | None) -> float:
    """The float of a stored metric entry (NaN when null or absent).

    Example:
        >>> metric_value({"value": None, "reason": "x"})
        nan
    """
    if not entry or entry.get("value") is None:
        return float("nan")
    return float(entry["value"])


# ----------------------------------------------------------------------------- fingerprint
def _drop(tree: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in tree:
        return
    if rest:
        if isinstance(tree[head], dict):
            _drop(tree[head], rest)
    else:
        del tree[head]


def config_fingerprint(cfg: Any, ignore: Iterable[str] = FINGERPRINT_IGNORE) -> str:
    """A sha256 (16 hex digits) of the resolved job config without the keys that do not change results.

    Args:
        cfg: the composed config (DictConfig or plain mapping).
        ignore: dotted keys left out (paths, device, output knobs).
    """
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    tree: dict[str, Any] = dict(plain)  # type: ignore[arg-type]
    tree.pop("hydra", None)
    for key in ignore:
        _drop(tree, key)
    blob = json.dumps(tree, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- validate / read
def validate_result(data: Mapping[str, Any]) -> list[str]:
    """The problems of a ``metrics.json`` payload (empty when it follows the schema)."""
    problems = [
        f"missing or mistyped key {k!r} (expected {'/'.join(t.__name__ for t in types)})"
        for k, types in REQUIRED.items()
        if not isinstance(data.get(k, ...), types)
    ]
    if problems:
        return problems
    if data["schema"] != SCHEMA:
        problems.append(f"schema is {data['schema']!r}, expected {SCHEMA!r}")
    if data["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version is {data['schema_version']}, this code reads {SCHEMA_VERSION}")
    if data["status"] not in STATUSES:
        problems.append(f"status {data['status']!r} is not one of {STATUSES}")
    for name, cat in data["categories"].items():
        if not isinstance(cat, dict) or "status" not in cat or not isinstance(cat.get("metrics"), dict):
            problems.append(f"category {name!r} lacks status or metrics")
    for key, entry in data["summary"].items():
        if not isinstance(entry, dict) or "value" not in entry:
            problems.append(f"summary metric {key!r} is not {{value, reason}}")
    return problems


def read_result(path: Path) -> dict[str, Any]:
    """Read and validate one ``metrics.json``.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the job result ({exc}). Delete it to re-run the job.") from exc
    problems = validate_result(data) if isinstance(data, dict) else ["not a JSON object"]
    if problems:
        raise ValueError(f"{path}: not a valid zsad-bench result: {'; '.join(problems)}. Delete it to re-run the job.")
    return data


def finished_result(job_dir: Path, fingerprint: str | None = None, retry_failed: bool = True) -> dict | None:
    """The job's result when it is finished and may be reused (the resume rule), else None.

    A result is reused when ``metrics.json`` exists, follows this schema version, has a
    finished status (``failed`` too unless ``retry_failed``) and, when ``fingerprint`` is
    given, was produced by the same config.
    """
    path = Path(job_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = read_result(path)
    except ValueError:
        return None
    if data["status"] not in FINISHED and (retry_failed or data["status"] != "failed"):
        return None
    if fingerprint is not None and data["job"].get("config_fingerprint") != fingerprint:
        return None
    return data


# ----------------------------------------------------------------------------- write
def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _clean(obj: Any) -> Any:
    """Replace float NaN/inf by None so that the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(json.loads(json.dumps(data, default=_json_default))), indent=1, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_category_csv(path: Path, result: Mapping[str, Any]) -> None:
    """Write ``per_category.csv``: one row per category, then the ``mean`` row (metrics as fractions)."""
    keys = list(dict.fromkeys([*result["summary"], *(k for c in result["categories"].values() for k in c["metrics"])]))
    head = ["category", "domain", "status", "n_images", "n_anomalous", "n_skipped"]
    rows = []
    for name, cat in result["categories"].items():
        counts = [cat.get("n_images", ""), cat.get("n_anomalous", ""), cat.get("n_skipped", "")]
        rows.append(
            [name, cat.get("domain", ""), cat["status"], *counts, *(_cell(cat["metrics"].get(k)) for k in keys)]
        )
    ok = [c for c in result["categories"].values() if c["status"] == "ok"]
    mean_counts = [sum(c.get(f, 0) for c in ok) for f in ("n_images", "n_anomalous", "n_skipped")]
    rows.append(["mean", "", result["status"], *mean_counts, *(_cell(result["summary"].get(k)) for k in keys)])
    _write_csv(path, [*head, *keys], rows)


def _cell(entry: Mapping[str, Any] | None) -> str:
    value = metric_value(entry)
    return "" if math.isnan(value) else repr(value)


def write_scores_csv(path: Path, rows: Iterable[tuple[str, str, str, int, float]]) -> None:
    """Write ``scores.csv``: key, category, defect_type, label, score for every evaluated image."""
    _write_csv(path, ["key", "category", "defect_type", "label", "score"], [[*r[:4], repr(float(r[4]))] for r in rows])


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
