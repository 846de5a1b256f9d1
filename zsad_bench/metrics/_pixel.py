"""The pixel-level accumulator: exact (sorted negatives + positives) or histogram state."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from zsad_bench.metrics._arrays import as_mask, as_numpy, as_scores, is_cuda, is_torch
from zsad_bench.metrics._histogram import HistogramStore
from zsad_bench.metrics._ranking import TieGroups, iter_groups
from zsad_bench.metrics._store import PositiveStore, make_sorted_store
from zsad_bench.metrics.regions import label_regions

__all__ = ["PixelAccumulator"]

logger = logging.getLogger(__name__)


class PixelAccumulator:
    """Streams (maps, masks) batches into compact state.

    Args:
        mode: "exact" or "histogram".
        connectivity: region connectivity, 4 or 8.
        backend: "auto" (torch on the inputs' device when they are CUDA tensors, else numpy),
            "numpy", or "torch" (torch on the inputs' device, CPU included; for testing).
        hist_bits: histogram resolution.
        block_size: values per sorted block of negatives (exact mode).
        with_regions: label ground-truth regions (needed by AUPRO only).
        group_chunk: tie groups evaluated at a time at ``compute`` (bounds its temporaries).
    """

    def __init__(
        self,
        mode: str,
        connectivity: int,
        backend: str = "auto",
        hist_bits: int = 24,
        block_size: int = 1 << 24,
        with_regions: bool = True,
        group_chunk: int = 1 << 18,
    ) -> None:
        if backend not in ("auto", "numpy", "torch"):
            raise ValueError(f"backend must be 'auto', 'numpy' or 'torch', got {backend!r}")
        self.mode, self.connectivity, self.backend = mode, connectivity, backend
        self.with_regions, self.group_chunk = with_regions, group_chunk
        self.hist_bits, self.block_size = hist_bits, block_size
        self.reset()

    def reset(self) -> None:
        """Forget all data."""
        self.device: Any = None  # torch device of the torch path, None for numpy
        self._decided = False
        self.negatives: Any = None
        self.positives = PositiveStore(self.with_regions)
        self.hist = HistogramStore(self.hist_bits) if self.mode == "histogram" else None
        self.n_images = 0
        self.n_nan = 0
        self.n_inf = 0
        self.n_pixels = 0
        self.dtypes: set[str] = set()
        self.first_nan_update: int | None = None
        self._updates = 0

    def _decide(self, maps: Any) -> None:
        if self._decided:
            return
        if self.backend == "torch" or (self.backend == "auto" and is_cuda(maps)):
            import torch

            self.device = maps.device if is_torch(maps) else torch.device("cpu")
        self.negatives = make_sorted_store(self.device, self.block_size)
        self._decided = True

    def _to_backend(self, x: Any) -> Any:
        if self.device is None or is_torch(x):
            return x
        import torch

        return torch.from_numpy(np.ascontiguousarray(as_numpy(x)))

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch: ``maps`` (B, H, W) scores, ``masks`` (B, H, W) binary, same shape.

        Raises:
            ValueError: on shape mismatch or non-binary masks.
        """
        self._decide(maps)
        torch_path = self.device is not None
        maps = as_scores(self._to_backend(maps), "anomaly_maps", keep_device=torch_path)
        masks = as_mask(self._to_backend(masks), "masks", keep_device=torch_path)
        if maps.ndim != 3 or tuple(maps.shape) != tuple(masks.shape):
            raise ValueError(
                f"anomaly_maps must be (B, H, W) and masks the same shape; got {tuple(maps.shape)} and "
                f"{tuple(masks.shape)} (resize masks to the evaluation resolution first)"
            )
        if torch_path:
            masks = masks.to(maps.device)
        self._updates += 1
        self.n_images += int(maps.shape[0])
        self.n_pixels += int(np.prod(maps.shape))
        self.dtypes.add(str(maps.dtype).removeprefix("torch."))
        valid = self._check_finite(maps)
        self._store(maps, masks, valid)

    def _check_finite(self, maps: Any) -> Any:
        """Count NaN and inf; return a mask of the non-NaN pixels, or None when all are valid."""
        if bool(maps.isfinite().all()) if is_torch(maps) else bool(np.isfinite(maps).all()):
            return None
        nan = maps.isnan() if is_torch(maps) else np.isnan(maps)
        n_nan = int(nan.sum())
        self.n_inf += int(maps.isinf().sum()) if is_torch(maps) else int(np.isinf(maps).sum())
        if n_nan and self.first_nan_update is None:
            self.first_nan_update = self._updates
        self.n_nan += n_nan
        return ~nan if n_nan else None

    def _store(self, maps: Any, masks: Any, valid: Any) -> None:
        need_regions = self.with_regions or self.hist is not None
        region, sizes = label_regions(as_numpy(masks), self.connectivity) if need_regions else (None, None)
        neg_sel, pos_sel = ~masks, masks
        if valid is not None:  # NaN pixels are counted (the metrics become NaN) but never ranked
            region = region[as_numpy(valid[masks])] if region is not None else None
            neg_sel, pos_sel = neg_sel & valid, pos_sel & valid
        negatives, positives = maps[neg_sel], maps[pos_sel]  # (N_b,), (P_b,) in C order
        if self.hist is not None:
            assert sizes is not None  # histogram mode always labels regions (need_regions)
            weights: Any = 1.0 / sizes[region]  # (P_b,) numpy, made torch on the maps' device below
            if is_torch(maps):
                import torch

                weights = torch.from_numpy(weights).to(maps.device)
            self.hist.add(negatives, positives, weights, int(sizes.size))
            return
        self.negatives.add(negatives)
        self.positives.add(as_numpy(positives), region, sizes)

    # ------------------------------------------------------------------ compute
    @property
    def n_neg(self) -> int:
        """Normal pixels stored."""
        if self.hist is not None:
            return self.hist.n_neg
        return self.negatives.n if self.negatives is not None else 0

    @property
    def n_pos(self) -> int:
        """Anomalous pixels stored."""
        return self.hist.n_pos if self.hist is not None else self.positives.n

    @property
    def n_regions(self) -> int:
        """Ground-truth regions seen."""
        return self.hist.n_regions if self.hist is not None else self.positives.n_regions

    def sorted_positives(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, PRO weights) of the positives, descending (exact mode)."""
        return self.positives.sorted_desc()

    def groups(self) -> TieGroups:
        """The positive bins as tie groups (histogram mode)."""
        assert self.hist is not None, "groups() is for histogram mode"
        return self.hist.groups()

    def chunks(self, pos_desc: np.ndarray, weight_desc: np.ndarray | None) -> Iterator[TieGroups]:
        """Tie groups of the sorted positives, a chunk at a time (exact mode)."""
        count = self.negatives.count_lt_le
        return iter_groups(pos_desc, weight_desc, count, self.n_neg, self.n_regions, self.group_chunk)

    def extremes(self) -> tuple[Any, Any] | None:
        """(min, max) over all stored scores (exact mode)."""
        pairs = [e for e in (self.negatives.extremes(), self.positives.extremes()) if e is not None]
        if not pairs:
            return None
        dtype = np.result_type(*[np.asarray(v) for pair in pairs for v in pair])
        return dtype.type(min(p[0] for p in pairs)), dtype.type(max(p[1] for p in pairs))

    @property
    def nbytes(self) -> int:
        """Bytes of state held (host and device)."""
        if self.hist is not None:
            return self.hist.nbytes
        return (self.negatives.nbytes if self.negatives is not None else 0) + self.positives.nbytes
