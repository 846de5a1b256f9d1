"""``zsad-bench cache info|clear|verify``: the persistent feature cache.

- ``info``: entries and size, per feature spec.
- ``clear [--spec FINGERPRINT]``: remove every entry (or one spec's).
- ``verify``: check every entry's checksum, remove corrupt entries and abandoned temporary
  files; exit 1 when corrupt entries were found.

The cache folder is ``--root``, else ``$ZSAD_CACHE``, else ``./cache`` (``paths.cache_root``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from zsad_bench.commands import echo
from zsad_bench.features import FeatureCache, default_cache_root

__all__ = ["main"]


def _info(cache: FeatureCache) -> int:
    info = cache.info()
    table = Table(title=f"feature cache {info.root}: {info.entries} entries, {info.bytes / 1e6:.1f} MB")
    for col in ("fingerprint", "entries", "MB", "spec"):
        table.add_column(col)
    for row in info.specs:
        table.add_row(row["fingerprint"], str(row["entries"]), f"{row['bytes'] / 1e6:.1f}", row["label"])
    Console(width=200).print(table)
    return 0


def main(argv: Sequence[str]) -> int:
    """Run the sub-command; return the exit status."""
    parser = argparse.ArgumentParser(prog="zsad-bench cache", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("info", "clear", "verify"))
    parser.add_argument("--root", default=None, help="cache folder (default: $ZSAD_CACHE or ./cache)")
    parser.add_argument("--spec", default=None, help="clear only this spec fingerprint")
    args = parser.parse_args(list(argv))
    cache = FeatureCache(args.root or default_cache_root())
    if args.action == "info":
        return _info(cache)
    if args.action == "clear":
        removed = cache.clear(args.spec)
        echo(f"removed {removed} entries from {cache.root}")
        return 0
    report = cache.verify()
    for line in report.corrupt:
        echo(f"corrupt (removed): {line}")
    corrupt, tmp = len(report.corrupt), report.removed_tmp
    echo(f"checked {report.checked} entries: {corrupt} corrupt, {tmp} stale temporary files removed")
    return 1 if report.corrupt else 0
