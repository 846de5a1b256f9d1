"""Methods: one module per method, each registered with ``@register_method``."""

if __name__ != "zsad_bench.methods":
    raise ImportError(
        f"'methods' was imported as {__name__!r}, probably from the repository root, where it would "
        "shadow other packages and register plugins twice. Import 'zsad_bench.methods' instead: install "
        "the project (pip install -e .) and run from another folder or through the 'zsad-bench' command."
    )
