"""AnoCLIP and AnoCLIP+ (test-time adaptation): V-V patch tokens and domain-aware state prompts.

Paper: Deng, Zhang, Bao, Li, "Bootstrap Fine-Grained Vision-Language Alignment for Unified Zero-Shot
Anomaly Localization" (first released as "AnoVL", arXiv 2308.15939).
Official code: hq-deng/AnoVL (MIT) @ 3a70bfda: ``vl_test.py`` (the MVTec script), ``model.py::TextAdapter``,
``prompt_ensemble.py``, ``utils.py::aug``, ``open_clip/transformer.py``.
Independent implementation; no reference code is copied.

``anoclip``, as the official MVTec script computes it:

- patch tokens: the V-V stream (``docs/backbones.md``) from block 1 on, last layer, ``ln_post`` then ``@ proj``;
- text: "a [domain] photo of a [state] [class]": 22 base templates × 3 domain phrases (a texture set
  or an object set) × 7 normal / 7 anomalous states; the raw sentence embeddings are averaged per
  polarity and the two means L2-normalised;
- map: softmax over [normal, anomalous] of the *raw* cosine (no temperature); the anomalous
  probability per patch, replicate-padded 3×3 mean, bilinear upsampling with align_corners=True;
- image score: the anomalous probability of the global embedding (the original stream's CLS),
  averaged over 22 views of the image (itself, rotations by ±π/16 … ±π/4, shifts by ±0.1 and ±0.2,
  horizontal flip, grey, 90°/180°/270° rotations); not in the paper.

``anoclip_tta`` (AnoCLIP+) refines each test image's patch tokens P before scoring with the adapter
Φ(P) = α(P̃ ωᵀ + b) T + P (paper Eq. 9), T the (2N, E) normalised sentence embeddings (normal block
first), P̃ = P or P/‖P‖, optimised for ``steps`` AdamW steps on L = L_d + L_p (Eq. 10–11):
L_d = −½·mean[log(1 − S(Φ(p))) + log S(Φ(p + δ))] with δ ~ N(0, σ²) drawn anew at each step, and
L_p the entropy of the clean predictions. The map is scored from Φ(P) as above; the image score is
AnoCLIP's (paper Table 2 note). Only the adapter learns: the frozen features are inputs.

Paper versus official code (table in ``docs/methods/anoclip.md``):

- ``domains``: the code's five phrases, three per class type (``code``, default) vs the paper's
  "4 domain-aware prompts" (``paper``: industrial photo/image, manufacturing image, textural photo for
  every class, our reading: the paper does not list them); ``domain_phrases`` sets any list;
- ``class_names``: the code's folder names (``macaroni1``/``2`` → ``macaroni``, underscores kept) vs
  the dataset's prompt words (``dataset``);
- ``image_score``: 22 augmented views (``augmented``, code) vs the image alone (``global``, paper Eq. 1);
- TTA ``variant`` ``paper`` (default) vs ``code`` presets: ``activation`` sigmoid vs tanh; ``init``
  ω = T (``text``) vs PyTorch's default ``nn.Linear`` initialisation (``random``); ``bias`` no vs yes;
  ``normalize_input`` P vs P/‖P‖; ``noise_std`` 0.05 vs 0.05·1.1 = 0.055; ``carry_optimizer``:
  a fresh AdamW per image vs one per category whose moments carry across images. The code's
  Φ = ½P + ½α(·)T equals ours up to a factor ½, which the cosine scoring ignores.
- ``entropy``: L_p over both classes (``binary``, the code and the paper's "soft cross-entropy") vs
  the single term −S·log S printed in Eq. 11 (``anomalous``).

Random draws (random init, noise) come from a generator seeded by (``ctx.seed``, the image's key),
so a result does not depend on the batch it was scored in (``carry_optimizer`` aside). Hooks in
``ctx.hooks`` let parity tests inject the official code's draws:

- ``anoclip_tta.init(record, weight, bias)``: after the adapter's initialisation for each image,
  under ``no_grad``; may overwrite ``weight`` (2N, E) and ``bias`` (2N,) or None in place;
- ``anoclip_tta.noise(record, step, shape) -> Tensor``: the noise δ (shape (N, E)) of TTA step
  ``step`` (0-based), used instead of ours.

Not reproduced: the VisA script's two-tile processing and its linear ``Adapter``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zsad_bench.prompts import (
    ANOCLIP_ANOMALOUS_STATES,
    ANOCLIP_NORMAL_STATES,
    ANOCLIP_OBJECT_DOMAINS,
    ANOCLIP_TEXTURE_CLASSES,
    ANOCLIP_TEXTURE_DOMAINS,
    anoclip_class_name,
    anoclip_templates,
    two_class_prompts,
)
from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction, SampleRecord

if TYPE_CHECKING:
    import torch

    from zsad_bench.context import Context

__all__ = [
    "ANOCLIP_PAPER_DOMAINS",
    "AnoCLIP",
    "AnoCLIPConfig",
    "AnoCLIPTTA",
    "AnoCLIPTTAConfig",
    "TTASettings",
    "adapt_tokens",
    "anoclip_sentences",
    "augment_views",
    "smooth_and_upsample",
    "state_probabilities",
    "tta_loss",
]

logger = logging.getLogger(__name__)

# Our reading of the paper's "4 domain-aware prompts" (§4.1), used for every class.
ANOCLIP_PAPER_DOMAINS: tuple[str, ...] = (
    "industrial photo",
    "industrial image",
    "manufacturing image",
    "textural photo",
)
_CHOICES = {
    "domains": ("code", "paper"),
    "class_names": ("code", "dataset"),
    "image_score": ("augmented", "global"),
}
# TTA presets: paper §3.4/§4.1 (activation per the project's issue: the paper names none) vs model.py/vl_test.py.
_TTA_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {
        "activation": "sigmoid",
        "init": "text",
        "bias": False,
        "normalize_input": False,
        "noise_std": 0.05,
        "carry_optimizer": False,
    },
    "code": {
        "activation": "tanh",
        "init": "random",
        "bias": True,
        "normalize_input": True,
        "noise_std": 0.05 * 1.1,
        "carry_optimizer": True,
    },
}
_TTA_CHOICES = {"activation": ("sigmoid", "tanh"), "init": ("text", "random"), "entropy": ("binary", "anomalous")}


# ----------------------------------------------------------------------------- configs
@dataclass
class AnoCLIPConfig:
    """AnoCLIP knobs; defaults are the official MVTec script's (``test_zero_shot.sh``, ``vl_test.py``)."""

    name: str = "anoclip"
    first_block: int = 1  # first V-V block: AnoVL replaces all 12 (open_clip/transformer.py forward)
    layer: int = -1  # the V-V layer whose patches are scored: the last (vl_test.py `layer != 6`: layer 12)
    domains: str = "code"  # code: 3 of 5 phrases by class type (prompt_ensemble.py) | paper: 4 for all
    domain_phrases: list[str] | None = None  # explicit phrases for every class (overrides domains)
    texture_classes: list[str] = field(default_factory=lambda: list(ANOCLIP_TEXTURE_CLASSES))
    class_names: str = "code"  # code: folder names, macaroni1/2 → macaroni | dataset: the dataset's prompt words
    logit_scale: float = 1.0  # raw cosine in the softmax (vl_test.py; paper Eq. 1–2)
    smoothing: int = 3  # side of the replicate-padded mean filter on the patch map (vl_test.py); 1: none
    image_score: str = "augmented"  # augmented: mean over 22 views (utils.py::aug) | global: the image alone
    cache: bool = True  # image features through the feature cache


@dataclass
class AnoCLIPTTAConfig(AnoCLIPConfig):
    """AnoCLIP+ knobs: AnoCLIP's plus the adapter's; None means "as ``variant`` does" (paper by default)."""

    name: str = "anoclip_tta"
    variant: str = "paper"  # paper | code: the preset of the six None knobs below
    activation: str | None = None  # α: sigmoid (paper, as our issue reads it) | tanh (model.py)
    init: str | None = None  # ω = T (paper §3.4) | random: nn.Linear's default (model.py; text init commented out)
    bias: bool | None = None  # a bias in P̃ωᵀ + b (model.py nn.Linear)
    normalize_input: bool | None = None  # P/‖P‖ before ω (model.py TextAdapter.adapter)
    noise_std: float | None = None  # σ of δ: 0.05 (paper §4.1) | 0.05·1.1 (model.py TextAdapter.aug)
    carry_optimizer: bool | None = None  # AdamW moments kept across a category's images (vl_test.py `opts`)
    steps: int = 5  # TTA epochs, one step each (paper §4.1, --epoch 5)
    lr: float = 1e-3  # AdamW learning rate (paper §4.1, vl_test.py)
    weight_decay: float = 0.01  # AdamW default (vl_test.py; the paper gives none)
    entropy: str = "binary"  # L_p: entropy over both classes (code) | anomalous: Eq. 11's single term


@dataclass(frozen=True)
class TTASettings:
    """The resolved adapter settings of :class:`AnoCLIPTTAConfig`."""

    activation: str
    init: str
    bias: bool
    normalize_input: bool
    noise_std: float
    carry_optimizer: bool
    steps: int
    lr: float
    weight_decay: float
    entropy: str


def tta_settings(cfg: AnoCLIPTTAConfig) -> TTASettings:
    """Apply the ``variant`` preset, then the explicit knobs, and validate.

    Raises:
        ValueError: naming the knob, its value and the allowed ones.
    """
    if cfg.variant not in _TTA_VARIANTS:
        raise ValueError(f"anoclip_tta: variant={cfg.variant!r} is not one of {sorted(_TTA_VARIANTS)}")
    chosen = {k: (v if getattr(cfg, k) is None else getattr(cfg, k)) for k, v in _TTA_VARIANTS[cfg.variant].items()}
    chosen.update(steps=int(cfg.steps), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay), entropy=cfg.entropy)
    for key, allowed in _TTA_CHOICES.items():
        if chosen[key] not in allowed:
            raise ValueError(
                f"anoclip_tta: {key}={chosen[key]!r} is not one of {allowed} (conf/method/anoclip_tta.yaml)"
            )
    if chosen["steps"] < 0 or chosen["lr"] <= 0 or chosen["noise_std"] < 0:
        raise ValueError(f"anoclip_tta: steps, lr and noise_std must be non-negative (lr > 0), got {chosen}")
    return TTASettings(**chosen)


def _check(cfg: AnoCLIPConfig) -> None:
    name = cfg.name
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{name}: {key}={getattr(cfg, key)!r} is not one of {allowed} (conf/method/{name}.yaml)")
    if cfg.smoothing < 1 or cfg.smoothing % 2 == 0:
        raise ValueError(f"{name}: smoothing must be an odd positive kernel side, got {cfg.smoothing}")
    if cfg.domain_phrases is not None and not cfg.domain_phrases:
        raise ValueError(f"{name}: domain_phrases is empty; use null for the `domains` choice")


@dataclass
class _Text:
    """One class's text: ``means`` (2, E) normalised [normal, anomalous]; ``sentences`` (2N, E) normalised."""

    means: torch.Tensor
    sentences: torch.Tensor


# ----------------------------------------------------------------------------- AnoCLIP
@register_method(
    "anoclip",
    title="AnoCLIP",
    paper="arXiv 2023",
    arxiv="2308.15939",
    code="https://github.com/hq-deng/AnoVL",
    commit="3a70bfdaea6baf1eeb140c5de8155b535bd94833",
    license="MIT",
    shots=(0,),
    backbone="clip_vit_b16_plus_240",
    input_size=240,
    summary="V-V attention patch tokens against domain-aware contrastive-state prompts, raw-cosine softmax",
)
class AnoCLIP(Method):
    """Training-free AnoCLIP; :class:`AnoCLIPTTA` adds the test-time adapter."""

    Config = AnoCLIPConfig

    def __init__(self, cfg: AnoCLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        _check(self.cfg)
        self._text: dict[tuple[str, tuple[str, ...]], _Text] = {}

    def setup(self, ctx: Context) -> None:
        """Bind the context; the backbone must be a CLIP ViT (it needs the V-V path)."""
        super().setup(ctx)
        if not hasattr(ctx.backbone, "vv_tokens"):
            raise ValueError(
                f"{self.cfg.name} needs a CLIP backbone, got {ctx.backbone.name} (backbone=clip_vit_b16_plus_240)"
            )
        self._text.clear()

    @property
    def backbone(self) -> Any:
        """The context's backbone."""
        if self.ctx is None:
            raise RuntimeError(f"{self.cfg.name}: call setup(ctx) before predict")
        return self.ctx.backbone

    def predict(self, batch: Batch) -> Prediction:
        """Score a batch."""
        import torch

        feats = self.features(batch)
        texts = [self.text(r, c) for r, c in zip(batch.records, batch.class_names, strict=True)]
        means = torch.stack([t.means for t in texts])  # (B, 2, E)
        tokens = self.refine(feats["patches"], texts, batch)  # (B, N, E)
        probs = state_probabilities(tokens, means, self.cfg.logit_scale)[..., 1]  # (B, N)
        grid = self.backbone.grid_size
        maps = smooth_and_upsample(probs.reshape(-1, *grid), tuple(batch.images.shape[-2:]), self.cfg.smoothing)
        scores = self.image_scores(batch, feats["embed"], means)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    def refine(self, patches: torch.Tensor, texts: list[_Text], batch: Batch) -> torch.Tensor:
        """The patch tokens that are scored (AnoCLIP: unchanged)."""
        return patches

    # ------------------------------------------------------------------ pieces
    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        """``patches`` (B, N, E): V-V tokens after ``ln_post`` and ``proj``; ``embed`` (B, E): the CLIP embedding."""
        from zsad_bench.features import FeatureSpec, get_features

        bb = self.backbone
        spec = FeatureSpec.create(
            bb, "vv", layers=(self.cfg.layer,), first_block=self.cfg.first_block, norm=True, proj=True
        )
        feats = get_features(self.ctx, batch, spec, use_cache=self.cfg.cache)
        patches = feats[f"vv.{self.cfg.layer}"][:, bb.num_prefix_tokens :]
        return {"patches": patches, "embed": feats["embed"]}

    def patch_tokens(self, batch: Batch) -> torch.Tensor:
        """(B, N, E) the V-V patch tokens that AnoCLIP scores."""
        return self.features(batch)["patches"]

    def class_word(self, record: SampleRecord, class_name: str) -> str:
        """The class words in the prompts of ``record``'s category."""
        return anoclip_class_name(record.category) if self.cfg.class_names == "code" else class_name

    def domains(self, category: str) -> tuple[str, ...]:
        """The domain phrases of ``category``."""
        if self.cfg.domain_phrases is not None:
            return tuple(self.cfg.domain_phrases)
        if self.cfg.domains == "paper":
            return ANOCLIP_PAPER_DOMAINS
        textures = set(self.cfg.texture_classes)
        return ANOCLIP_TEXTURE_DOMAINS if category in textures else ANOCLIP_OBJECT_DOMAINS

    def sentences(self, record: SampleRecord, class_name: str) -> tuple[list[str], list[str]]:
        """The normal and anomalous sentences of ``record``'s category."""
        return anoclip_sentences(self.class_word(record, class_name), self.domains(record.category))

    def text(self, record: SampleRecord, class_name: str) -> _Text:
        """The text embeddings of ``record``'s category (memoised)."""
        import torch
        import torch.nn.functional as F

        key = (self.class_word(record, class_name), self.domains(record.category))
        if key not in self._text:
            normal, anomalous = self.sentences(record, class_name)
            emb = self.backbone.encode_text(normal + anomalous).float()  # (2N, E) raw
            raw = emb.split([len(normal), len(anomalous)])
            means = F.normalize(torch.stack([r.mean(dim=0) for r in raw]), dim=-1)  # (2, E), prompt_ensemble.py
            self._text[key] = _Text(means.to(self.ctx.device), F.normalize(emb, dim=-1).to(self.ctx.device))
        return self._text[key]

    def image_scores(self, batch: Batch, embed: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """(B,) anomalous probability of the global embedding, averaged over the views if ``augmented``."""
        import torch

        views = embed[:, None]  # (B, 1, E)
        if self.cfg.image_score == "augmented":
            from zsad_bench.features import FeatureSpec, get_features

            spec = FeatureSpec.create(self.backbone, "anoclip_views", views=21, version=1)  # bump if the views change
            extra = get_features(self.ctx, batch, spec, compute=_view_embeddings, use_cache=self.cfg.cache)
            views = torch.cat([views, extra["views"]], dim=1)  # (B, 22, E)
        return state_probabilities(views, means, self.cfg.logit_scale)[..., 1].mean(dim=1)


# ----------------------------------------------------------------------------- AnoCLIP+
@register_method(
    "anoclip_tta",
    title="AnoCLIP+ (AnoCLIP with test-time adaptation)",
    paper="arXiv 2023",
    arxiv="2308.15939",
    code="https://github.com/hq-deng/AnoVL",
    commit="3a70bfdaea6baf1eeb140c5de8155b535bd94833",
    license="MIT",
    shots=(0,),
    backbone="clip_vit_b16_plus_240",
    input_size=240,
    summary="AnoCLIP with a text-token adapter optimised per test image on noise and pseudo-label losses",
)
class AnoCLIPTTA(AnoCLIP):
    """AnoCLIP+: AnoCLIP whose patch tokens are refined per image by a test-time adapter.

    Attributes:
        tta_losses: per image of the last batch, the loss at each step (before its update).
    """

    Config = AnoCLIPTTAConfig

    def __init__(self, cfg: AnoCLIPTTAConfig | None = None) -> None:
        super().__init__(cfg)
        self.tta = tta_settings(self.cfg)
        self._states: dict[str, _AdapterState] = {}
        self.tta_losses: list[list[float]] = []

    def setup(self, ctx: Context) -> None:
        """Bind the context and forget carried optimiser states."""
        super().setup(ctx)
        self._states.clear()

    def refine(self, patches: torch.Tensor, texts: list[_Text], batch: Batch) -> torch.Tensor:
        """Adapt each image's (N, E) patch tokens; returns (B, N, E)."""
        import torch

        out, self.tta_losses = [], []
        for p, text, record in zip(patches, texts, batch.records, strict=True):
            adapted, losses = self.adapt(p, text, record)
            out.append(adapted)
            self.tta_losses.append(losses)
        return torch.stack(out)

    def adapt(self, patches: torch.Tensor, text: _Text, record: SampleRecord) -> tuple[torch.Tensor, list[float]]:
        """Optimise the adapter on one image's (N, E) tokens; return (Φ(P) (N, E), the step losses)."""
        import torch

        s = self.tta
        g = torch.Generator().manual_seed(_image_seed(self.ctx.seed, record.key))
        with torch.inference_mode(False), torch.enable_grad():
            # frozen inputs, copied out of any inference mode so that autograd may use them
            p, t, means = (x.detach().clone().float() for x in (patches, text.sentences, text.means))
            state = self._state(record.category, text, p.device)
            state.initialise(t, s, g)
            hook = self.ctx.hooks.get("anoclip_tta.init")
            if hook is not None:
                with torch.no_grad():
                    hook(record, state.weight, state.bias)
            losses = []
            for step in range(s.steps):
                noise = self._noise(record, step, p, g)
                clean, noisy = (
                    state_probabilities(state.apply(x, t, s), means, self.cfg.logit_scale) for x in (p, p + noise)
                )
                loss = tta_loss(clean, noisy, s.entropy)
                state.optimizer.zero_grad()
                loss.backward()
                state.optimizer.step()
                losses.append(loss.item())
            with torch.no_grad():
                return state.apply(p, t, s), losses

    def _state(self, category: str, text: _Text, device: Any) -> _AdapterState:
        """The adapter of ``category``: kept across images with ``carry_optimizer``, else new."""
        if not self.tta.carry_optimizer:
            return _AdapterState(text.sentences.shape, self.tta, device)
        if category not in self._states:
            self._states[category] = _AdapterState(text.sentences.shape, self.tta, device)
        return self._states[category]

    def _noise(self, record: SampleRecord, step: int, p: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """δ ~ N(0, σ²) of one step (N, E), or the ``anoclip_tta.noise`` hook's."""
        import torch

        hook = self.ctx.hooks.get("anoclip_tta.noise")
        if hook is not None:
            return torch.as_tensor(hook(record, step, tuple(p.shape)), dtype=p.dtype).to(p.device)
        return (torch.randn(p.shape, generator=g) * self.tta.noise_std).to(p.device)


class _AdapterState:
    """ω (K, E), the optional bias (K,) and the AdamW optimiser of one adapter."""

    def __init__(self, shape: tuple[int, int], s: TTASettings, device: Any) -> None:
        import torch

        k, e = shape
        self.weight = torch.zeros(k, e, device=device, requires_grad=True)
        self.bias = torch.zeros(k, device=device, requires_grad=True) if s.bias else None
        params = [t for t in (self.weight, self.bias) if t is not None]
        self.optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)

    def initialise(self, text: torch.Tensor, s: TTASettings, g: torch.Generator) -> None:
        """ω = T (``text``) or nn.Linear's default U(±1/√E) for weight and bias (``random``), in place."""
        import torch

        with torch.no_grad():
            if s.init == "text":
                self.weight.copy_(text)
                if self.bias is not None:
                    self.bias.zero_()
                return
            bound = 1.0 / math.sqrt(self.weight.shape[1])  # kaiming_uniform_(a=√5) and the bias rule of nn.Linear
            self.weight.copy_(torch.empty(self.weight.shape).uniform_(-bound, bound, generator=g))
            if self.bias is not None:
                self.bias.copy_(torch.empty(self.bias.shape).uniform_(-bound, bound, generator=g))

    def apply(self, p: torch.Tensor, text: torch.Tensor, s: TTASettings) -> torch.Tensor:
        """Φ(P) with the current parameters."""
        return adapt_tokens(p, self.weight, self.bias, text, s.activation, s.normalize_input)


# ----------------------------------------------------------------------------- pure functions
def anoclip_sentences(class_word: str, domains: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """The normal and anomalous sentences "a [domain] photo of a [state] [class]" (template-major, as AnoVL).

    Example:
        >>> normal, anomalous = anoclip_sentences("bottle", ("industrial photo",))
        >>> len(normal), normal[0], anomalous[1]
        (154, 'a cropped industrial photo of the normal bottle', 'a cropped industrial photo of the abnormal bottle')
    """
    templates = anoclip_templates(class_word, tuple(domains))
    return two_class_prompts(
        class_word, ANOCLIP_NORMAL_STATES, ANOCLIP_ANOMALOUS_STATES, templates, order="template_major"
    )


def state_probabilities(tokens: torch.Tensor, means: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """softmax(logit_scale · cos(token, t)) over [normal, anomalous].

    Args:
        tokens: (B, M, E) or (M, E) tokens (any norm).
        means: (B, 2, E) or (2, E) normalised text means matching ``tokens``' batch.
        logit_scale: 1 in AnoCLIP (raw cosine).

    Returns:
        (..., M, 2) probabilities.
    """
    import torch.nn.functional as F

    cos = F.normalize(tokens, dim=-1) @ means.transpose(-1, -2)  # (..., M, 2)
    return (logit_scale * cos).softmax(dim=-1)


def smooth_and_upsample(probs: torch.Tensor, size: tuple[int, int], kernel: int = 3) -> torch.Tensor:
    """(B, h, w) patch probabilities → replicate-padded ``kernel``² mean → (B, *size) bilinear, align_corners=True.

    Example:
        >>> import torch
        >>> smooth_and_upsample(torch.ones(1, 2, 2), (4, 4)).shape
        torch.Size([1, 4, 4])
    """
    import torch.nn.functional as F

    x = probs[:, None]  # (B, 1, h, w)
    if kernel > 1:
        pad = kernel // 2
        x = F.avg_pool2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel, stride=1)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)[:, 0]


def augment_views(images: torch.Tensor) -> torch.Tensor:
    """The 21 augmented views of the official image score (utils.py::aug), the original excluded.

    Order: rotations by −π/4, −3π/16, −π/8, −π/16, π/16, π/8, 3π/16, π/4 and shifts by (±0.2, ±0.2),
    (±0.1, ±0.1) (normalised coordinates) through an affine grid with reflection padding and
    align_corners=True; horizontal flip; grey (0.299 R + 0.587 G + 0.114 B, on the normalised
    tensor as the code does); rotations by 90°, 180°, 270°.

    Args:
        images: (B, 3, S, S) preprocessed images.

    Returns:
        (B, 21, 3, S, S).
    """
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    angles = [-math.pi / 4, -3 * math.pi / 16, -math.pi / 8, -math.pi / 16]
    angles += [-a for a in reversed(angles)]
    shifts = [(0.2, 0.2), (-0.2, 0.2), (-0.2, -0.2), (0.2, -0.2), (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1)]
    thetas = []
    for a in angles:  # cos/sin in float32 as the code computes them
        c, s = torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))
        thetas.append(torch.tensor([[c, -s, 0.0], [s, c, 0.0]]))
    thetas += [torch.tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]]) for dx, dy in shifts]
    theta = torch.stack(thetas).to(images)  # (16, 2, 3)
    x = images[:, None].expand(b, len(thetas), *images.shape[1:]).flatten(0, 1)  # (B·16, 3, S, S)
    grid = F.affine_grid(theta.repeat(b, 1, 1), list(x.shape), align_corners=True)
    warped = F.grid_sample(x, grid, padding_mode="reflection", align_corners=True).unflatten(0, (b, len(thetas)))
    weights = torch.tensor([0.299, 0.587, 0.114]).to(images)
    grey = (images * weights[:, None, None]).sum(dim=1, keepdim=True).expand_as(images)
    rest = [images.flip(-1), grey] + [torch.rot90(images, k, dims=(-2, -1)) for k in (1, 2, 3)]
    return torch.cat([warped, torch.stack(rest, dim=1)], dim=1)  # (B, 21, 3, S, S)


def adapt_tokens(
    p: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    text: torch.Tensor,
    activation: str,
    normalize_input: bool,
) -> torch.Tensor:
    """Φ(P) = α(P̃ ωᵀ + b) T + P (paper Eq. 9; ``model.py::TextAdapter`` up to a factor ½).

    Args:
        p: (..., E) patch tokens.
        weight: ω (K, E).
        bias: (K,) or None.
        text: T (K, E).
        activation: ``sigmoid`` or ``tanh``.
        normalize_input: P̃ = P/‖P‖ instead of P.

    Returns:
        (..., E) adapted tokens.
    """
    import torch
    import torch.nn.functional as F

    x = F.normalize(p, dim=-1) if normalize_input else p
    affinity = F.linear(x, weight, bias)  # (..., K)
    affinity = torch.sigmoid(affinity) if activation == "sigmoid" else torch.tanh(affinity)
    return affinity @ text + p


def tta_loss(clean: torch.Tensor, noisy: torch.Tensor, entropy: str = "binary") -> torch.Tensor:
    """L = L_p + L_d of the adapter (paper Eq. 10–11; vl_test.py ``loss_func``).

    Args:
        clean: (M, 2) [normal, anomalous] probabilities of Φ(p).
        noisy: (M, 2) probabilities of Φ(p + δ).
        entropy: ``binary``: L_p = −mean Σ_c S_c log S_c; ``anomalous``: −mean S log S (Eq. 11 as printed).

    Returns:
        The scalar loss; L_d = −½·mean[log S_normal(Φ(p)) + log S_anomalous(Φ(p + δ))].

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> round(float(tta_loss(p, p)), 4) == round(2 * math.log(2), 4)
        True
    """
    if entropy == "binary":
        pseudo = -(clean * clean.log()).sum(dim=-1).mean()
    else:
        pseudo = -(clean[:, 1] * clean[:, 1].log()).mean()
    discriminative = -0.5 * (clean[:, 0].log() + noisy[:, 1].log()).mean()
    return pseudo + discriminative


def _view_embeddings(backbone: Any, images: torch.Tensor, spec: Any, chunk: int = 64) -> dict[str, torch.Tensor]:
    """``views`` (B, 21, E): CLIP embeddings of :func:`augment_views` (a feature-cache variant)."""
    import torch

    views = augment_views(backbone.check_images(images))  # (B, 21, 3, S, S)
    flat = views.flatten(0, 1)
    emb = torch.cat([backbone.encode_image(c) for c in flat.split(chunk)])  # (B·21, E)
    return {"views": emb.reshape(views.shape[0], views.shape[1], -1)}


def _image_seed(seed: int, key: str) -> int:
    """A 63-bit seed from the run seed and an image key (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
