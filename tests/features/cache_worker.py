"""A separate process that writes feature-cache entries (run by test_cache_processes.py).

Usage:
    python cache_worker.py half ROOT             write one entry, stop half-way, print HALF, wait to be killed
    python cache_worker.py write ROOT A B GO     wait for file GO, then write entries A..B-1 three times, print DONE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from zsad_bench.features import FeatureCache, FeatureSpec

SPEC = FeatureSpec(backbone="fake", weights="w0", model="{}", preprocessing="p", input_size=8, layers=(1,))


def tensors(i: int) -> dict[str, torch.Tensor]:
    """The features of image ``i`` (the same in every process)."""
    g = torch.Generator().manual_seed(i)
    return {"tokens.1": torch.randn(256, 64, generator=g), "embed": torch.full((16,), float(i))}


class HalfWriter(FeatureCache):
    """Writes half of the temporary file, then hangs (the parent kills the process)."""

    def _write_bytes(self, path: Path, data: bytes) -> None:
        with path.open("wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        print("HALF", flush=True)
        time.sleep(120)


def main(argv: list[str]) -> None:
    mode, root = argv[0], Path(argv[1])
    if mode == "half":
        HalfWriter(root).put(SPEC, "img-0", tensors(1000))
        return
    start, stop, go = int(argv[2]), int(argv[3]), Path(argv[4])
    while not go.exists():
        time.sleep(0.01)
    cache = FeatureCache(root)
    for _ in range(3):
        for i in range(start, stop):
            cache.put(SPEC, f"img-{i}", tensors(i))
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
