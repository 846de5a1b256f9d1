"""Developer sessions: tests (against the built wheel), lint, typecheck, demo, bench.

`nox -s tests` is the README's test command and what CI runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
ENV = {"PYTHONSAFEPATH": "1", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def install_wheel(session: nox.Session, extras: str = "dev") -> None:
    """Build the wheel and install it with its dependencies (never an editable install)."""
    dist = ROOT / "build" / "nox-dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("setuptools>=69", "wheel")
    session.run("python", "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT))
    (wheel,) = dist.glob("zsad_bench-*.whl")
    session.install("--force-reinstall", "--no-deps", str(wheel))
    session.install(f"{wheel}[{extras}]")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The default test suite on the installed wheel (CPU, offline; slow/gpu tests are opt-in)."""
    install_wheel(session)
    session.run("pytest", *(session.posargs or ["-q"]), env=ENV)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff==0.17.6")  # pinned: formatting rules change between releases
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy on the core, against the installed wheel (style-anchors G6)."""
    install_wheel(session)
    session.install("mypy==2.4.1")  # pinned: new releases add checks
    session.run("mypy", "-p", "zsad_bench", env=ENV)


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """A sweep of every registered method on the synthetic dataset, then the leaderboard."""
    install_wheel(session)
    session.run("zsad-bench", "-m", "experiment=demo", *session.posargs, env=ENV)
    # the DINOv2 and SAM heads run on the tiny versions of their own backbones
    for method, backbone in (("dinov2_head", "tiny_dinov2"), ("sam_head", "tiny_sam")):
        session.run("zsad-bench", "-m", "experiment=demo", f"method={method}", f"backbone={backbone}", env=ENV)
    session.run("zsad-bench", "leaderboard", "results/demo", env=ENV)
    session.run("zsad-bench", "plot", "all", "results/demo", env=ENV)


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The speed and memory scripts in benchmarks/ (ratios measured side by side)."""
    install_wheel(session)
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        session.run("python", str(script), *session.posargs, env=ENV)
