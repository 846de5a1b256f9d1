"""CLIP image and text encoders through open_clip (batch-first, open_clip ≥ 2.26).

Registered: ``clip_vit_l14_336`` (run at 518 with the positional embedding resized),
``clip_vit_b16_plus_240``, ``clip_vit_b16``, ``clip`` (any open_clip name and tag by
config) and ``tiny_clip`` (a 4-block, width-64 configuration of the same architecture,
for tests and the CPU demo). The blocks are run here one by one, so the layouts, the
prompt hooks, the V-V path and the windowed encoding do not depend on open_clip's
``forward`` (see open_clip ``transformer.py`` and ``docs/backbones.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from zsad_bench.backbones.base import Backbone, Geometry, ImageTokens, escape, register
from zsad_bench.backbones.clip_ops import dual_attention, resize_grid_embedding
from zsad_bench.backbones.clip_text import CLIPTextMixin
from zsad_bench.backbones.clip_types import CLIPModel, VisionTower
from zsad_bench.backbones.config import BackboneConfig
from zsad_bench.backbones.prompts import PromptHook

__all__ = ["CLIPBackbone", "VVTokens", "ensure_open_clip_configs"]

logger = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).parent / "configs"


def ensure_open_clip_configs() -> None:
    """Register the package's open_clip configs (``tiny-clip``) with open_clip, once."""
    import open_clip

    if "tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class VVTokens:
    """Outputs of the V-V dual path (AnomalyCLIP's ``AnomalyCLIP.py``; ``docs/backbones.md``).

    Attributes:
        vv: requested layer → (B, 1+N, D or E) V-V stream tokens (a new tensor per layer).
        ori: requested layer → (B, 1+N, D or E) original-stream tokens (= vanilla CLIP).
        cls: (B, D) original-stream CLS after the last block, before ``ln_post``.
        embed: (B, E) ``ln_post(cls) @ proj``, the standard CLIP image embedding.
        grid: the patch grid.
    """

    vv: dict[int, torch.Tensor]
    ori: dict[int, torch.Tensor]
    cls: torch.Tensor
    embed: torch.Tensor
    grid: tuple[int, int]
    num_prefix_tokens: int = 1


class CLIPBackbone(CLIPTextMixin, Backbone):
    """An open_clip CLIP model (vision transformer image tower, causal text tower)."""

    family = "clip"
    library = "open_clip_torch"

    # ------------------------------------------------------------------ building
    def _arch_config(self) -> dict[str, Any]:
        import open_clip

        ensure_open_clip_configs()
        cfg = open_clip.get_model_config(self.cfg.arch)
        if cfg is None:
            raise ValueError(f"backbone {self.name}: {self.cfg.arch!r} is not an open_clip model name")
        return cfg

    def _make_geometry(self) -> Geometry:
        cfg = self._arch_config()
        vision = cfg["vision_cfg"]
        if "timm_model_name" in vision or not isinstance(vision.get("layers", 12), int):
            raise ValueError(f"backbone {self.name}: {self.cfg.arch} is not a plain ViT image tower")
        return Geometry(vision["patch_size"], vision["layers"], vision["width"], 1, cfg["embed_dim"])

    def _create(self) -> nn.Module:
        import open_clip

        ensure_open_clip_configs()
        if self.cfg.arch_kwargs:
            raise ValueError(f"backbone {self.name}: arch_kwargs are not supported for CLIP; use an open_clip config")
        root, noise = logging.getLogger(), _OpenClipNoise()
        root.addFilter(noise)  # open_clip warns "initialized randomly" before we load the checkpoint
        try:
            model = open_clip.create_model(
                self.cfg.arch,
                pretrained=None,
                force_image_size=self.cfg.native_size or None,
                device="cpu",
                quick_gelu=self.cfg.activation == "quick_gelu",
            )
        finally:
            root.removeFilter(noise)
        _check_supported(model, self.name)
        return model

    def _adapt_state_dict(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI TorchScript extras
            state.pop(key, None)
        if "logit_scale" in state:
            state["logit_scale"] = state["logit_scale"].reshape(cast(CLIPModel, model).logit_scale.shape)
        return state

    def _resize(self, model: nn.Module) -> nn.Module:
        v = cast(CLIPModel, model).visual
        new, old = self.grid_size, tuple(v.grid_size)
        if old == new:
            return model
        pos = v.positional_embedding.data  # (1 + G·G, D)
        grid = resize_grid_embedding(pos[1:], new, self.cfg.pos_interp, self.cfg.pos_antialias)
        v.positional_embedding = nn.Parameter(torch.cat([pos[:1], grid]), requires_grad=False)
        v.grid_size = new
        v.image_size = (self.cfg.input_size, self.cfg.input_size)
        logger.info("backbone %s: positional embedding %s → %s (%s)", self.name, old, new, self.cfg.pos_interp)
        return model

    # ------------------------------------------------------------------ pieces
    @property
    def visual(self) -> VisionTower:
        """The open_clip image tower (``model.visual``), typed."""
        return self.clip_model.visual

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) → (B, 1+N, D): patch embedding, CLS prepended, positional embedding added.

        This is the input of ``patch_dropout``/``ln_pre``, where WinCLIP masks windows.
        """
        v = self.visual
        x = v.conv1(images)  # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)

    def pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_pre(patch_dropout(x))`` (patch dropout is the identity in eval mode)."""
        v = self.visual
        return v.ln_pre(v.patch_dropout(x))

    def run_blocks(
        self,
        x: torch.Tensor,
        take: Iterable[int] = (),
        prompts: PromptHook | None = None,
        keep: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the image blocks on (B, L, D) tokens.

        Args:
            x: tokens after :meth:`pre_blocks`.
            take: 1-based blocks whose outputs to return.
            prompts: hook called before each block.
            keep: number of leading tokens kept in the returned layer outputs (drops appended prompts).

        Returns:
            (output of the last block (B, L', D), block → (B, keep, D)).
        """
        take = set(take)
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.visual.transformer.resblocks, start=1):
            if prompts is not None:
                x = prompts(i, x)
            x = block(x)
            if i in take:
                out[i] = x[:, :keep] if keep is not None else x
        return x, out

    def project(self, tokens: torch.Tensor, norm: bool = True, proj: bool = True) -> torch.Tensor:
        """Apply ``ln_post`` and/or ``@ proj`` to (…, D) image tokens."""
        v = self.visual
        if norm:
            tokens = v.ln_post(tokens)
        if proj:
            tokens = tokens @ v.proj.to(tokens.dtype)
        return tokens

    # ------------------------------------------------------------------ public encoders
    def image_tokens(
        self,
        images: torch.Tensor,
        layers: Iterable[int],
        *,
        norm: bool = False,
        proj: bool = False,
        prompts: PromptHook | None = None,
    ) -> ImageTokens:
        """See :meth:`Backbone.image_tokens`; ``embed`` = ``ln_post(CLS) @ proj`` of the last block.

        With ``prompts``, gradients flow (the backbone's own weights stay frozen) and the CLS
        is computed with the prompt tokens present, as in AdaCLIP.
        """
        images = self.check_images(images)
        wanted = self.resolve_layers(layers)
        with self.running(grad=prompts is not None):
            self.forward_calls += 1
            x = self.pre_blocks(self.embed_patches(images))
            x, taken = self.run_blocks(x, wanted.values(), prompts, keep=x.shape[1])
            embed = self.project(x[:, 0])
            tokens = {req: self.project(taken[act], norm, proj) for req, act in wanted.items()}
        return ImageTokens({k: escape(t) for k, t in tokens.items()}, escape(embed), self.grid_size, 1)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, E) standard CLIP image embeddings (equal to open_clip's ``encode_image``)."""
        embed = self.image_tokens(images, []).embed
        assert embed is not None  # CLIP's image_tokens always has the embedding
        return nn.functional.normalize(embed, dim=-1) if normalize else embed

    def vv_tokens(
        self,
        images: torch.Tensor,
        layers: Iterable[int],
        first_block: int,
        *,
        norm: bool = False,
        proj: bool = False,
    ) -> VVTokens:
        """The V-V dual path from ``first_block`` on (``docs/backbones.md``).

        Blocks before ``first_block`` run unchanged. From ``first_block`` on each block computes
        q, k, v once from ``ln_1`` of the original stream; the original stream gets the usual
        attention and MLP, the V-V stream (started as the block input) accumulates the V-V
        attention outputs, without MLP. AnomalyCLIP/AdaptCLIP: ``first_block=6`` on ViT-L/14
        (``DPAM_layer=20``); AnoCLIP: ``first_block=1`` on ViT-B-16+.

        Args:
            images: (B, 3, S, S).
            layers: layers to return, each ≥ ``first_block``.
            first_block: the first dual-path block (a layer number, through ``layer_map``).
            norm: apply ``ln_post`` to the returned tokens of both streams.
            proj: apply ``@ proj`` to them.
        """
        images = self.check_images(images)
        first = next(iter(self.resolve_layers([first_block]).values()))
        wanted = self.resolve_layers(layers)
        early = [req for req, act in wanted.items() if act < first]
        if early:
            raise ValueError(f"V-V layers {early} come before the first V-V block {first_block}")
        with self.running():
            self.forward_calls += 1
            ori, vv_all, ori_all = self._dual_path(self.pre_blocks(self.embed_patches(images)), first, wanted.values())
            vv = {req: self.project(vv_all[act], norm, proj) for req, act in wanted.items()}
            ori_out = {req: self.project(ori_all[act], norm, proj) for req, act in wanted.items()}
            cls, embed = ori[:, 0], self.project(ori[:, 0])
        return VVTokens(
            {k: escape(t) for k, t in vv.items()},
            {k: escape(t) for k, t in ori_out.items()},
            escape(cls),
            escape(embed),
            self.grid_size,
        )

    def _dual_path(
        self, x: torch.Tensor, first: int, take: Iterable[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        take = set(take)
        vv: torch.Tensor | None = None
        vv_out: dict[int, torch.Tensor] = {}
        ori_out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.visual.transformer.resblocks, start=1):
            if i < first:
                x = block(x)
                continue
            a_ori, a_vv = dual_attention(block.attn, block.ln_1(x))  # (B, L, D) each
            vv = (x if vv is None else vv) + block.ls_1(a_vv)  # out of place: no aliasing across layers
            x = x + block.ls_1(a_ori)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if i in take:
                vv_out[i], ori_out[i] = vv, x
        return x, vv_out, ori_out

    def window_embeddings(self, images: torch.Tensor, windows: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
        """CLIP embeddings of masked windows, all windows of the batch in few forwards (WinCLIP).

        For each window the CLS token and the window's patch tokens are gathered from
        :meth:`embed_patches` (positional embeddings included), and this short sequence runs
        through ``ln_pre``, all blocks, ``ln_post`` and ``proj`` (anomalib's WinCLIP ``torch_model.py``).
        Sequences of all images and windows are batched together, ``chunk_size`` at a time.

        Args:
            images: (B, 3, S, S).
            windows: (W, k) patch indices (0-based, see :func:`~zsad_bench.backbones.clip_ops.make_windows`).
            chunk_size: sequences per forward.

        Returns:
            (B, W, E) window embeddings.
        """
        images = self.check_images(images)
        windows = torch.as_tensor(windows, dtype=torch.long, device=self.device)
        n_patches = self.grid_size[0] * self.grid_size[1]
        if windows.ndim != 2 or windows.numel() == 0 or int(windows.max()) >= n_patches or int(windows.min()) < 0:
            raise ValueError(f"windows must be a (W, k) tensor of patch indices in 0..{n_patches - 1}")
        with self.running():
            self.forward_calls += 1
            x0 = self.embed_patches(images)  # (B, 1+N, D)
            b, (w, k), d = x0.shape[0], windows.shape, x0.shape[-1]
            patches = x0[:, 1:][:, windows]  # (B, W, k, D)
            cls = x0[:, :1, None].expand(b, w, 1, d)  # (B, W, 1, D)
            seqs = torch.cat([cls, patches], dim=2).reshape(b * w, k + 1, d)  # (B·W, 1+k, D)
            out = [self.project(self.run_blocks(self.pre_blocks(c))[0][:, 0]) for c in seqs.split(chunk_size)]
            emb = torch.cat(out).reshape(b, w, -1)  # (B, W, E)
        return escape(emb)


class _OpenClipNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def _check_supported(model: nn.Module, name: str) -> None:
    v = getattr(model, "visual", None)
    ok = (
        v is not None
        and hasattr(v, "conv1")
        and getattr(v, "attn_pool", None) is None
        and getattr(v, "pool_type", "tok") == "tok"
        and not getattr(v, "final_ln_after_pool", False)
        and getattr(v.transformer, "batch_first", True)
        and hasattr(model, "token_embedding")
    )
    if not ok:
        raise ValueError(
            f"backbone {name}: only plain CLIP ViTs (class-token pooling, batch-first, open_clip >= 2.26) are supported"
        )


def _cfg(name: str, arch: str, tag: str, size: int, **kw: Any) -> BackboneConfig:
    return BackboneConfig(name=name, arch=arch, pretrained=tag, input_size=size, **kw)


_L14 = "OpenAI CLIP ViT-L/14@336 weights; run at 518 (37x37 grid) by APRIL-GAN, AdaCLIP, AnomalyCLIP, AdaptCLIP"
_B16P = "LAION-400M ViT-B-16-plus-240 (WinCLIP e31, AnoCLIP e32); GELU"
_TINY = {6: 1, 12: 2, 18: 3, 24: 4}
for _defaults, _card in [
    (_cfg("clip_vit_l14_336", "ViT-L-14-336", "openai", 518), {"license": "MIT", "summary": _L14}),
    (_cfg("clip_vit_b16_plus_240", "ViT-B-16-plus-240", "laion400m_e31", 240), {"license": "MIT", "summary": _B16P}),
    (
        _cfg("clip_vit_b16", "ViT-B-16", "openai", 224, activation="quick_gelu"),
        {"license": "MIT", "summary": "OpenAI CLIP ViT-B/16 (QuickGELU)"},
    ),
    (
        _cfg("clip", "ViT-B-32", "openai", 224, activation="quick_gelu"),
        {"license": "see the weights", "summary": "any open_clip architecture and tag, set by config"},
    ),
    (
        _cfg("tiny_clip", "tiny-clip", "test", 224, weights="random", layer_map=_TINY),
        {"license": "MIT", "summary": "4 blocks, width 64: the CLIP architecture for tests and the CPU demo"},
    ),
]:
    register(_defaults, CLIPBackbone, __name__, **_card)
