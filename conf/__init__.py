"""Hydra configuration groups, read as ``pkg://zsad_bench.conf``."""

if __name__ != "zsad_bench.conf":
    raise ImportError(
        f"'conf' was imported as {__name__!r}, probably from the repository root, where it would "
        "shadow other packages and register plugins twice. Import 'zsad_bench.conf' instead: install "
        "the project (pip install -e .) and run from another folder or through the 'zsad-bench' command."
    )
