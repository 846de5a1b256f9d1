"""AdaptCLIP's learnable modules and pure functions (``methods/adaptclip.py`` wires them).

Written from the AdaptCLIP paper (AAAI 2026) and ``docs/methods/adaptclip.md``; the official code is
GPL-2.0 and nothing of it is copied. Torch is imported inside the functions so that listing the
plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "build_parts",
    "fuse_few_shot",
    "fuse_zero_shot",
    "harmonic_mean",
    "joint_features",
    "nearest_prompt_tokens",
    "topk_pool",
    "upsample_maps",
    "upsample_probs",
]


# ----------------------------------------------------------------------------- modules
def _bn1d(width: int) -> nn.Module:
    """BatchNorm1d that uses its running statistics for a single-row batch in training (no crash)."""
    from torch import nn
    from torch.nn import functional as F

    class _SafeBatchNorm1d(nn.BatchNorm1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and x.shape[0] == 1:
                stats = (self.running_mean, self.running_var, self.weight, self.bias)
                return F.batch_norm(x, *stats, training=False, momentum=0.0, eps=self.eps)
            return super().forward(x)

    return _SafeBatchNorm1d(width)


def _res_mlp(dim: int, reduction: int) -> nn.Module:
    """``x + W2·ReLU(BN(W1·x))`` on the last axis, no biases (official ``ResMLP``)."""
    from torch import nn

    class ResMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Linear(dim, dim // reduction, bias=False)
            self.norm = _bn1d(dim // reduction)
            self.up = nn.Linear(dim // reduction, dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.down(x.reshape(-1, x.shape[-1])))  # (M, D/r): statistics over all rows
            return x + self.up(h.relu()).reshape(x.shape)

    return ResMLP()


def _seg_head(dim: int, mid: int) -> nn.Module:
    """Conv3×3 → BN → ReLU → ConvT×2 → Conv3×3 → BN → ReLU → ConvT×2 → Conv1×1 → 2 logits (h → 4h)."""
    from torch import nn

    half = mid // 2
    return nn.Sequential(
        nn.Conv2d(dim, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(),
        nn.ConvTranspose2d(mid, mid, 2, stride=2),
        nn.Conv2d(mid, half, 3, padding=1, bias=False),
        nn.BatchNorm2d(half),
        nn.ReLU(),
        nn.ConvTranspose2d(half, half, 2, stride=2),
        nn.Conv2d(half, 2, 1),
    )


def _image_head(dim: int, mid: int) -> nn.Module:
    """Linear → BN → ReLU → Linear → BN → ReLU → Linear, no biases: pooled (B, D) → (B, 2) logits."""
    from torch import nn

    half = mid // 2
    return nn.Sequential(
        nn.Linear(dim, mid, bias=False), _bn1d(mid), nn.ReLU(),
        nn.Linear(mid, half, bias=False), _bn1d(half), nn.ReLU(),
        nn.Linear(half, 2, bias=False),
    )  # fmt: skip


def _pqa_module(dim: int, n_layers: int, mid: int, shared: bool, norm: bool, topk: int) -> nn.Module:
    from torch import nn

    class PromptQueryAdapter(nn.Module):
        """Per-layer BatchNorm2d, then the segmentation and image heads (one pair, or one per layer)."""

        def __init__(self) -> None:
            super().__init__()
            self.norms = nn.ModuleList([nn.BatchNorm2d(dim) if norm else nn.Identity() for _ in range(n_layers)])
            heads = 1 if shared else n_layers
            self.seg = nn.ModuleList([_seg_head(dim, mid) for _ in range(heads)])
            self.image = nn.ModuleList([_image_head(dim, mid) for _ in range(heads)])

        def forward(self, i: int, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.norms[i](joint)  # (B, E, h, w)
            j = 0 if shared else i
            return self.seg[j](x), self.image[j](topk_pool(x, topk))  # (B, 2, 4h, 4w), (B, 2)

    return PromptQueryAdapter()


def build_parts(cfg: Any, switches: Any, embed: int, text_width: int, n_layers: int, seed: int) -> nn.ModuleDict:
    """The learnable modules the switches ask for, initialised from ``seed``.

    Keys: ``visual`` (``global_mlp``, ``local_mlp``), ``textual`` (``normal``, ``anomalous``: (n_ctx, D)
    N(0, std)), ``pqa`` (``norms``, ``seg``, ``image``).
    """
    import torch
    from torch import nn

    parts = nn.ModuleDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if switches.visual:
            visual = nn.Module()
            visual.global_mlp, visual.local_mlp = _res_mlp(embed, cfg.reduction), _res_mlp(embed, cfg.reduction)
            parts["visual"] = visual
        if switches.textual:
            textual = nn.Module()
            for key in ("normal", "anomalous"):
                setattr(textual, key, nn.Parameter(torch.randn(cfg.n_ctx, text_width) * cfg.prompt_init_std))
            parts["textual"] = textual
        if switches.pqa:
            shared = cfg.head_sharing == "shared"
            parts["pqa"] = _pqa_module(embed, n_layers, cfg.pq_mid_dim, shared, cfg.pq_norm, cfg.pq_topk)
    return parts


# ----------------------------------------------------------------------------- pure functions
def nearest_prompt_tokens(
    query: torch.Tensor, prompt: torch.Tensor, metric: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every query token the nearest prompt token (paper Eq. 5; official ``PQAdapter``).

    Args:
        query: (B, N, E) query patch tokens.
        prompt: (B, M, E) candidate normal patch tokens per query image, or (M, E) shared by all
            (all shots pooled).
        metric: ``cosine``: nearest by cosine on L2-normalised tokens, score = min(1 − cos), the
            aligned token normalised (the code); ``euclidean``: nearest by L2 distance on the raw
            tokens, score = that distance (the paper).

    Returns:
        aligned (B, N, E), score (B, N), index (B, N).
    """
    import torch
    import torch.nn.functional as F

    if metric == "cosine":
        query, prompt = F.normalize(query, dim=-1), F.normalize(prompt, dim=-1)
    shared = prompt.ndim == 2
    aligned, scores, indices = [], [], []
    for b, q in enumerate(query):  # one image at a time: (N, M) similarities
        p = prompt if shared else prompt[b]
        if metric == "cosine":
            best, idx = (q @ p.T).max(dim=-1)  # (N,)
            score = 1.0 - best
        else:
            score, idx = torch.cdist(q[None], p[None])[0].min(dim=-1)
        aligned.append(p[idx])
        scores.append(score)
        indices.append(idx)
    return torch.stack(aligned), torch.stack(scores), torch.stack(indices)


def joint_features(query: torch.Tensor, aligned: torch.Tensor, context: bool = True) -> torch.Tensor:
    """``q + |q − p'|`` (paper Eq. 6), or the aligned residual ``|q − p'|`` alone (``context=False``)."""
    residual = (query - aligned).abs()
    return query + residual if context else residual


def topk_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """(spatial mean + mean of the k largest values)/2 per channel: (B, D, h, w) → (B, D).

    ``k = 1`` is the paper's (AvgPool + MaxPool)/2.

    Example:
        >>> import torch
        >>> topk_pool(torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]]), 2).tolist()  # (3 + (6 + 3) / 2) / 2
        [[3.75]]
    """
    flat = x.flatten(2)  # (B, D, h·w)
    top = flat.topk(min(k, flat.shape[-1]), dim=-1).values.mean(dim=-1)
    return (flat.mean(dim=-1) + top) / 2.0


def harmonic_mean(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The harmonic mean n / Σ 1/x along ``dim``; a zero gives 0, and non-finite results (0/0 …) become 0.

    Example:
        >>> import torch
        >>> harmonic_mean(torch.tensor([[0.5, 0.0, 0.0], [0.25, 1.0, 0.0]])).tolist()  # 2/(2+4), 2/inf, 0
        [0.3333333432674408, 0.0, 0.0]
    """
    import torch

    return torch.nan_to_num(x.shape[dim] / (1.0 / x).sum(dim=dim), nan=0.0, posinf=0.0, neginf=0.0)


def fuse_zero_shot(
    maps: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], sigma: float, fusion: str = "code"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot fusion (official ``test.py``): map = G_σ(mean of the maps); score = mean(scores[, max of the map]).

    Args:
        maps: per branch (B, S, S) anomalous probabilities.
        scores: per branch (B,) image probabilities.
        sigma: Gaussian σ (0: no smoothing).
        fusion: ``code`` adds the smoothed map's maximum to the image mean; ``paper`` does not.

    Returns:
        (image scores (B,), maps (B, S, S)), both on the CPU, non-finite values set to 0.
    """
    import torch

    from zsad_bench.heads import gaussian_smooth

    pixel = _finite(gaussian_smooth(_finite(torch.stack(list(maps)).mean(dim=0)), sigma))
    parts = [s.float().cpu() for s in scores]
    if fusion == "code":
        parts.append(pixel.flatten(1).amax(dim=1))
    return _finite(torch.stack(parts).mean(dim=0)), pixel


def fuse_few_shot(
    maps: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    align: torch.Tensor,
    sigma: float,
    fusion: str = "code",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Few-shot fusion (official ``test.py``).

    ``code``: map = G_σ(H(mean of the maps, align)); score = H(mean of the scores, max of the map),
    H the harmonic mean, non-finite values → 0. ``paper``: map = G_σ(mean of the maps); score = mean
    of the scores.

    Args:
        maps: per branch (B, S, S), the PQA map (mean over layers of the anomalous channel) among them.
        scores: per branch (B,) image probabilities.
        align: (B, S, S) align map (the harmonic mean of the layers' align maps).
        sigma: Gaussian σ (0: no smoothing).
        fusion: ``code`` or ``paper``.

    Returns:
        (image scores (B,), maps (B, S, S)) on the CPU.
    """
    import torch

    from zsad_bench.heads import gaussian_smooth

    mean_map = torch.stack([m.float().cpu() for m in maps]).mean(dim=0)  # (B, S, S)
    mean_score = torch.stack([s.float().cpu() for s in scores]).mean(dim=0)  # (B,)
    if fusion == "paper":
        return _finite(mean_score), _finite(gaussian_smooth(_finite(mean_map), sigma))
    pixel = _finite(gaussian_smooth(harmonic_mean(torch.stack([mean_map, align.float().cpu()])), sigma))
    return harmonic_mean(torch.stack([mean_score, pixel.flatten(1).amax(dim=1)])), pixel


def _finite(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def upsample_maps(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) → (B, C, size, size), bilinear, ``align_corners=False``."""
    import torch.nn.functional as F

    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def upsample_probs(probs: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """Per-patch probabilities (B, N, C) → (B, C, size, size)."""
    b, n, c = probs.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patch probabilities do not fill a {grid[0]}x{grid[1]} grid")
    return upsample_maps(probs.transpose(1, 2).reshape(b, c, *grid), size)
