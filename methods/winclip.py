"""WinCLIP and few-shot WinCLIP+: window-level CLIP scoring with a compositional prompt ensemble.

Paper: Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023,
arXiv 2303.14814. Official code: none. Primary reference: anomalib (Apache-2.0) @ b7233686,
``src/anomalib/models/image/winclip/{torch_model,utils,prompting}.py``; second reference:
caoyunkang/WinClip (MIT) @ 0818c9d3, ``WinCLIP/model.py``. Spec: ``reference-methods.md`` §2.
Independent implementation; no reference code is copied.

What it does (anomalib, the default ``variant``):

- text: the compositional prompt ensemble (7 normal × 21 templates, 4 anomalous × 21), raw
  sentence embeddings averaged per polarity;
- image: the full-image CLIP embedding, and one CLIP embedding per window — the CLS token plus
  the window's patch tokens, taken after the patch and positional embedding, run through
  ``ln_pre``, all blocks, ``ln_post`` and ``proj`` — for every 2×2 and 3×3 patch window
  (stride 1, fully inside the grid). All windows of a batch are encoded together
  (:meth:`CLIPBackbone.window_embeddings`), and go through the feature cache;
- a score is the anomalous probability of softmax(cos/τ), τ = 0.07; each patch takes the
  harmonic mean of the windows covering it, per scale; the map is the harmonic mean of
  {image score, scale maps}; image score = the full image's score; bilinear upsampling;
- WinCLIP+ (``shots`` > 0): memories of the references' windows per scale and of their
  last-layer patch tokens (``ln_post``, not projected); visual association = min (1 − cos)/2;
  few-shot map = mean of {patch map, harmonic window maps}; final map = (zero-shot + few-shot)/2,
  image score = (zero-shot image score + max of the few-shot map)/2.

Differences between the re-implementations, each a switch (``variant=caoyunkang`` sets all five):

- ``templates``: anomalib's 21 templates ending with "." (one duplicated) vs caoyunkang's 22
  without "." (``winclip_templates_caoyunkang``);
- ``logit_scale``: 1/0.07 (anomalib) vs 100 (caoyunkang);
- ``aggregation``: anomalib aggregates the *anomalous* probability harmonically and includes the
  image-level score as a scale (``anomalous_harmonic``); caoyunkang averages 1/p(normal) over the
  covering windows and over scales, then takes 1 − 1/mean, i.e. 1 − harmonic mean of p(normal),
  without the image-level score (``normal_harmonic``);
- ``image_score``: the full image's probability (``global``, anomalib) vs the maximum of the
  upsampled map (``max_map``, caoyunkang's ``metric_cal``);
- ``few_shot``: anomalib (above) vs caoyunkang (window memories only, arithmetic mean over
  covering windows and scales, fused as 1/(1/zero-shot + 1/few-shot)).

``late_gallery`` (false) reproduces a caoyunkang quirk: its 1-shot loop moves to a scale's reference
gallery one window late, so the first window of every scale after the first is scored against the
previous scale's gallery. Its zero-shot maps are halved (the 1-shot fusion applied to the textual map
twice, 1/(1/t + 1/t)): a uniform factor no metric sees, not reproduced. Not reproduced either: its fp16,
and its cv2 resize of maps to 400×400 before the metrics (``eval.resolution=400`` scores at that size).
Patches that no window covers (a stride > 1) get 0, as anomalib's ``nan_to_num``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zsad_bench.prompts import WINCLIP_ANOMALOUS_STATES, WINCLIP_NORMAL_STATES, prompt_list, two_class_prompts
from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    import torch

    from zsad_bench.context import Context

__all__ = ["WinCLIP", "WinCLIPConfig", "harmonic_over_windows", "window_cover", "window_embeddings_loop"]

logger = logging.getLogger(__name__)

# variant → (templates, logit_scale, aggregation, image_score, few_shot)
_VARIANTS: dict[str, dict[str, Any]] = {
    "anomalib": {  # torch_model.py, utils.py (TEMPERATURE = 0.07), prompting.py
        "templates": "winclip_templates_anomalib",
        "logit_scale": 1 / 0.07,
        "aggregation": "anomalous_harmonic",
        "image_score": "global",
        "few_shot": "anomalib",
    },
    "caoyunkang": {  # WinCLIP/model.py (100 * features @ text.T), utils/metrics.py (max of the map)
        "templates": "winclip_templates_caoyunkang",
        "logit_scale": 100.0,
        "aggregation": "normal_harmonic",
        "image_score": "max_map",
        "few_shot": "caoyunkang",
    },
}
_CHOICES = {
    "aggregation": ("anomalous_harmonic", "normal_harmonic"),
    "image_score": ("global", "max_map"),
    "few_shot": ("anomalib", "caoyunkang"),
}


@dataclass
class WinCLIPConfig:
    """WinCLIP knobs; None means "as ``variant`` does" (anomalib by default)."""

    name: str = "winclip"
    variant: str = "anomalib"  # anomalib | caoyunkang: the preset of the five knobs below
    templates: str | None = None  # a zsad_bench.prompts list name
    logit_scale: float | None = None  # anomalib 1/0.07 (utils.py TEMPERATURE); caoyunkang 100
    aggregation: str | None = None  # anomalous_harmonic | normal_harmonic
    image_score: str | None = None  # global | max_map
    few_shot: str | None = None  # anomalib | caoyunkang
    late_gallery: bool = False  # few_shot=caoyunkang: a scale's first window against the previous gallery (its quirk)
    scales: list[int] = field(default_factory=lambda: [2, 3])  # window sides in patches (anomalib scales=(2, 3))
    stride: int = 1  # window step in patches (anomalib make_masks stride 1)
    class_name: str | None = None  # prompt words for every category (None: the dataset's; anomalib's default "object")
    vectorised: bool = True  # False: one forward per window (for benchmarks and tests)
    chunk_size: int = 4096  # window sequences per forward
    cache: bool = True  # route image features through ctx.features (the feature cache)


@dataclass(frozen=True)
class _Settings:
    templates: tuple[str, ...]
    logit_scale: float
    aggregation: str
    image_score: str
    few_shot: str


def _settings(cfg: WinCLIPConfig) -> _Settings:
    """Resolve the variant preset and the explicit overrides, validating choices."""
    if cfg.variant not in _VARIANTS:
        raise ValueError(f"winclip: variant={cfg.variant!r} is not one of {sorted(_VARIANTS)}")
    preset = _VARIANTS[cfg.variant]
    chosen = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else v) for k, v in preset.items()}
    for key, allowed in _CHOICES.items():
        if chosen[key] not in allowed:
            raise ValueError(f"winclip: {key}={chosen[key]!r} is not one of {allowed} (conf/method/winclip.yaml)")
    if not cfg.scales or any(s < 1 for s in cfg.scales) or cfg.stride < 1:
        raise ValueError(f"winclip: scales {cfg.scales} and stride {cfg.stride} must be positive")
    return _Settings(
        templates=prompt_list(chosen["templates"]),
        logit_scale=float(chosen["logit_scale"]),
        aggregation=chosen["aggregation"],
        image_score=chosen["image_score"],
        few_shot=chosen["few_shot"],
    )


@register_method(
    "winclip",
    title="WinCLIP / WinCLIP+",
    paper="CVPR 2023",
    arxiv="2303.14814",
    code="",
    commit="anomalib b7233686 (re-implementation followed)",
    license="Apache-2.0 (anomalib, reference only)",
    shots=(0, 1, 2, 4),
    backbone="clip_vit_b16_plus_240",
    input_size=240,
    summary="window-level CLIP zero-shot scores, harmonic aggregation; WinCLIP+ adds window/patch memories",
)
class WinCLIP(Method):
    """WinCLIP (zero-shot) and WinCLIP+ (after :meth:`set_references`)."""

    Config = WinCLIPConfig

    def __init__(self, cfg: WinCLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else WinCLIPConfig())
        self.settings = _settings(self.cfg)
        self._text: dict[str, torch.Tensor] = {}  # class words → (2, E) [normal, anomalous]
        self._memory: dict[str, dict[str, Any]] = {}  # category → reference memories
        self._windows: list[torch.Tensor] | None = None
        self._covers: list[torch.Tensor] | None = None

    # ------------------------------------------------------------------ wiring
    def setup(self, ctx: Context) -> None:
        """Bind the context; the backbone must be a CLIP ViT."""
        super().setup(ctx)
        backbone = ctx.backbone
        if not hasattr(backbone, "window_embeddings"):
            raise ValueError(f"winclip needs a CLIP backbone, got {backbone.name} (backbone=clip_vit_b16_plus_240)")
        self._text.clear()
        self._memory.clear()
        self._windows = None
        self._covers = None

    @property
    def backbone(self) -> Any:
        """The context's backbone."""
        if self.ctx is None:
            raise RuntimeError("winclip: call setup(ctx) before predict")
        return self.ctx.backbone

    @property
    def windows(self) -> list[torch.Tensor]:
        """Per scale, the (W, s²) patch indices of every window (row-major)."""
        if self._windows is None:
            from zsad_bench.backbones.clip_ops import make_windows

            grid = self.backbone.grid_size
            self._windows = [make_windows(grid, s, self.cfg.stride) for s in self.cfg.scales]
        return self._windows

    @property
    def covers(self) -> list[torch.Tensor]:
        """Per scale, the (N, C) windows covering each patch (see :func:`window_cover`)."""
        if self._covers is None:
            n = self.backbone.grid_size[0] * self.backbone.grid_size[1]
            self._covers = [window_cover(w, n) for w in self.windows]
        return self._covers

    def set_references(self, normals: Batch) -> None:
        """WinCLIP+: store the references' window and patch memories for their category."""
        feats = self.features(normals, patches=self.settings.few_shot == "anomalib")
        memory = {"windows": [w.reshape(-1, w.shape[-1]) for w in feats["windows"]]}  # per scale (k·W, E)
        if "patches" in feats:
            memory["patches"] = feats["patches"].reshape(-1, feats["patches"].shape[-1])  # (k·N, D)
        for category in sorted(set(normals.categories)):
            self._memory[category] = memory
        logger.info("winclip: %d reference images for %s", len(normals), sorted(set(normals.categories)))

    def predict(self, batch: Batch) -> Prediction:
        """Score a batch (WinCLIP+ for the categories that have references)."""
        import torch

        memories = [self._memory.get(c) for c in batch.categories]
        few_shot = any(m is not None for m in memories)
        feats = self.features(batch, patches=few_shot and self.settings.few_shot == "anomalib")
        text = torch.stack([self.text_embeddings(c) for c in batch.class_names]).to(feats["embed"].device)  # (B, 2, E)
        grid = self.backbone.grid_size
        image_scores, maps = zero_shot_scores(feats, text, self.covers, grid, self.settings)
        if few_shot:
            image_scores, maps = self._add_few_shot(feats, memories, image_scores, maps, grid)
        size = tuple(batch.images.shape[-2:])
        upsampled = torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
        upsampled = upsampled[:, 0]  # (B, S, S)
        if self.settings.image_score == "max_map":
            image_scores = upsampled.flatten(1).amax(dim=1)
        return Prediction(image_scores=image_scores.float().cpu(), anomaly_maps=upsampled.float().cpu())

    # ------------------------------------------------------------------ pieces
    def text_embeddings(self, class_name: str) -> torch.Tensor:
        """(2, E) normalised [normal, anomalous] ensemble embeddings of ``class_name`` (memoised)."""
        words = self.cfg.class_name or class_name
        if words not in self._text:
            normal, anomalous = two_class_prompts(
                words, WINCLIP_NORMAL_STATES, WINCLIP_ANOMALOUS_STATES, self.settings.templates
            )
            # anomalib averages raw sentence embeddings (no per-sentence normalisation)
            self._text[words] = self.backbone.encode_prompt_ensemble([normal, anomalous], normalize_each=False)
        return self._text[words]

    def features(self, batch: Batch, patches: bool = False) -> dict[str, Any]:
        """Frozen image features through the feature cache.

        Returns:
            ``embed`` (B, E) full-image embeddings, ``windows``: per scale (B, W, E), and with
            ``patches`` the (B, N, D) last-layer patch tokens after ``ln_post`` (WinCLIP+ memory).
        """
        from zsad_bench.features import FeatureSpec, get_features

        ctx, bb = self.ctx, self.backbone
        scales = tuple(int(s) for s in self.cfg.scales)
        spec = FeatureSpec.create(bb, "windows", scales=scales, stride=int(self.cfg.stride))
        loop = None if self.cfg.vectorised else _loop_variant(self.windows)
        feats = get_features(ctx, batch, spec, compute=loop, use_cache=self.cfg.cache)
        out: dict[str, Any] = {"embed": feats["embed"], "windows": [feats[f"windows.{s}"] for s in scales]}
        if patches:
            tspec = FeatureSpec.create(bb, "tokens", layers=(-1,), norm=True, proj=False)
            tokens = get_features(ctx, batch, tspec, use_cache=self.cfg.cache)["tokens.-1"]  # (B, 1+N, D)
            out["patches"] = tokens[:, bb.num_prefix_tokens :]
        return out

    def _add_few_shot(
        self,
        feats: dict[str, Any],
        memories: list[dict[str, Any] | None],
        image_scores: torch.Tensor,
        maps: torch.Tensor,
        grid: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse few-shot maps into the images that have references (the others stay zero-shot)."""
        import torch

        image_scores, maps = image_scores.clone(), maps.clone()
        groups: dict[int, list[int]] = {}
        for i, memory in enumerate(memories):
            if memory is not None:
                groups.setdefault(id(memory), []).append(i)
        for rows in groups.values():
            idx = torch.tensor(rows, device=maps.device)
            part = {k: (v[idx] if k != "windows" else [w[idx] for w in v]) for k, v in feats.items()}
            fs = few_shot_map(
                part, memories[rows[0]], self.covers, grid, self.settings.few_shot, self.cfg.late_gallery
            )  # (b, g, g)
            if self.settings.few_shot == "anomalib":  # torch_model.py forward
                maps[idx] = (maps[idx] + fs) / 2
                image_scores[idx] = (image_scores[idx] + fs.flatten(1).amax(dim=1)) / 2
            else:  # caoyunkang model.py forward: 1 / (1/textual + 1/visual)
                maps[idx] = torch.nan_to_num(1.0 / (1.0 / maps[idx] + 1.0 / fs), nan=0.0, posinf=0.0)
        return image_scores, maps


def _loop_variant(windows: list[torch.Tensor]) -> Any:
    """A feature function equal to the ``windows`` variant, with one forward per window."""

    def compute(backbone: Any, images: torch.Tensor, spec: Any) -> dict[str, torch.Tensor]:
        scales = spec.option("scales")
        feats = {
            f"windows.{s}": window_embeddings_loop(backbone, images, w) for s, w in zip(scales, windows, strict=True)
        }
        feats["embed"] = backbone.encode_image(images)
        return feats

    return compute


# ----------------------------------------------------------------------------- features
def window_embeddings_loop(backbone: Any, images: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(B, W, E) window embeddings with one forward per window through open_clip's own transformer.

    The slow path of the benchmark and the reference of the tests: written independently of
    :meth:`CLIPBackbone.window_embeddings` (open_clip ``visual.transformer`` is batch-first in ≥ 2.26).
    """
    import torch

    images = backbone.check_images(images)
    v = backbone.model.visual
    out = []
    with torch.inference_mode():
        x0 = backbone.embed_patches(images)  # (B, 1+N, D)
        for idx in windows.tolist():
            seq = torch.cat([x0[:, :1], x0[:, [1 + i for i in idx]]], dim=1)  # (B, 1+k, D)
            seq = v.transformer(v.ln_pre(v.patch_dropout(seq)))
            out.append(v.ln_post(seq[:, 0]) @ v.proj)  # (B, E)
    return torch.stack(out, dim=1).float().clone()  # (B, W, E)


# ----------------------------------------------------------------------------- scoring (pure)
def class_probabilities(embeddings: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """softmax(logit_scale · cos(f, t)) over [normal, anomalous].

    Args:
        embeddings: (B, ..., E) image or window embeddings.
        text: (B, 2, E) per-image [normal, anomalous] text embeddings.
        logit_scale: 1/τ.

    Returns:
        (B, ..., 2) probabilities.
    """
    import torch.nn.functional as F

    f = F.normalize(embeddings.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    shape = f.shape
    cos = f.reshape(shape[0], -1, shape[-1]) @ t.transpose(1, 2)  # (B, M, 2)
    return (logit_scale * cos).softmax(dim=-1).reshape(*shape[:-1], 2)


def window_cover(windows: torch.Tensor, n_patches: int) -> torch.Tensor:
    """(N, C) indices of the windows covering each patch, padded with W (a dummy window).

    Example:
        >>> import torch
        >>> window_cover(torch.tensor([[0, 1], [1, 2]]), 3).tolist()
        [[0, 2], [0, 1], [1, 2]]
    """
    import torch

    w = windows.shape[0]
    lists: list[list[int]] = [[] for _ in range(n_patches)]
    for wi, patch_ids in enumerate(windows.tolist()):
        for p in patch_ids:
            lists[p].append(wi)
    width = max(1, max(len(c) for c in lists))
    return torch.tensor([c + [w] * (width - len(c)) for c in lists], dtype=torch.long)


def _sum_over_cover(values: torch.Tensor, cover: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ values over covering windows (B, N), number of covering windows (N,)); no 0·inf products."""
    import torch

    padded = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)  # (B, W+1)
    w = values.shape[1]
    return padded[:, cover].sum(dim=-1), (cover < w).sum(dim=-1).to(values.dtype)


def harmonic_over_windows(scores: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Per patch, the harmonic mean of the scores of the windows covering it (anomalib ``harmonic_aggregation``).

    Args:
        scores: (B, W) window scores.
        cover: (N, C) from :func:`window_cover`.

    Returns:
        (B, N); a window score of 0 makes its patches 0, an uncovered patch is 0.

    Example:
        >>> import torch
        >>> cover = window_cover(torch.tensor([[0, 1], [1, 2]]), 3)
        >>> harmonic_over_windows(torch.tensor([[0.5, 0.25]]), cover).tolist()
        [[0.5, 0.3333333432674408, 0.25]]
    """
    import torch

    inv_sum, count = _sum_over_cover(1.0 / scores, cover)
    return torch.nan_to_num(count / inv_sum, nan=0.0, posinf=0.0)


def mean_over_windows(values: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Per patch, the arithmetic mean of ``values`` (B, W) over the covering windows → (B, N)."""
    import torch

    total, count = _sum_over_cover(values, cover)
    return torch.nan_to_num(total / count, nan=0.0)


def zero_shot_scores(
    feats: dict[str, Any],
    text: torch.Tensor,
    covers: list[torch.Tensor],
    grid: tuple[int, int],
    settings: _Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot image scores (B,) and patch-grid maps (B, rows, cols).

    Args:
        feats: ``embed`` (B, E) and ``windows`` (per scale (B, W, E)).
        text: (B, 2, E) [normal, anomalous] text embeddings.
        covers: per scale, :func:`window_cover` of its windows.
        grid: the patch grid.
        settings: the resolved variant.
    """
    import torch

    n = grid[0] * grid[1]
    image = class_probabilities(feats["embed"], text, settings.logit_scale)[:, 1]  # (B,)
    per_scale = []
    for w_emb, cover in zip(feats["windows"], covers, strict=True):
        probs = class_probabilities(w_emb, text, settings.logit_scale)  # (B, W, 2)
        cover = cover.to(probs.device)
        if settings.aggregation == "anomalous_harmonic":
            per_scale.append(harmonic_over_windows(probs[..., 1], cover))  # (B, N)
        else:  # caoyunkang: mean over covering windows of 1 / p(normal)
            per_scale.append(mean_over_windows(1.0 / probs[..., 0], cover))
    stacked = torch.stack(per_scale)  # (S, B, N)
    if settings.aggregation == "anomalous_harmonic":
        # anomalib _compute_zero_shot_scores: harmonic mean of {image score, scale maps}
        layers = torch.cat([image[None, :, None].expand(1, -1, n), stacked])  # (S+1, B, N)
        maps = layers.shape[0] / (1.0 / layers).sum(dim=0)
    else:  # caoyunkang calculate_textual_anomaly_score: 1 − 1 / mean over scales
        maps = torch.nan_to_num(1.0 - 1.0 / stacked.mean(dim=0), nan=0.0, neginf=0.0)
    return image, maps.reshape(-1, *grid)


def visual_association(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """The minimum over the memory of (1 − cos)/2 (WinCLIP eq. 4; anomalib ``visual_association_score``).

    Args:
        queries: (B, Q, D).
        memory: (M, D).

    Returns:
        (B, Q) in [0, 1].
    """
    import torch.nn.functional as F

    cos = F.normalize(queries.float(), dim=-1) @ F.normalize(memory.float(), dim=-1).T  # (B, Q, M)
    return (1.0 - cos).amin(dim=-1) / 2


def few_shot_map(
    feats: dict[str, Any],
    memory: dict[str, Any],
    covers: list[torch.Tensor],
    grid: tuple[int, int],
    mode: str,
    late_gallery: bool = False,
) -> torch.Tensor:
    """Few-shot maps (B, rows, cols) from the reference memories.

    anomalib: mean of {patch-level association, per-scale harmonic window maps};
    caoyunkang: mean over scales of the arithmetic mean over covering windows; ``late_gallery``
    scores the first window of each scale after the first against the previous scale's memory,
    as caoyunkang's ``calculate_visual_anomaly_score`` does.
    """
    import torch

    per_scale = []
    galleries = memory["windows"]
    for k, (w_emb, mem, cover) in enumerate(zip(feats["windows"], galleries, covers, strict=True)):
        scores = visual_association(w_emb, mem.to(w_emb.device))  # (B, W)
        if late_gallery and k > 0:
            scores[:, 0] = visual_association(w_emb[:, :1], galleries[k - 1].to(w_emb.device))[:, 0]
        cover = cover.to(scores.device)
        agg = harmonic_over_windows if mode == "anomalib" else mean_over_windows
        per_scale.append(agg(scores, cover))
    if mode == "anomalib":
        per_scale.insert(0, visual_association(feats["patches"], memory["patches"].to(feats["patches"].device)))
    return torch.stack(per_scale).mean(dim=0).reshape(-1, *grid)
