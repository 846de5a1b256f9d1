"""The SAM image encoder (segment-anything ``ImageEncoderViT``, ``modeling/image_encoder.py``).

Registered: ``sam_vit_l`` (ViT-L, 24 blocks, global attention at blocks 6/12/18/24,
window 14, trained at 1024) and ``tiny_sam`` (the same architecture at width 64, depth 4,
window 4, global attention at blocks 2 and 4). Only the encoder's blocks are used; tokens
are the (B, H·W, C) block outputs (no class token). At another ``input_size`` the absolute
positional embedding is resized; the relative position tables are interpolated by SAM
itself at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol, cast

import torch
from torch import nn

from zsad_bench.backbones.base import Backbone, Geometry, ImageTokens, escape, register
from zsad_bench.backbones.config import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig
from zsad_bench.backbones.prompts import PromptHook

__all__ = ["SAMBackbone"]


class _ImageEncoder(Protocol):
    """The parts of segment-anything's ``ImageEncoderViT`` used here (the package has no types)."""

    patch_embed: nn.Module  # (B, 3, S, S) → (B, H, W, C)
    pos_embed: torch.Tensor  # (1, G, G, C) absolute positional embedding
    blocks: nn.ModuleList
    img_size: int


_SIZES: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}


class SAMBackbone(Backbone):
    """SAM's ViT image encoder; ``arch`` is ``vit_b``, ``vit_l`` or ``vit_h``."""

    family = "sam"
    library = "segment-anything"

    def _args(self) -> dict[str, Any]:
        if self.cfg.arch not in _SIZES:
            raise ValueError(f"backbone {self.name}: SAM arch must be one of {sorted(_SIZES)}, got {self.cfg.arch!r}")
        args = {"patch_size": 16, "window_size": 14, "out_chans": 256, **_SIZES[self.cfg.arch]}
        args.update(self.cfg.arch_kwargs)
        args["global_attn_indexes"] = tuple(args["global_attn_indexes"])
        return args

    def _native(self) -> int:
        return self.cfg.native_size or 1024

    def _make_geometry(self) -> Geometry:
        a = self._args()
        return Geometry(a["patch_size"], a["depth"], a["embed_dim"], 0, None)

    def _create(self) -> nn.Module:
        from segment_anything.modeling import ImageEncoderViT

        return ImageEncoderViT(
            img_size=self._native(),
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True,
            use_rel_pos=True,
            **self._args(),
        )

    def _adapt_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        prefix = "image_encoder."
        if any(k.startswith(prefix) for k in state):  # a full SAM checkpoint
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        return state

    def _resize(self, model: nn.Module) -> nn.Module:
        from zsad_bench.backbones.clip_ops import resize_grid_embedding

        if self.cfg.input_size % self.patch_size:
            raise ValueError(f"backbone {self.name}: input_size must be a multiple of {self.patch_size}")
        encoder = cast(_ImageEncoder, model)
        pos = encoder.pos_embed.data  # (1, G, G, C)
        if tuple(pos.shape[1:3]) != self.grid_size:
            grid = resize_grid_embedding(
                pos.reshape(-1, pos.shape[-1]), self.grid_size, self.cfg.pos_interp, self.cfg.pos_antialias
            )
            encoder.pos_embed = nn.Parameter(grid.reshape(1, *self.grid_size, -1), requires_grad=False)
            encoder.img_size = self.cfg.input_size
        return model

    def image_tokens(
        self,
        images: torch.Tensor,
        layers: Iterable[int],
        *,
        norm: bool = False,
        proj: bool = False,
        prompts: PromptHook | None = None,
    ) -> ImageTokens:
        """(B, H·W, C) block outputs of ``layers``; no class token, ``embed`` is None."""
        if norm or proj or prompts is not None:
            raise ValueError(f"backbone {self.name}: SAM tokens have no final norm/projection and take no prompts")
        images = self.check_images(images)
        wanted = self.resolve_layers(layers)
        last = max(wanted.values(), default=0)
        m = cast(_ImageEncoder, self.model)
        with self.running():
            self.forward_calls += 1
            x = m.patch_embed(images) + m.pos_embed  # (B, H, W, C)
            taken: dict[int, torch.Tensor] = {}
            for i, block in enumerate(m.blocks[:last], start=1):
                x = block(x)
                taken[i] = x.flatten(1, 2)  # (B, H·W, C)
            tokens = {req: escape(taken[act]) for req, act in wanted.items()}
        return ImageTokens(tokens, None, self.grid_size, 0)


for _defaults, _card in [
    (
        BackboneConfig(
            name="sam_vit_l",
            arch="vit_l",
            pretrained="sa1b",
            input_size=1024,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bilinear",
            pos_interp="bilinear",
            pos_antialias=False,
        ),
        {"license": "Apache-2.0", "summary": "SAM ViT-L image encoder, tokens at layers 6/12/18/24"},
    ),
    (
        BackboneConfig(
            name="tiny_sam",
            arch="vit_b",
            pretrained="test",
            weights="random",
            input_size=128,
            native_size=128,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bilinear",
            pos_interp="bilinear",
            pos_antialias=False,
            layer_map={6: 1, 12: 2, 18: 3, 24: 4},
            arch_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 2, "window_size": 4, "global_attn_indexes": (1, 3)},
        ),
        {"license": "Apache-2.0", "summary": "SAM encoder architecture at width 64, depth 4, window 4 (tests)"},
    ),
]:
    register(_defaults, SAMBackbone, __name__, **_card)
