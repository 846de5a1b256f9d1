"""KAnoCLIP's learnable modules: Bi-CMCI (with deformable self-attention), the Conv-Adapter, L_KD.

Our interpretation of Li et al., "KAnoCLIP" (arXiv 2501.03786,
§2.2–2.4), which publishes no code; the choices the paper leaves open are listed in
``docs/methods/kanoclip.md``. Imported by :mod:`zsad_bench.methods.kanoclip` only (the leading
underscore keeps the registry from treating it as a plugin); torch is imported at module level
because nothing imports this file when plugins are merely listed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BiCMCIStage",
    "ConvAdapter",
    "DeformableSelfAttention",
    "LinearStage",
    "kd_loss",
    "reference_pattern",
]


def kd_loss(knowledge: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """L_KD of Eq. 2: max(0, d(k̂, â) − d(k̂, n̂)) with Euclidean d between L2-normalised means.

    Args:
        knowledge: (Nk, E) CLIP text features of the LLM / VQA descriptions (w^k; Eq. 3 averages them).
        normal: (Nn, E) features of the learnable normal prompts (w^n).
        abnormal: (Na, E) features of the learnable abnormal prompts (w^a).

    Returns:
        A scalar; zero when the abnormal prompts' mean is at least as close to the knowledge as the normal one.

    Example:
        >>> k = torch.tensor([[1.0, 0.0]]); n = torch.tensor([[0.0, 1.0]]); a = torch.tensor([[1.0, 1.0]])
        >>> float(kd_loss(k, n, a))  # |k - a/√2| < |k - n|
        0.0
    """
    k = F.normalize(knowledge.mean(dim=0), dim=-1)  # (E,)
    n = F.normalize(normal.mean(dim=0), dim=-1)
    a = F.normalize(abnormal.mean(dim=0), dim=-1)
    return torch.relu(torch.linalg.vector_norm(k - a) - torch.linalg.vector_norm(k - n))


def reference_pattern(kernel: int) -> torch.Tensor:
    """(kernel², 2) (dx, dy) patch offsets of a kernel × kernel neighbourhood, row-major, centred.

    Example:
        >>> reference_pattern(3)[:3].tolist()
        [[-1.0, -1.0], [0.0, -1.0], [1.0, -1.0]]
    """
    r = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.flatten(), dy.flatten()], dim=-1)


class DeformableSelfAttention(nn.Module):
    """Self-attention of each patch over a few positions near it, shifted by predicted offsets.

    Per query patch and head, ``points = kernel²`` sampling positions = its own grid position +
    a fixed kernel × kernel pattern + offsets predicted from the query (``Linear(d, heads·points·2)``,
    initialised to zero, in patch units). Keys and values are sampled bilinearly at those
    positions with ``grid_sample`` (zeros outside the grid); the query attends over them with
    softmax(q·k / √d_head). Deformable attention in the sense of DAT (Xia et al., CVPR 2022) with
    per-query offsets as in Deformable DETR; with zero offsets it is ordinary attention over the
    kernel × kernel neighbourhood.

    Args:
        dim: token width d.
        heads: attention heads (d must be divisible).
        kernel: side of the reference neighbourhood.
    """

    def __init__(self, dim: int, heads: int = 4, kernel: int = 3) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention: width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.points = heads, dim // heads, kernel * kernel
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.offsets = nn.Linear(dim, heads * self.points * 2)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)
        self.register_buffer("pattern", reference_pattern(kernel), persistent=False)

    def sample_positions(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, heads, N, points, 2) sampling positions (x = column, y = row) in patch units."""
        b, n, _ = x.shape
        rows, cols = grid
        yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        ref = torch.stack([xx.flatten(), yy.flatten()], dim=-1).to(x)  # (N, 2)
        off = self.offsets(x).view(b, n, self.heads, self.points, 2).permute(0, 2, 1, 3, 4)
        return ref[None, None, :, None] + self.pattern.to(x)[None, None, None] + off

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, d) patch tokens on a rows × cols grid → (B, N, d)."""
        b, n, d = x.shape
        rows, cols = grid
        h, hd, p = self.heads, self.head_dim, self.points
        q = self.q(x).view(b, n, h, hd).transpose(1, 2)  # (B, h, N, hd)
        kv = self.kv(x).view(b, rows, cols, 2, h, hd).permute(0, 3, 4, 5, 1, 2)  # (B, 2, h, hd, rows, cols)
        kv = kv.reshape(b * 2 * h, hd, rows, cols)
        pos = self.sample_positions(x, grid)  # (B, h, N, P, 2)
        scale = pos.new_tensor([max(cols - 1, 1), max(rows - 1, 1)])
        norm = (2.0 * pos / scale - 1.0).repeat_interleave(2, dim=0).view(b * 2 * h, n, p, 2)  # (x, y) in [-1, 1]
        sampled = F.grid_sample(kv, norm, mode="bilinear", padding_mode="zeros", align_corners=True)
        sampled = sampled.view(b, 2, h, hd, n, p)  # (B, 2, h, hd, N, P)
        k, v = sampled[:, 0], sampled[:, 1]  # (B, h, hd, N, P)
        attn = torch.einsum("bhnc,bhcnp->bhnp", q, k) / hd**0.5  # (B, h, N, P)
        out = torch.einsum("bhnp,bhcnp->bhnc", attn.softmax(dim=-1), v)  # (B, h, N, hd)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class BiCMCIStage(nn.Module):
    """One stage of Bi-CMCI (Eq. 9): bidirectional cross-attention between patches and text.

    Patch tokens (B, N, E) and the two text features (2, E) are projected to ``dim``; each of
    ``depth`` blocks applies (pre-norm, residual) text-to-visual cross-attention (patches query
    the text), visual-to-text cross-attention (the text queries the patches), self-attention in
    each modality, deformable self-attention over the patch grid and an MLP on the patches. The
    stage returns per-patch logits cos(patch, text_j) / temperature, (B, N, 2).

    Args:
        in_dim: width E of the CLIP features.
        dim: internal width.
        heads: attention heads.
        depth: blocks.
        kernel: deformable attention neighbourhood side.
        mlp_ratio: MLP hidden width / dim.
    """

    def __init__(
        self, in_dim: int, dim: int = 128, heads: int = 4, depth: int = 1, kernel: int = 3, mlp_ratio: float = 2.0
    ) -> None:
        super().__init__()
        self.visual_in = nn.Linear(in_dim, dim)
        self.text_in = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList([_BiCABlock(dim, heads, kernel, mlp_ratio) for _ in range(depth)])
        self.norm_v, self.norm_t = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(
        self, patches: torch.Tensor, text: torch.Tensor, grid: tuple[int, int], temperature: float
    ) -> torch.Tensor:
        """(B, N, E) patches, (2, E) or (B, 2, E) text → (B, N, 2) logits."""
        v = self.visual_in(patches)  # (B, N, dim)
        t = self.text_in(text if text.ndim == 3 else text.expand(patches.shape[0], *text.shape))  # (B, 2, dim)
        for block in self.blocks:
            v, t = block(v, t, grid)
        v, t = F.normalize(self.norm_v(v), dim=-1), F.normalize(self.norm_t(t), dim=-1)
        return torch.einsum("bnc,bkc->bnk", v, t) / temperature


class _BiCABlock(nn.Module):
    def __init__(self, dim: int, heads: int, kernel: int, mlp_ratio: float) -> None:
        super().__init__()
        self.t2v = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.v2t = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_v = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.self_t = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.deform = DeformableSelfAttention(dim, heads, kernel)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(8)])

    def forward(self, v: torch.Tensor, t: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.norms
        vn, tn = n[0](v), n[1](t)
        v = v + self.t2v(vn, tn, tn, need_weights=False)[0]  # text → visual: patches query the text
        t = t + self.v2t(tn, vn, vn, need_weights=False)[0]  # visual → text: the text queries the patches
        vn, tn = n[2](v), n[3](t)
        v = v + self.self_v(vn, vn, vn, need_weights=False)[0]
        t = t + self.self_t(tn, tn, tn, need_weights=False)[0]
        v = v + self.deform(n[4](v), grid)
        v = v + self.mlp(n[5](v))
        return v, t


class LinearStage(nn.Module):
    """The Bi-CMCI ablation: one ``Linear(E, E)`` on the patches, cos with the text (APRIL-GAN's head)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, in_dim)

    def forward(
        self, patches: torch.Tensor, text: torch.Tensor, grid: tuple[int, int], temperature: float
    ) -> torch.Tensor:
        """(B, N, E) patches, (2, E) text → (B, N, 2) logits."""
        v = F.normalize(self.proj(patches), dim=-1)
        t = F.normalize(text, dim=-1)
        return (v @ t.T if t.ndim == 2 else torch.einsum("bnc,bkc->bnk", v, t)) / temperature


class ConvAdapter(nn.Module):
    """Eq. 11: Î = ReLU(LN(I) W_down) W_up as a depthwise-separable convolution bottleneck.

    The global feature (B, E) is read as E channels of length 1: LayerNorm, a depthwise
    ``Conv1d(E, E, 1, groups=E)`` (a per-channel scale and shift: the spatial extent of a single
    vector is one), the pointwise ``Conv1d(E, bottleneck, 1)`` (W_down), ReLU, the pointwise
    ``Conv1d(bottleneck, E, 1)`` (W_up). ``residual`` adds the input back (not in Eq. 11).
    """

    def __init__(self, dim: int, bottleneck: int, residual: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.depthwise = nn.Conv1d(dim, dim, 1, groups=dim)
        self.down = nn.Conv1d(dim, bottleneck, 1)
        self.up = nn.Conv1d(bottleneck, dim, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E) → (B, E)."""
        h = self.depthwise(self.norm(x)[:, :, None])  # (B, E, 1)
        h = self.up(torch.relu(self.down(h)))[:, :, 0]  # (B, E)
        return x + h if self.residual else h
