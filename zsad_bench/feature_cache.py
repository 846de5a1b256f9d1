"""The on-disk feature cache: per-image safetensors entries, atomic, checksummed, bounded.

Layout: ``root/<spec fingerprint>/spec.json`` and ``root/<spec fingerprint>/<h[:2]>/<h>.safetensors``
with ``h`` the sha256 of the image identity. See :mod:`zsad_bench.features` for the guarantees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from zsad_bench.features import FeatureSpec

__all__ = [
    "DTYPES",
    "CacheInfo",
    "CorruptEntryError",
    "FeatureCache",
    "VerifyReport",
    "default_cache_root",
    "image_identity",
]

logger = logging.getLogger(__name__)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FORMAT = "zsad-feature-v1"
Features = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- identity
def image_identity(record: Any) -> str | None:
    """``resolved path|size|mtime_ns`` of a record's image file, or None when it has no readable file."""
    path = getattr(record, "image_path", None)
    if path is None:
        return None
    try:
        path = Path(path).resolve()
        st = path.stat()
    except OSError:
        return None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _tensor_hash(t: torch.Tensor) -> str:
    data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def default_cache_root() -> Path:
    """``$ZSAD_CACHE`` or ``./cache``, as ``paths.cache_root`` in ``conf/paths/default.yaml``."""
    return Path(os.environ.get("ZSAD_CACHE") or "cache").expanduser().absolute()


# ----------------------------------------------------------------------------- cache
@dataclass
class CacheInfo:
    """What :meth:`FeatureCache.info` reports."""

    root: Path
    entries: int
    bytes: int
    max_bytes: int
    specs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class VerifyReport:
    """What :meth:`FeatureCache.verify` found: checked entries, corrupt (removed) ones, stale temp files."""

    checked: int = 0
    corrupt: list[str] = field(default_factory=list)
    removed_tmp: int = 0


class CorruptEntryError(ValueError):
    """An entry failed its size or checksum test."""


class FeatureCache:
    """Per-image safetensors entries under ``root/<spec fingerprint>/``.

    Args:
        root: the cache folder (created on first write).
        max_bytes: size limit; past it the least recently used entries are evicted down to 90 %.
        dtype: storage dtype for specs whose ``dtype`` is None.
        verify_input: check the stored input hash against the batch's pixels on read.
    """

    TMP_MAX_AGE_S = 600.0

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        max_bytes: int = 50 * 10**9,
        dtype: str = "fp16",
        verify_input: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.root = Path(root) if root is not None else default_cache_root()
        self.max_bytes = int(max_bytes)
        self.dtype = dtype
        self.verify_input = verify_input
        self.stats = {"hits": 0, "misses": 0, "corrupt": 0, "stale": 0, "writes": 0, "evicted": 0}
        self._bytes: int | None = None
        self._seen_specs: set[str] = set()

    # ------------------------------------------------------------------ keys and paths
    def effective(self, spec: FeatureSpec) -> FeatureSpec:
        """``spec`` with its storage dtype filled in."""
        return spec if spec.dtype is not None else replace(spec, dtype=self.dtype)

    def entry_path(self, spec: FeatureSpec, identity: str) -> Path:
        """The file of one image's entry."""
        h = hashlib.sha256(identity.encode()).hexdigest()[:32]
        return self.root / self.effective(spec).fingerprint / h[:2] / f"{h}.safetensors"

    # ------------------------------------------------------------------ read / write
    def get(self, spec: FeatureSpec, identity: str, input_hash: str | None = None) -> Features | None:
        """One image's features, or None (missing, corrupt, or computed from other pixels)."""
        path = self.entry_path(spec, identity)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            meta, tensors = _decode(data)
        except CorruptEntryError as exc:
            self.stats["corrupt"] += 1
            logger.warning("corrupt feature cache entry %s (%s): removed, will recompute", path, exc)
            path.unlink(missing_ok=True)
            return None
        if input_hash is not None and self.verify_input and meta.get("input") not in (None, "", input_hash):
            self.stats["stale"] += 1
            logger.warning("feature cache entry %s was computed from other pixels: recomputing", path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least-recently-used order for eviction
        return tensors

    def put(self, spec: FeatureSpec, identity: str, feats: Features, input_hash: str = "") -> Features:
        """Store one image's features atomically; return them as stored (storage dtype → float32)."""
        spec = self.effective(spec)
        assert spec.dtype is not None  # effective() fills it in
        stored = {k: v.detach().to("cpu", DTYPES[spec.dtype]).contiguous() for k, v in feats.items()}
        meta = {"format": FORMAT, "spec": spec.fingerprint, "identity": identity, "input": input_hash}
        data = _encode(stored, meta)
        path = self.entry_path(spec, identity)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_spec(spec)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._write_bytes(tmp, data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.stats["writes"] += 1
        self._account(len(data))
        return {k: v.float() for k, v in stored.items()}

    def _write_bytes(self, path: Path, data: bytes) -> None:
        """Write the temporary file (a separate method so tests can interrupt it)."""
        with path.open("wb") as f:
            f.write(data)

    def _write_spec(self, spec: FeatureSpec) -> None:
        fp = spec.fingerprint
        if fp in self._seen_specs:
            return
        target = self.root / fp / "spec.json"
        if not target.exists():
            tmp = target.with_name(f".spec.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps({**asdict(spec), "label": spec.label}, indent=1, default=str))
            os.replace(tmp, target)
        self._seen_specs.add(fp)

    # ------------------------------------------------------------------ batches
    def fetch(
        self,
        spec: FeatureSpec,
        records: Sequence[Any],
        images: torch.Tensor,
        compute: Callable[[torch.Tensor], Features],
        device: Any = "cpu",
    ) -> Features:
        """Features of a batch: cached entries are read, the others computed in one call and stored."""
        spec = self.effective(spec)
        hashes = [_tensor_hash(img) for img in images]
        ids = [image_identity(r) or f"pixels:{h}" for r, h in zip(records, hashes, strict=True)]
        results: list[Features | None] = [self.get(spec, i, h) for i, h in zip(ids, hashes, strict=True)]
        missing = [i for i, r in enumerate(results) if r is None]
        self.stats["hits"] += len(results) - len(missing)
        self.stats["misses"] += len(missing)
        if missing:
            index = torch.tensor(missing, device=images.device)
            computed = compute(images.index_select(0, index))
            for j, i in enumerate(missing):
                results[i] = self.put(spec, ids[i], {k: v[j] for k, v in computed.items()}, hashes[i])
        return _stack(results, device)

    def lookup(self, spec: FeatureSpec, records: Sequence[Any], device: Any = "cpu") -> Features | None:
        """Cached features of records without their pixels (feature-only training epochs), or None on any miss."""
        results = []
        for r in records:
            identity = image_identity(r)
            entry = self.get(spec, identity) if identity is not None else None
            if entry is None:
                return None
            results.append(entry)
        self.stats["hits"] += len(results)
        return _stack(results, device)

    # ------------------------------------------------------------------ size, info, maintenance
    def _entries(self) -> list[tuple[Path, int, float]]:
        out: list[tuple[Path, int, float]] = []
        if not self.root.is_dir():
            return out
        for path in self.root.glob("*/*/*.safetensors"):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path, st.st_size, st.st_mtime))
        return out

    def _account(self, added: int) -> None:
        if self._bytes is None:
            self._bytes = sum(size for _, size, _ in self._entries())
        else:
            self._bytes += added
        if self._bytes > self.max_bytes:
            self.evict()

    def evict(self, target: int | None = None) -> int:
        """Delete least recently used entries until the cache holds at most ``target`` bytes (90 % of max)."""
        target = int(self.max_bytes * 0.9) if target is None else target
        entries = sorted(self._entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        removed = 0
        for path, size, _ in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        self._bytes = total
        self.stats["evicted"] += removed
        if removed:
            logger.info("feature cache %s: evicted %d entries (now %.1f MB)", self.root, removed, total / 1e6)
        return removed

    def info(self) -> CacheInfo:
        """Entries and bytes, per spec."""
        per: dict[str, dict[str, Any]] = {}
        for path, size, _ in self._entries():
            fp = path.parent.parent.name
            row = per.setdefault(
                fp, {"fingerprint": fp, "label": _spec_label(path.parent.parent), "entries": 0, "bytes": 0}
            )
            row["entries"] += 1
            row["bytes"] += size
        rows = sorted(per.values(), key=lambda r: -r["bytes"])
        total = sum(r["bytes"] for r in rows)
        return CacheInfo(self.root, sum(r["entries"] for r in rows), total, self.max_bytes, rows)

    def clear(self, fingerprint: str | None = None) -> int:
        """Remove every entry (or those of one spec fingerprint); return how many entries were removed."""
        if not self.root.is_dir():
            return 0
        dirs = [self.root / fingerprint] if fingerprint else [p for p in self.root.iterdir() if p.is_dir()]
        removed = 0
        for d in dirs:
            if d.is_dir():
                removed += sum(1 for _ in d.glob("*/*.safetensors"))
                shutil.rmtree(d, ignore_errors=True)
        self._bytes = None
        self._seen_specs.clear()
        return removed

    def verify(self) -> VerifyReport:
        """Check every entry's size and checksum; remove corrupt ones and abandoned temporary files."""
        report = VerifyReport()
        for path, _, _ in self._entries():
            report.checked += 1
            try:
                _decode(path.read_bytes())
            except (CorruptEntryError, OSError) as exc:
                report.corrupt.append(f"{path} ({exc})")
                path.unlink(missing_ok=True)
        now = time.time()
        if self.root.is_dir():
            for tmp in self.root.rglob(".*.tmp"):
                try:
                    if now - tmp.stat().st_mtime > self.TMP_MAX_AGE_S:
                        tmp.unlink()
                        report.removed_tmp += 1
                except OSError:
                    continue
        self._bytes = None
        return report


# ----------------------------------------------------------------------------- encoding
def _encode(tensors: Features, meta: Mapping[str, str]) -> bytes:
    """Safetensors bytes whose metadata holds the sha256 of the data section."""
    from safetensors.torch import save

    plain = save(tensors)
    n = int.from_bytes(plain[:8], "little")
    digest = hashlib.sha256(memoryview(plain)[8 + n :]).hexdigest()
    return save(tensors, metadata={**meta, "sha256": digest})


def _decode(data: bytes) -> tuple[dict[str, str], Features]:
    """Parse and check an entry.

    Raises:
        CorruptEntryError: truncated file, bad header, wrong data length or checksum.
    """
    from safetensors.torch import load

    if len(data) < 8:
        raise CorruptEntryError(f"{len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise CorruptEntryError("truncated header")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise CorruptEntryError("unreadable header") from exc
    meta = header.pop("__metadata__", None) or {}
    expected = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    payload = memoryview(data)[8 + n :]
    if len(payload) != expected:
        raise CorruptEntryError(f"data is {len(payload)} bytes, header says {expected}")
    if meta.get("format") != FORMAT or hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CorruptEntryError("checksum mismatch")
    return meta, load(data)


def _stack(results: Sequence[Features | None], device: Any) -> Features:
    keys = set(results[0]) if results and results[0] is not None else set()
    if any(r is None or set(r) != keys for r in results):
        raise ValueError("feature entries of one batch have different keys; clear the cache of this spec")
    return {k: torch.stack([r[k] for r in results]).to(device, torch.float32) for k in sorted(keys)}  # type: ignore[index]


def _spec_label(folder: Path) -> str:
    try:
        return json.loads((folder / "spec.json").read_text()).get("label", "?")
    except (OSError, ValueError):
        return "?"
