"""Dataset families: one module each, registered with ``@register_dataset``."""

if __name__ != "zsad_bench.datasets":
    raise ImportError(
        f"'datasets' was imported as {__name__!r}, probably from the repository root, where it would "
        "shadow other packages and register plugins twice. Import 'zsad_bench.datasets' instead: install "
        "the project (pip install -e .) and run from another folder or through the 'zsad-bench' command."
    )
