"""The :class:`Backbone` base class, its outputs, and the registration helper.

A backbone resolves its weights when built (fast: a path and a fingerprint) and loads
the network on first use, so a run whose features are all cached never loads it.
Layers are 1-indexed block outputs ("layer 6" = output of the 6th block); a negative
layer counts from the end (-1 = last); ``cfg.layer_map`` maps nominal layers of the
full-size model to the layers of a tiny stand-in.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from zsad_bench.backbones.config import BackboneConfig
from zsad_bench.backbones.prompts import PromptHook
from zsad_bench.backbones.weights import ResolvedWeights, load_state_dict, resolve_weights
from zsad_bench.registry import BACKBONES, register_backbone

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Backbone", "Geometry", "ImageTokens", "build_backbone", "default_config", "register"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Geometry:
    """Static shape facts of a backbone, known without loading it."""

    patch_size: int
    depth: int
    width: int
    num_prefix_tokens: int
    embed_dim: int | None = None


@dataclass
class ImageTokens:
    """Tokens of a batch at chosen layers.

    Attributes:
        layers: requested layer → (B, P+N, D) tokens, the P prefix (class) tokens first.
        embed: (B, E) global embedding (CLIP: ln_post(CLS) @ proj; DINOv2: norm(CLS)), or None (SAM).
        grid: the patch grid (rows, cols); N = rows · cols.
        num_prefix_tokens: P.
    """

    layers: dict[int, torch.Tensor]
    embed: torch.Tensor | None
    grid: tuple[int, int]
    num_prefix_tokens: int

    def patches(self, layer: int) -> torch.Tensor:
        """The (B, N, D) patch tokens of ``layer`` (prefix tokens dropped)."""
        return self.layers[layer][:, self.num_prefix_tokens :]

    def patch_map(self, layer: int) -> torch.Tensor:
        """The (B, D, rows, cols) patch tokens of ``layer`` as a feature map."""
        x = self.patches(layer)  # (B, N, D)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)


class Backbone(ABC):
    """A frozen foundation model behind one API (see docs/backbones.md).

    Args:
        cfg: the validated configuration.
        device: where the network runs.
    """

    family: ClassVar[str] = ""
    library: ClassVar[str] = ""  # the distribution that builds the network (its version enters random fingerprints)

    def __init__(self, cfg: BackboneConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.weights: ResolvedWeights = resolve_weights(cfg, recipe=self._recipe())
        self._model: nn.Module | None = None
        self._geometry: Geometry | None = None
        self.forward_calls = 0  # image-encoder forwards, for tests and benchmarks

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The registered name."""
        return self.cfg.name

    @property
    def weights_fingerprint(self) -> str:
        """``sha256:…`` of the checkpoint file or ``random:…`` of the random-weights recipe."""
        return self.weights.fingerprint

    @property
    def random_weights(self) -> bool:
        """True when the weights are seeded random ones (every result must say so)."""
        return self.weights.random

    @property
    def effective_precision(self) -> str:
        """The precision computations really run in (autocast only acts on CUDA)."""
        return self.cfg.precision if self.device.type == "cuda" else "fp32"

    def signature(self) -> dict[str, Any]:
        """Everything about the backbone that changes its features (for cache keys)."""
        return {**self.cfg.describe(), "precision": self.effective_precision, "weights": self.weights_fingerprint}

    def _recipe(self) -> str:
        """What random weights depend on: architecture, overrides and library versions."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            lib = f"{self.library}={version(self.library)}" if self.library else ""
        except PackageNotFoundError:
            lib = self.library
        kwargs = sorted(self.cfg.arch_kwargs.items())
        return f"{self.family}|{self.cfg.arch}|{kwargs}|{self.cfg.native_size}|torch={torch.__version__}|{lib}"

    # ------------------------------------------------------------------ geometry
    @property
    def geometry(self) -> Geometry:
        """Patch size, depth, width, prefix tokens and embedding size."""
        if self._geometry is None:
            self._geometry = self._make_geometry()
        return self._geometry

    @property
    def input_size(self) -> int:
        """The square input side in pixels."""
        return self.cfg.input_size

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return self.geometry.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid (rows, cols) at ``input_size``."""
        g = self.cfg.input_size // self.geometry.patch_size
        return g, g

    @property
    def depth(self) -> int:
        """Number of transformer blocks of the image encoder."""
        return self.geometry.depth

    @property
    def width(self) -> int:
        """Token width D of the image encoder."""
        return self.geometry.width

    @property
    def num_prefix_tokens(self) -> int:
        """Class/register tokens before the patch tokens (CLIP 1, DINOv2 1 or 5, SAM 0)."""
        return self.geometry.num_prefix_tokens

    @property
    def embed_dim(self) -> int | None:
        """Size of the global embedding (CLIP: the joint space), None when there is none."""
        return self.geometry.embed_dim

    def resolve_layers(self, layers: Iterable[int]) -> dict[int, int]:
        """Map requested layers to actual 1-based block indices (order kept, duplicates dropped).

        Raises:
            ValueError: for a layer outside 1..depth after mapping.
        """
        out: dict[int, int] = {}
        for layer in layers:
            actual = self.cfg.layer_map.get(int(layer), int(layer))
            if actual < 0:
                actual = self.depth + 1 + actual
            if not 1 <= actual <= self.depth:
                raise ValueError(
                    f"backbone {self.name}: layer {layer} is outside 1..{self.depth}"
                    f" (layer_map {dict(self.cfg.layer_map) or 'none'})"
                )
            out.setdefault(int(layer), actual)
        return out

    # ------------------------------------------------------------------ the network
    @property
    def model(self) -> nn.Module:
        """The network, loaded on first access (frozen, eval mode, on ``device``)."""
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self) -> nn.Module:
        # inference_mode(False): a network first touched inside an inference_mode block would
        # otherwise hold inference tensors, and later autograd through it (prompt learning) fails
        with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)  # seeded random init; the caller's RNG stream is left alone
            model = self._create()
            if self.weights.path is not None:
                self._load_checkpoint(model, self.weights.path)
            model = self._resize(model)
        return model.to(self.device).eval().requires_grad_(False)

    def _load_checkpoint(self, model: nn.Module, path: Path) -> None:
        state = self._adapt_state_dict(load_state_dict(path), model)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            detail = " ".join(str(exc).split("\n")[1:3]).strip()
            raise ValueError(f"{path} does not fit backbone {self.name} ({self.cfg.arch}): {detail}") from exc
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path} does not fit backbone {self.name} ({self.cfg.arch}): "
                f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        logger.info("backbone %s: loaded %s (%s)", self.name, path, self.weights.fingerprint)

    @abstractmethod
    def _create(self) -> nn.Module:
        """Build the architecture at its native size with (seeded) random initialisation."""

    @abstractmethod
    def _make_geometry(self) -> Geometry:
        """Shape facts without loading weights."""

    def _adapt_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """Rename or select checkpoint entries for ``model`` (default: unchanged)."""
        return state

    def _resize(self, model: nn.Module) -> nn.Module:
        """Adapt the positional embedding to ``input_size`` (default: nothing to do)."""
        return model

    # ------------------------------------------------------------------ running
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``cfg.precision`` on CUDA; a no-op on CPU or for fp32."""
        if self.device.type == "cuda" and self.cfg.precision != "fp32":
            dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def running(self, grad: bool = False) -> Iterator[None]:
        """Inference mode + autocast, or autocast only when gradients must reach prompts."""
        mode = contextlib.nullcontext() if grad and torch.is_grad_enabled() else torch.inference_mode()
        with mode, self.autocast():
            yield

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validate a (B, 3, S, S) batch and move it to the device as float32.

        Raises:
            ValueError: naming the expected shape.
        """
        s = self.cfg.input_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (s, s):
            raise ValueError(
                f"backbone {self.name} expects images of shape (B, 3, {s}, {s}) "
                f"(backbone.input_size), got {tuple(images.shape)}"
            )
        return images.to(self.device, torch.float32)

    @abstractmethod
    def image_tokens(
        self,
        images: torch.Tensor,
        layers: Iterable[int],
        *,
        norm: bool = False,
        proj: bool = False,
        prompts: PromptHook | None = None,
    ) -> ImageTokens:
        """Tokens (prefix + patches) of ``layers`` and the global embedding.

        Args:
            images: (B, 3, S, S) preprocessed images.
            layers: requested layers (1-based, negative from the end, through ``layer_map``).
            norm: apply the final norm (CLIP ``ln_post``, DINOv2 ``norm``) to the tokens.
            proj: apply the CLIP projection to the tokens (CLIP only; implies the E-dim space).
            prompts: a hook ``(block, x) -> x`` called before each block (CLIP only), see
                :mod:`zsad_bench.backbones.prompts`; tokens it appends are excluded from outputs.
        """


def escape(t: torch.Tensor) -> torch.Tensor:
    """A float32 tensor usable in autograd (inference-mode tensors are copied out)."""
    t = t.float()
    return t.clone() if t.is_inference() else t


def register(defaults: BackboneConfig, cls: type[Backbone], module: str, **card: Any) -> None:
    """Register ``defaults.name`` as a builder ``(cfg, device) -> Backbone`` with its card."""

    def build(cfg: Mapping[str, Any] | None = None, device: str | torch.device = "cpu") -> Backbone:
        return cls(BackboneConfig.from_mapping(defaults, cfg), device)

    build.__name__ = build.__qualname__ = defaults.name
    build.__module__ = module
    build.defaults = defaults  # type: ignore[attr-defined]
    register_backbone(defaults.name, family=cls.family, arch=defaults.arch, input_size=defaults.input_size, **card)(
        build
    )


def default_config(name: str) -> BackboneConfig:
    """The registered defaults of backbone ``name`` (what ``conf/backbone/<name>.yaml`` mirrors)."""
    return BACKBONES.get(name).defaults


def build_backbone(backbone_cfg: Mapping[str, Any], device: str | torch.device = "cpu") -> Backbone:
    """Build the backbone named by ``backbone_cfg['name']``, other keys overriding its defaults.

    Raises:
        KeyError: the config has no name, or the name is unknown (close matches listed).
        ValueError: an unknown key or an invalid value.
    """
    name = backbone_cfg.get("name") if backbone_cfg else None
    if not name:
        raise KeyError("backbone config has no 'name'; choose one of: " + ", ".join(BACKBONES.list()))
    return BACKBONES.get(str(name))(backbone_cfg, device)
