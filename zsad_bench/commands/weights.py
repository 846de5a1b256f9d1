"""``zsad-bench weights list|check|path``: the weights manifest and what is on this machine.

- ``list``: every manifest entry (backbone.tag, source, sha256 known, licence, present here).
- ``check [NAME[.TAG] ...]``: verify local files (presence and known checksums); exit 1 on any problem.
- ``path NAME[.TAG]``: the folder and accepted file names where the weights go.

The weights folder is ``--root``, else ``$ZSAD_WEIGHTS``, else ``./weights`` (``paths.weights_root``).
Nothing here touches the network.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from zsad_bench.backbones.manifest import MANIFEST, WeightsSource
from zsad_bench.backbones.weights import file_sha256, find_local, weights_root
from zsad_bench.commands import echo

__all__ = ["check_source", "main", "select"]


def select(names: Sequence[str]) -> list[WeightsSource]:
    """Manifest entries for ``NAME`` (its default tag) or ``NAME.TAG``; all entries when empty.

    Raises:
        KeyError: for an unknown name, listing the manifest keys.
    """
    if not names:
        return list(MANIFEST.values())
    return [MANIFEST[name] if name in MANIFEST else _for_backbone(name) for name in names]


def _for_backbone(name: str) -> WeightsSource:
    """The source of a registered backbone's default tag (``clip`` → derived from open_clip)."""
    from zsad_bench.backbones.base import default_config
    from zsad_bench.backbones.weights import source_for
    from zsad_bench.registry import BACKBONES

    if name not in BACKBONES:
        raise KeyError(f"no weights entry {name!r}; known: {', '.join(sorted(MANIFEST))}")
    cfg = default_config(name)
    return source_for(cfg.name, cfg.arch, cfg.pretrained)


def check_source(source: WeightsSource, root: Path) -> tuple[str, str]:
    """(status, detail) of one entry: ``ok``, ``missing``, ``unverified`` (no known checksum) or ``bad``."""
    path = find_local(source, root)
    if path is None:
        return "missing", f"put {source.files[0]} into {root / source.key}/"
    if source.sha256 and path.name == source.url_file:
        digest = file_sha256(path)
        if not digest.startswith(source.sha256):
            return "bad", f"{path}: sha256 {digest[:16]}… expected {source.sha256[:16]}…"
        return "ok", str(path)
    return "unverified", f"{path} (no published checksum for this file)"


def _list(root: Path) -> int:
    table = Table(title=f"weights manifest (root {root})")
    for col in ("weights", "source", "sha256", "license", "here", "notes"):
        table.add_column(col)
    for s in MANIFEST.values():
        origin = f"hf:{s.hub_repo}" if s.hub_repo else (s.url or "local only")
        here = "yes" if find_local(s, root) is not None else "no"
        table.add_row(s.key, origin, s.sha256[:12] or "-", s.license or "-", here, s.notes)
    Console(width=200).print(table)
    return 0


def _check(names: Sequence[str], root: Path) -> int:
    failed = 0
    for source in select(names):
        status, detail = check_source(source, root)
        failed += status in ("missing", "bad")
        echo(f"{source.key:<36} {status:<10} {detail}")
    return 1 if failed else 0


def _path(names: Sequence[str], root: Path) -> int:
    for source in select(names):
        echo(f"{source.key}: {root / source.key}/ (accepted files: {', '.join(source.files)})")
    return 0


def main(argv: Sequence[str]) -> int:
    """Run the sub-command; return the exit status."""
    parser = argparse.ArgumentParser(prog="zsad-bench weights", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("list", "check", "path"))
    parser.add_argument("names", nargs="*", help="backbone or backbone.tag (default: all)")
    parser.add_argument("--root", default=None, help="weights folder (default: $ZSAD_WEIGHTS or ./weights)")
    args = parser.parse_args(list(argv))
    root = weights_root(args.root)
    try:
        if args.action == "list":
            return _list(root)
        if args.action == "check":
            return _check(args.names, root)
        if not args.names:
            parser.error("path needs a NAME or NAME.TAG")
        return _path(args.names, root)
    except KeyError as exc:
        echo(f"error: {exc.args[0]}")
        return 2
