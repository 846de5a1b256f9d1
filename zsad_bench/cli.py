"""The ``zsad-bench`` command: sub-commands, or a Hydra run/multirun of evaluation jobs.

``zsad-bench list methods`` and the other sub-commands are dispatched before Hydra starts;
everything else is a Hydra invocation (``zsad-bench method=winclip dataset=mvtec_ad``,
``zsad-bench -m method=winclip,april_gan seed=0,1``) whose job function calls the pure
:func:`run`.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib import resources
from typing import Any

__all__ = ["SUBCOMMANDS", "check_choices", "config_options", "main", "run"]

logger = logging.getLogger(__name__)

SUBCOMMANDS = {
    "list": ("zsad_bench.commands.listing", "list registered methods, datasets or backbones"),
    "data": ("zsad_bench.commands.data", "dataset info, list and check"),
    "weights": ("zsad_bench.commands.weights", "weights list, check and path"),
    "cache": ("zsad_bench.commands.cache", "feature cache info, clear and verify"),
    "leaderboard": ("zsad_bench.commands.leaderboard", "tables from a results folder"),
    "plot": ("zsad_bench.commands.plot", "anomaly-map grids, curves and bar charts"),
    "knowledge": ("zsad_bench.commands.knowledge", "generate KAnoCLIP knowledge files"),
}
CHECKED_GROUPS = ("method", "dataset", "backbone")


def config_options(group: str) -> list[str]:
    """The option names of a config group (the yaml files in ``conf/<group>/``)."""
    folder = resources.files("zsad_bench.conf") / group
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _values(raw: str) -> list[str]:
    """The plain choices in an override value; sweeps like ``a,b`` are split, functions skipped."""
    if "(" in raw or "$" in raw:
        return []
    return [v.strip() for v in raw.split(",") if v.strip()]


def check_choices(argv: Sequence[str]) -> str | None:
    """Return a one-line error for an unknown method, dataset or backbone override, else None.

    Example:
        >>> check_choices(["method=nosuch_method"]).startswith("zsad-bench: unknown method")
        True
    """
    for arg in argv:
        key, sep, raw = arg.partition("=")
        key = key.lstrip("+~")
        if not sep or key not in CHECKED_GROUPS:
            continue
        options = config_options(key)
        for value in _values(raw):
            if value not in options:
                close = difflib.get_close_matches(value, options, n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                return f"zsad-bench: unknown {key} {value!r}.{hint} Available: {', '.join(options)}"
    return None


def run(cfg: Any) -> Any:
    """Run one evaluation job described by a composed config (the pure core of the app)."""
    from zsad_bench.evaluate import run_job

    return run_job(cfg)


def _hydra_app() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path="pkg://zsad_bench.conf", config_name="config")
    def _app(cfg: Any) -> Any:
        return run(cfg)

    _app()


def _usage() -> str:
    lines = ["usage: zsad-bench [SUB-COMMAND ...] | [-m] [group=option ...] [key=value ...]", "", "sub-commands:"]
    lines += [f"  {name:<12} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run `zsad-bench --help` for the config groups and options, `zsad-bench <sub-command> -h` for one."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``zsad-bench`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[args[0]][0])
        sys.exit(module.main(args[1:]))
    if args and args[0] in ("commands", "usage"):
        print(_usage())
        sys.exit(0)
    error = check_choices(args)
    if error:
        print(error, file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args]
    _hydra_app()


if __name__ == "__main__":
    main()
