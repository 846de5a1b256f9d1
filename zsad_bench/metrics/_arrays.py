"""Input handling: numpy or torch (CPU or CUDA) in, canonical score dtypes, validation."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_mask", "as_numpy", "as_scores", "is_cuda", "is_torch", "score_dtype"]

# Scores are never cast to a narrower type: float16/bfloat16 and small integers widen to float32
# (exact), float64 and wide integers stay 64-bit (integers beyond 2^53 round).
_FLOAT32_SOURCES = ("float16", "bfloat16", "float32", "bool", "int8", "uint8", "int16", "uint16")


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def is_cuda(x: Any) -> bool:
    """Whether ``x`` is a torch tensor on a non-CPU device."""
    return is_torch(x) and x.device.type != "cpu"


def score_dtype(dtype_name: str) -> str:
    """The canonical score dtype name ("float32" or "float64") for an input dtype name."""
    return "float32" if dtype_name.removeprefix("torch.") in _FLOAT32_SOURCES else "float64"


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view or copy of ``x`` (torch tensors are detached and moved to the CPU)."""
    if is_torch(x):
        x = x.detach()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def as_scores(x: Any, name: str, keep_device: bool) -> Any:
    """Scores in their canonical dtype: a numpy array, or a torch tensor when ``keep_device``.

    Raises:
        ValueError: for non-numeric input.
    """
    if keep_device and is_torch(x):
        import torch

        dtype = torch.float32 if score_dtype(str(x.dtype)) == "float32" else torch.float64
        return x.detach().to(dtype)
    arr = as_numpy(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric scores, got dtype {arr.dtype}")
    return arr.astype(score_dtype(arr.dtype.name), copy=False)


def as_mask(x: Any, name: str, keep_device: bool) -> Any:
    """A boolean mask (numpy, or torch when ``keep_device``); values must be 0/1 or bool.

    Raises:
        ValueError: naming ``name`` when a value is neither 0 nor 1.
    """
    if keep_device and is_torch(x):
        if str(x.dtype) != "torch.bool" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be binary (0/1); threshold resized masks first (the ZSAD repos use > 0.5)")
        return x.detach().bool()
    arr = as_numpy(x)
    if arr.dtype != np.bool_:
        if not ((arr == 0) | (arr == 1)).all():
            raise ValueError(f"{name} must be binary (0/1); threshold resized masks first (the ZSAD repos use > 0.5)")
        arr = arr.astype(bool)
    return arr
