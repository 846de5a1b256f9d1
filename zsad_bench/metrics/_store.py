"""Compact exact state: sorted blocks of normal-pixel scores, and anomalous pixels with their region.

Normal ("negative") scores are copied into blocks of at most ``block_size`` values, each sorted
once when it fills; counting how many negatives lie below a key is a ``searchsorted`` per block.
No step ever concatenates all negatives, so the state is 4 bytes per float32 negative plus one
partly filled block (allocated lazily, so untouched capacity costs no resident memory on the CPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["NumpySortedStore", "PositiveStore", "TorchSortedStore", "make_sorted_store"]

_MIN_BLOCK = 1 << 20


def _keys_for(keys: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Keys in a block's dtype that count exactly like the originals.

    Returns ``(up, down)`` with ``x < key <=> x < up`` and ``x <= key <=> x <= down`` for every
    ``x`` of ``dtype``.

    Searching float64 keys in a float32 block would make numpy cast the whole block to float64.
    """
    if keys.dtype == dtype or np.result_type(keys.dtype, dtype) == dtype:
        same = keys.astype(dtype, copy=False)
        return same, same
    near = keys.astype(dtype)  # round to nearest
    up = np.where(near < keys, np.nextafter(near, dtype.type(np.inf)), near)
    down = np.where(near > keys, np.nextafter(near, dtype.type(-np.inf)), near)
    return up, down


class NumpySortedStore:
    """Negatives as sorted numpy blocks (the CPU path).

    Args:
        block_size: the largest block, in values.
    """

    def __init__(self, block_size: int = 1 << 24) -> None:
        self.block_size = block_size
        self.blocks: list[np.ndarray] = []  # closed blocks, each sorted
        self._open: np.ndarray | None = None
        self._fill = 0
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        """Append a 1-D array of NaN-free scores."""
        start = 0
        while start < values.size:
            if self._open is None or self._open.dtype != values.dtype:
                self._close()
                capacity = min(self.block_size, max(_MIN_BLOCK, self.n, values.size - start))
                self._open = np.empty(capacity, dtype=values.dtype)  # pages are committed as they fill
            take = min(self._open.size - self._fill, values.size - start)
            self._open[self._fill : self._fill + take] = values[start : start + take]
            self._fill += take
            self.n += take
            start += take
            if self._fill == self._open.size:
                self._close()

    def _close(self) -> None:
        if self._open is not None and self._fill:
            block = self._open[: self._fill]
            block.sort()  # in place; numpy's SIMD quicksort
            self.blocks.append(block)
        self._open, self._fill = None, 0

    def finalize(self) -> None:
        """Sort the open block; later ``add`` calls open a new one."""
        self._close()

    def count_lt_le(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(#negatives < key, #negatives <= key) for ascending ``keys``, as int64."""
        self.finalize()
        lt = np.zeros(keys.size, np.int64)
        le = np.zeros(keys.size, np.int64)
        for block in self.blocks:
            up, down = _keys_for(keys, block.dtype)
            lt += np.searchsorted(block, up, side="left")
            le += np.searchsorted(block, down, side="right")
        return lt, le

    def count_le(self, keys: np.ndarray) -> np.ndarray:
        """#negatives <= key, as int64."""
        self.finalize()
        le = np.zeros(keys.size, np.int64)
        for block in self.blocks:
            le += np.searchsorted(block, _keys_for(keys, block.dtype)[1], side="right")
        return le

    def extremes(self) -> tuple[Any, Any] | None:
        """(min, max) of the stored scores as numpy scalars, or None when empty."""
        self.finalize()
        if not self.blocks:
            return None
        dtype = np.result_type(*self.blocks)
        return min(dtype.type(b[0]) for b in self.blocks), max(dtype.type(b[-1]) for b in self.blocks)

    @property
    def nbytes(self) -> int:
        """Bytes of stored scores (an open block's unused capacity is never touched, so not resident)."""
        return sum(b.nbytes for b in self.blocks) + (self._fill * self._open.itemsize if self._open is not None else 0)


class TorchSortedStore:
    """Negatives as sorted torch blocks on the input's device (the CUDA path).

    Args:
        device: the torch device of the inputs.
        block_size: the largest block, in values.
    """

    def __init__(self, device: Any, block_size: int = 1 << 24) -> None:
        self.device = device
        self.block_size = block_size
        self.blocks: list[Any] = []
        self._pending: list[Any] = []
        self._pending_n = 0
        self.n = 0

    def add(self, values: Any) -> None:
        """Append a 1-D tensor of NaN-free scores (moved to the store's device)."""
        values = values.to(self.device)
        if self._pending and self._pending[0].dtype != values.dtype:
            self._close()
        self._pending.append(values)
        self._pending_n += values.numel()
        self.n += values.numel()
        if self._pending_n >= self.block_size:
            self._close()

    def _close(self) -> None:
        import torch

        if self._pending:
            block = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
            self.blocks.append(torch.sort(block).values)
        self._pending, self._pending_n = [], 0

    def finalize(self) -> None:
        """Sort what is pending."""
        self._close()

    def count_lt_le(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(#negatives < key, #negatives <= key) for ascending ``keys``, as int64 numpy arrays."""
        import torch

        self.finalize()
        lt = torch.zeros(keys.size, dtype=torch.int64, device=self.device)
        le = torch.zeros(keys.size, dtype=torch.int64, device=self.device)
        for block in self.blocks:
            dtype = np.dtype(str(block.dtype).removeprefix("torch."))
            up, down = (torch.from_numpy(np.ascontiguousarray(k)).to(self.device) for k in _keys_for(keys, dtype))
            lt += torch.searchsorted(block, up, right=False)
            le += torch.searchsorted(block, down, right=True)
        return lt.cpu().numpy(), le.cpu().numpy()

    def count_le(self, keys: np.ndarray) -> np.ndarray:
        """#negatives <= key, as an int64 numpy array."""
        return self.count_lt_le(keys)[1]

    def extremes(self) -> tuple[Any, Any] | None:
        """(min, max) of the stored scores as numpy scalars, or None when empty."""
        self.finalize()
        if not self.blocks:
            return None
        lows = [b[:1].cpu().numpy() for b in self.blocks]
        highs = [b[-1:].cpu().numpy() for b in self.blocks]
        return np.concatenate(lows).min(), np.concatenate(highs).max()

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        tensors = self.blocks + self._pending
        return sum(t.numel() * t.element_size() for t in tensors)


def make_sorted_store(device: Any | None, block_size: int = 1 << 24) -> NumpySortedStore | TorchSortedStore:
    """A numpy store when ``device`` is None, else a torch store on ``device``."""
    return NumpySortedStore(block_size) if device is None else TorchSortedStore(device, block_size)


class PositiveStore:
    """Anomalous-pixel scores with the index of their ground-truth region (always on the CPU).

    Positives are a few percent of the pixels; keeping them exactly costs the score plus a
    4-byte region index each (no index when no metric needs regions).

    Args:
        with_regions: whether region indices are stored (needed by AUPRO only).
    """

    def __init__(self, with_regions: bool = True) -> None:
        self.with_regions = with_regions
        self._scores: list[np.ndarray] = []
        self._regions: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self.n = 0
        self.n_regions = 0

    def add(self, scores: np.ndarray, region: np.ndarray | None = None, sizes: np.ndarray | None = None) -> None:
        """Append positives; ``region`` indexes ``sizes`` (regions of this batch only)."""
        self._scores.append(scores)
        self.n += scores.size
        if self.with_regions:
            if region is None or sizes is None:
                raise ValueError("this store keeps regions: pass region and sizes")
            self._regions.append((region + self.n_regions).astype(np.int32))
            self._sizes.append(sizes)
            self.n_regions += sizes.size

    def _consolidate(self) -> None:
        """Replace the per-batch lists by one array each (so that the copy is not held twice)."""
        if len(self._scores) > 1:
            self._scores = [np.concatenate(self._scores)]
            if self.with_regions:
                self._regions = [np.concatenate(self._regions)]
                self._sizes = [np.concatenate(self._sizes)]

    def sorted_desc(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(scores, PRO weights or None) sorted by descending score, then descending weight.

        The secondary key makes the order (and so every float sum) independent of how the data
        was split into batches.
        """
        if not self._scores:
            return np.zeros(0, np.float32), (np.zeros(0, np.float64) if self.with_regions else None)
        self._consolidate()
        scores = self._scores[0]
        if not self.with_regions:
            return np.sort(scores)[::-1], None
        weights = 1.0 / self._sizes[0][self._regions[0]]
        order = np.lexsort((weights, scores))[::-1]  # ascending (score, weight), reversed
        return scores[order], weights[order]

    def extremes(self) -> tuple[Any, Any] | None:
        """(min, max) of the stored scores, or None when empty."""
        mins = [s.min() for s in self._scores if s.size]
        if not mins:
            return None
        return min(mins), max(s.max() for s in self._scores if s.size)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(a.nbytes for a in self._scores + self._regions + self._sizes)
