"""Checkpoints of trained methods: learnable parameters as safetensors, metadata as JSON.

A trained method is stored by name and tag (``april_gan.visa``: the method trained on VisA)
and by a hash of everything that determines the training (method and backbone config, recipe,
auxiliary data, seed), so a different config trains again while evaluating a second test
dataset reuses the weights::

    <root>/<tag>/<hash16>/meta.json              config, protocol, epoch, losses, file names
    <root>/<tag>/<hash16>/epoch_003.safetensors  the learnable parameters only
    <root>/<tag>/<hash16>/epoch_003.optim.pt     optimizer + RNG state (``torch.load(weights_only=True)``)

``meta.json`` is written last and atomically: it always names a complete pair of files, so an
interruption at any moment leaves the previous epoch usable. The optimizer file is removed once
the training is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointStore",
    "config_hash",
    "load_meta",
    "load_state",
    "save_state",
]

logger = logging.getLogger(__name__)
META = "meta.json"
SCHEMA = 1


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; non-JSON values by ``str``).

    Example:
        >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
        True
    """
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        Path(tmp).replace(path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_state(path: Path, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors as safetensors (on CPU, contiguous, shared storage broken), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=dict(metadata or {})))


def load_state(path: Path, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file.

    Raises:
        FileNotFoundError: naming the file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; delete its folder's meta.json to train again")
    return load_file(str(path), device=str(device))


def load_meta(folder: Path) -> dict[str, Any] | None:
    """The ``meta.json`` of a checkpoint folder, or None when absent or unreadable."""
    path = Path(folder) / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable checkpoint metadata %s: %s", path, exc)
        return None


@dataclass
class CheckpointStore:
    """The checkpoint folder of one (tag, config hash), looked up in several roots.

    Args:
        tag: ``<method>.<aux>`` (``april_gan.visa``).
        digest: the config hash (see :func:`config_hash`).
        roots: folders searched in order for a complete checkpoint (``<weights_root>/trained``,
            ``<results_root>/checkpoints``).
        write_root: where training writes (and resumes from).
    """

    tag: str
    digest: str
    roots: Sequence[Path]
    write_root: Path

    def folder(self, root: Path) -> Path:
        """``<root>/<tag>/<hash16>``."""
        return Path(root) / self.tag / self.digest[:16]

    @property
    def write_folder(self) -> Path:
        """The folder training writes to."""
        return self.folder(self.write_root)

    def find_complete(self) -> tuple[Path, dict[str, Any]] | None:
        """The first folder, over the roots and then the write root, holding a finished training."""
        for root in [*self.roots, self.write_root]:
            meta = load_meta(self.folder(root))
            if meta and meta.get("complete") and meta.get("config_hash") == self.digest:
                return self.folder(root), meta
        return None

    def find_partial(self) -> dict[str, Any] | None:
        """The metadata of an interrupted training in the write folder, or None."""
        meta = load_meta(self.write_folder)
        if meta and not meta.get("complete") and meta.get("config_hash") == self.digest:
            return meta
        return None

    def save_epoch(
        self,
        epoch: int,
        state: Mapping[str, torch.Tensor],
        optim_state: Mapping[str, Any] | None,
        meta: Mapping[str, Any],
        complete: bool = False,
    ) -> Path:
        """Write one epoch's parameters (+ optimizer state unless complete) and then the metadata.

        Returns:
            The parameters' file.
        """
        folder = self.write_folder
        name = f"epoch_{epoch:03d}"
        model = folder / f"{name}.safetensors"
        save_state(model, state, {"tag": self.tag, "config_hash": self.digest, "epoch": str(epoch)})
        optim = None
        if optim_state is not None and not complete:
            optim = folder / f"{name}.optim.pt"
            _atomic_write(optim, lambda tmp: torch.save(dict(optim_state), tmp))
        old = load_meta(folder) or {}
        full = {
            **meta,
            "schema": SCHEMA,
            "tag": self.tag,
            "config_hash": self.digest,
            "epoch": epoch,
            "complete": complete,
            "files": {"model": model.name, "optim": optim.name if optim else None},
        }
        _atomic_write(folder / META, lambda tmp: tmp.write_text(json.dumps(full, indent=2, default=str)))
        self._remove_stale(folder, old.get("files", {}), keep={model.name, optim.name if optim else ""})
        return model

    @staticmethod
    def _remove_stale(folder: Path, files: Mapping[str, Any], keep: set[str]) -> None:
        for name in files.values():
            if name and name not in keep:
                (folder / name).unlink(missing_ok=True)

    @staticmethod
    def load_model(folder: Path, meta: Mapping[str, Any], device: Any = "cpu") -> dict[str, torch.Tensor]:
        """The parameters named by ``meta``."""
        return load_state(Path(folder) / meta["files"]["model"], device)

    @staticmethod
    def load_optim(folder: Path, meta: Mapping[str, Any]) -> dict[str, Any] | None:
        """The optimizer/RNG state named by ``meta`` (None if there is none)."""
        name = meta.get("files", {}).get("optim")
        if not name or not (Path(folder) / name).is_file():
            return None
        return torch.load(Path(folder) / name, map_location="cpu", weights_only=True)
