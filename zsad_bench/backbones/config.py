"""The backbone configuration: one frozen dataclass validated from a Hydra/dict mapping.

The same keys appear in ``conf/backbone/<name>.yaml``; the evaluation loop builds its
image transform from ``input_size``, ``mean``, ``std`` and ``interpolation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "BackboneConfig",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CHOICES = {
    "interpolation": ("bicubic", "bilinear", "nearest"),
    "activation": ("gelu", "quick_gelu"),
    "pos_interp": ("bicubic", "bilinear"),
    "precision": ("fp32", "bf16", "fp16"),
}


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that selects and loads a backbone.

    Attributes:
        name: the registered backbone name (``clip_vit_l14_336``).
        arch: the architecture: an open_clip model name, a timm model name, or a SAM size.
        pretrained: the weights tag (``openai``, ``laion400m_e31``, ``lvd142m``, ``test``).
        weights: ``pretrained`` (resolve the tag: local cache, then hub), ``random``
            (seeded random initialisation, marked as such), or a path to a checkpoint file.
        input_size: the square input side in pixels; the positional embedding is resized to it.
        mean: per-channel normalisation mean (on the 0–1 scale).
        std: per-channel normalisation std.
        interpolation: how the evaluation loop squash-resizes images to ``input_size``.
        activation: ``gelu`` or ``quick_gelu`` (CLIP only; see docs/backbones.md).
        pos_interp: ``bicubic`` or ``bilinear`` positional-embedding resize.
        pos_antialias: pass ``antialias=True`` to the resize. It matters even when upsampling
            with bicubic (PyTorch's antialiased bicubic uses a different kernel): open_clip and
            APRIL-GAN pass True, AdaCLIP passes nothing (False). No effect for bilinear upsampling.
        precision: autocast precision on CUDA (``fp32`` disables autocast); CPU runs fp32.
        seed: the seed of random weights.
        layer_map: nominal layer → actual layer (tiny stand-ins map 6/12/18/24 to 1/2/3/4).
        arch_kwargs: architecture overrides (tiny configurations of the real architectures).
        native_size: the image size the checkpoint's positional embedding was trained at
            (0: the architecture's default).
        weights_root: the local weights folder (None: ``$ZSAD_WEIGHTS``, else ``./weights``).
    """

    name: str
    arch: str = ""
    pretrained: str = ""
    weights: str = "pretrained"
    input_size: int = 224
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    activation: str = "gelu"
    pos_interp: str = "bicubic"
    pos_antialias: bool = True
    precision: str = "fp32"
    seed: int = 0
    layer_map: Mapping[int, int] = field(default_factory=dict)
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    native_size: int = 0
    weights_root: str | None = None

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"backbone {self.name!r}: {key}={value!r} is not one of {allowed}")
        if self.input_size <= 0:
            raise ValueError(f"backbone {self.name!r}: input_size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"backbone {self.name!r}: mean and std need 3 values, got {self.mean}, {self.std}")

    @property
    def random(self) -> bool:
        """Whether random weights were asked for."""
        return self.weights == "random"

    @classmethod
    def from_mapping(cls, defaults: BackboneConfig, overrides: Mapping[str, Any] | None) -> BackboneConfig:
        """Apply a (Hydra or plain) mapping of overrides to ``defaults``.

        Raises:
            ValueError: naming an unknown key and the known ones.
        """
        data = _plain(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown backbone config key(s) {unknown} for {defaults.name!r}; known: {sorted(known)}")
        if data.get("name", defaults.name) != defaults.name:
            raise ValueError(f"config name {data['name']!r} does not match backbone {defaults.name!r}")
        clean: dict[str, Any] = {}
        for key, value in data.items():
            if value is None and key != "weights_root":
                continue  # a null in YAML keeps the default
            clean[key] = _coerce(key, value)
        return replace(defaults, **clean)

    def describe(self) -> dict[str, Any]:
        """The options that change features (part of every feature fingerprint)."""
        return {
            "name": self.name,
            "arch": self.arch,
            "activation": self.activation,
            "pos_interp": self.pos_interp,
            "pos_antialias": self.pos_antialias,
            "precision": self.precision,
            "input_size": self.input_size,
            "native_size": self.native_size,
            "arch_kwargs": dict(sorted(self.arch_kwargs.items())),
            "layer_map": sorted(self.layer_map.items()),
        }

    def preprocessing(self) -> str:
        """A canonical description of the image transform the evaluation loop applies."""
        mean = ",".join(f"{m:.8g}" for m in self.mean)
        std = ",".join(f"{s:.8g}" for s in self.std)
        return f"squash-{self.interpolation}-{self.input_size}|mean={mean}|std={std}"


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict from a DictConfig (interpolations resolved) or a mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(mapping, DictConfig):
            return dict(OmegaConf.to_container(mapping, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(mapping)


def _coerce(key: str, value: Any) -> Any:
    if key in ("mean", "std"):
        return tuple(float(v) for v in value)
    if key == "layer_map":
        return {int(k): int(v) for k, v in dict(value).items()}
    if key == "arch_kwargs":
        return {str(k): (tuple(v) if isinstance(v, list) else v) for k, v in dict(value).items()}
    if key in ("input_size", "seed", "native_size"):
        return int(value)
    if key == "pos_antialias":
        return bool(value)
    if key in ("weights", "pretrained", "arch") and value is not None:
        return str(value)
    return value
