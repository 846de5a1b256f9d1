"""DINOv2 image encoders through timm (timm ``vision_transformer.py``).

Registered: ``dinov2_vits14`` (``vit_small_patch14_dinov2``, LVD-142M weights, trained at
518, multi-layer patch tokens at 3/6/9/12) and ``tiny_dinov2`` (the same architecture at
width 64, depth 4, for tests). The network is built at the checkpoint's native size and
its positional embedding resampled to ``input_size`` with timm's ``resample_abs_pos_embed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, cast

import torch
from torch import nn

from zsad_bench.backbones.base import Backbone, Geometry, ImageTokens, escape, register
from zsad_bench.backbones.config import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig
from zsad_bench.backbones.prompts import PromptHook

__all__ = ["DINOv2Backbone"]


class _PatchEmbed(Protocol):
    patch_size: tuple[int, int]


class _ViT(Protocol):
    """The parts of timm's ``VisionTransformer`` used here (``create_model`` is typed as a plain Module)."""

    patch_embed: _PatchEmbed
    blocks: nn.Sequential
    embed_dim: int
    num_prefix_tokens: int
    no_embed_class: bool

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int], *, return_prefix_tokens: bool, norm: bool, output_fmt: str
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """(final tokens (B, P+N, D), per index (patches (B, N, D), prefix (B, P, D))) as called here."""
        ...


class DINOv2Backbone(Backbone):
    """A timm ViT (DINOv2 family): class token (+ registers) then patch tokens."""

    family = "dinov2"
    library = "timm"

    def _native(self) -> int:
        return self.cfg.native_size or 518

    def _timm(self, img_size: int) -> nn.Module:
        import timm

        kwargs = {**self.cfg.arch_kwargs, "img_size": img_size, "num_classes": 0}
        return timm.create_model(self.cfg.arch, pretrained=False, **kwargs)

    def _make_geometry(self) -> Geometry:
        with torch.device("meta"):
            m = cast(_ViT, self._timm(self._native()))
        return Geometry(m.patch_embed.patch_size[0], len(m.blocks), m.embed_dim, m.num_prefix_tokens, m.embed_dim)

    def _create(self) -> nn.Module:
        return self._timm(self._native())

    def _adapt_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if not k.startswith("head.")}  # classifier heads are not used

    def _resize(self, model: nn.Module) -> nn.Module:
        from timm.layers import resample_abs_pos_embed

        if self.cfg.input_size == self._native():
            return model
        vit, state = cast(_ViT, model), model.state_dict()
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=list(self.grid_size),
            num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
            interpolation=self.cfg.pos_interp,
            antialias=self.cfg.pos_antialias,
        )
        resized = self._timm(self.cfg.input_size)
        resized.load_state_dict(state)
        return resized

    def image_tokens(
        self,
        images: torch.Tensor,
        layers: Iterable[int],
        *,
        norm: bool = False,
        proj: bool = False,
        prompts: PromptHook | None = None,
    ) -> ImageTokens:
        """Tokens (class, registers, patches) of ``layers``; ``embed`` = final ``norm(CLS)``.

        ``norm`` applies the final LayerNorm to the returned layers (timm ``norm=True``).
        """
        if proj or prompts is not None:
            raise ValueError(f"backbone {self.name}: DINOv2 has no projection and takes no prompts")
        images = self.check_images(images)
        wanted = self.resolve_layers(layers)
        indices = sorted(set(wanted.values()))
        with self.running():
            self.forward_calls += 1
            final, inter = cast(_ViT, self.model).forward_intermediates(
                images, indices=[i - 1 for i in indices] or [0], return_prefix_tokens=True, norm=norm, output_fmt="NLC"
            )
            pairs = zip(indices, inter, strict=True)
            by_block = {i: torch.cat([prefix, spatial], dim=1) for i, (spatial, prefix) in pairs}
            tokens = {req: escape(by_block[act]) for req, act in wanted.items()}
            embed = escape(final[:, 0])
        return ImageTokens(tokens, embed, self.grid_size, self.num_prefix_tokens)


_TINY = {
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 2,
}
for _defaults, _card in [
    (
        BackboneConfig(
            name="dinov2_vits14",
            arch="vit_small_patch14_dinov2",
            pretrained="lvd142m",
            input_size=518,
            native_size=518,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        {"license": "Apache-2.0", "summary": "DINOv2 ViT-S/14 (timm), patch tokens at layers 3/6/9/12"},
    ),
    (
        BackboneConfig(
            name="tiny_dinov2",
            arch="vit_small_patch14_dinov2",
            pretrained="test",
            weights="random",
            input_size=112,
            native_size=56,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            layer_map={3: 1, 6: 2, 9: 3, 12: 4},
            arch_kwargs=_TINY,
        ),
        {"license": "Apache-2.0", "summary": "DINOv2 architecture at width 64, depth 4 (tests)"},
    ),
]:
    register(_defaults, DINOv2Backbone, __name__, **_card)
