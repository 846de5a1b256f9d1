"""zsad-bench: every zero-shot anomaly detection method under the same data, features and metrics."""

from zsad_bench.registry import (
    BACKBONES,
    DATASETS,
    METHODS,
    register_backbone,
    register_dataset,
    register_method,
)

__all__ = [
    "BACKBONES",
    "DATASETS",
    "METHODS",
    "__version__",
    "register_backbone",
    "register_dataset",
    "register_method",
]
__version__ = "0.1.0"
