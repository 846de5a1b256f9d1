"""Sub-commands of the ``zsad-bench`` app (``list``, ``data``, ``weights``, ``cache``, ...)."""

from __future__ import annotations

import sys

__all__ = ["echo"]


def echo(*parts: object, err: bool = False) -> None:
    """Write one line of command output (plain text) to stdout, or stderr with ``err=True``."""
    (sys.stderr if err else sys.stdout).write(" ".join(map(str, parts)) + "\n")
