"""Sub-commands of the ``zsad-bench`` app (``list``, ``data``, ``weights``, ``cache``, ...)."""
