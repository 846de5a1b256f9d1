"""The run context a method receives in ``setup``: device, seed, backbone, feature cache."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from zsad_bench.types import Batch, DatasetInfo

__all__ = ["Context"]


@dataclass
class Context:
    """Everything a method may use besides its own config.

    Attributes:
        device: "cpu", "cuda" or a torch device.
        seed: the run's seed; methods derive every random draw from it.
        backbone_cfg: the composed ``backbone`` config group.
        dataset: the test dataset's info, when known.
        categories: the categories of the run.
        work_dir: where the method may write (checkpoints, knowledge files).
        cache: the feature cache, or None to always compute.
        hooks: named callables injected by parity tests (documented where used).
    """

    device: Any = "cpu"
    seed: int = 0
    backbone_cfg: Mapping[str, Any] = field(default_factory=dict)
    dataset: DatasetInfo | None = None
    categories: list[str] = field(default_factory=list)
    work_dir: Path = field(default_factory=Path.cwd)
    cache: Any = None
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)
    _backbone: Any = None

    @property
    def backbone(self) -> Any:
        """The frozen backbone, built on first use from ``backbone_cfg``."""
        if self._backbone is None:
            from zsad_bench.backbones import build_backbone

            self._backbone = build_backbone(self.backbone_cfg, device=self.device)
        return self._backbone

    def features(self, batch: Batch, spec: Any) -> dict[str, torch.Tensor]:
        """Frozen features of ``batch`` described by ``spec``, from the cache when present."""
        from zsad_bench.features import get_features

        return get_features(self, batch, spec)
