"""AnomalyCLIP and few-shot AnomalyCLIP+: object-agnostic learnable text prompts against V-V patch tokens.

Paper: Zhou, Pang, Tian, He, Chen, "AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly
Detection", ICLR 2024, arXiv 2310.18961 (text not in our store). Official code: zqhang/AnomalyCLIP (MIT)
@ 45ed4dd3: ``train.py``, ``test.py``, ``prompt_ensemble.py::AnomalyCLIP_PromptLearner``,
``AnomalyCLIP_lib/AnomalyCLIP.py``, ``AnomalyCLIP_lib/model_load.py``.
Independent implementation; no reference code is copied.

What it does (the official code's scripts, our defaults):

- backbone: OpenAI CLIP ViT-L/14@336 at 518 with QuickGELU, the positional embedding resized
  bilinearly (``conf/method/anomalyclip.yaml`` sets both); the V-V dual path (``AnomalyCLIP.py``) in blocks
  6–24 (``DPAM_layer=20``); patch tokens = V-V stream of the used layers, ``ln_post`` then ``@ proj``;
  the global feature = the *original* stream's CLS ``@ proj`` **without** ``ln_post``;
- text: the placeholder sentences "X×12 object." and "X×12 damaged object."; the word embeddings of
  the 12 "X" (positions 1–12, right after the start token) are replaced by learnable contexts
  (normal / anomalous, N(0, 0.02)); deep text prompts: 8 learnable (4, D) tensors overwrite positions
  1–4 before text blocks 2–9 (depth 9), rounded to fp16 values on insertion as the code's ``.half()``
  (after the per-sentence expand, as there: each sentence's gradient is rounded to fp16 before the sum);
- maps: per used layer, softmax over [normal, anomalous] of cos/0.07 per patch, the two-channel
  probability map upsampled bilinearly (``align_corners=False``) to the input size,
  (p_anomalous + 1 − p_normal)/2, summed over the used layers, Gaussian σ = 4;
- image score: softmax(cos(global, text)/0.07)[anomalous] (no map maximum);
- training (the shared trainer): λ · Σ_layers [focal(probability map) + dice(p_anomalous, mask) +
  dice(p_normal, 1 − mask)] + cross-entropy(cos(global, text)/0.07, label), λ = 4; Adam lr 1e-3,
  betas (0.5, 0.999), batch 8, 15 epochs, seed 111, on the auxiliary dataset's test split (VisA for
  MVTec AD, MVTec AD for everything else: ``conf/dataset/*.yaml`` ``aux``). Only the prompts learn; the
  image features come from the feature cache, so epochs after the first never run the image encoder.

``variant`` (the layers and the local-loss weight; ``layers`` / ``local_loss_weight`` override it):

- ``code`` (default): layer 24 only with λ = 4, as the released scripts (``--features_list 24``) and
  checkpoints; λ = 4 reproduces the weight of the four identical "layers" of the code before its clone
  fix (AnomalyCLIP issues #64, #82);
- ``paper``: layers 6, 12, 18, 24, each its own map and loss term, λ = 1 (maps summed over layers).

Other switches: ``global_ln_post`` (``ln_post`` on the global token, issue #14), ``round_deep_prompts_fp16``,
``sigma``, ``temperature``. Not reproduced: the 8 ``compound_prompt_projections`` (Linear 768 → 896) that
the code creates and registers but never uses (5.5 M of its 5.6 M parameters); the image side runs in
one batched pass instead of the code's batch size 1 at test time.

AnomalyCLIP+ (``shots`` > 0), the few-shot baseline of the AdaptCLIP paper (AAAI 2026, §4: "AnomalyCLIP+
is a strong baseline we build on AnomalyCLIP by adding patch-level feature associations like WinCLIP+";
no code is published, the construction below is ours): memory = the used layers' patch tokens of the k
normal references; per query patch and layer, association = min over the memory of (1 − cos)/2,
upsampled like the zero-shot maps and summed over layers; map = Gaussian((zero-shot + few-shot)/2);
image score = (zero-shot score + max of the smoothed few-shot map / number of layers)/2 (WinCLIP+'s fusion).

Official checkpoints (``epoch_15.pth``, a pickled ``{"prompt_learner": state_dict}``) convert with
:func:`convert_official_checkpoint` to a safetensors file for ``train.checkpoint=<file>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch
    from torch import nn

    from zsad_bench.context import Context
    from zsad_bench.train import TrainRecipe

__all__ = [
    "AnomalyCLIP",
    "AnomalyCLIPConfig",
    "association_maps",
    "convert_official_checkpoint",
    "convert_official_state",
    "placeholder_positions",
    "placeholder_sentences",
    "probability_maps",
    "state_probabilities",
]

logger = logging.getLogger(__name__)

# variant → the layers used and the weight λ of the local (map) losses (train.py `lam`).
_VARIANTS: dict[str, dict[str, Any]] = {
    "code": {"layers": [24], "local_loss_weight": 4.0},
    "paper": {"layers": [6, 12, 18, 24], "local_loss_weight": 1.0},
}
_OFFICIAL_KEYS = ("ctx_pos", "ctx_neg", "compound_prompts_text.")


@dataclass
class AnomalyCLIPConfig:
    """Knobs; defaults are the official code's (``train.sh``, ``test.sh``, ``prompt_ensemble.py``)."""

    name: str = "anomalyclip"
    variant: str = "code"  # code: layer 24, λ = 4 | paper: layers 6/12/18/24, λ = 1
    layers: list[int] | None = None  # V-V layers scored (None: the variant's)
    local_loss_weight: float | None = None  # λ on the map losses (None: the variant's)
    first_block: int = 6  # first V-V block: DAPM_replace(DPAM_layer=20) on 24 blocks
    n_ctx: int = 12  # learnable context tokens per sentence (--n_ctx)
    deep_depth: int = 9  # deep text prompts up to this text block (--depth); 1: none
    deep_length: int = 4  # tokens per deep prompt (--t_n_ctx)
    deep_first_block: int = 2  # the first text block whose input gets a deep prompt
    prompt_init_std: float = 0.02  # N(0, std) initialisation of every prompt
    class_word: str = "object"  # the object-agnostic class word
    anomalous_state: str = "damaged {}"  # the anomalous sentence's state
    round_deep_prompts_fp16: bool = True  # the code's .half() on insertion
    temperature: float = 0.07  # softmax(cos / temperature)
    global_ln_post: bool = False  # False: CLS @ proj without ln_post (the code, issue #14)
    sigma: float = 4.0  # Gaussian smoothing of the maps
    dice: str = "code"  # code: per mask row for a one-image batch (train.py's gt.squeeze()) | image | row
    feature_dtype: str | None = None  # feature-cache storage dtype (None: the cache's); fp32 for parity
    # training recipe (train.sh / train.py); train.* overrides win
    epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    train_seed: int | None = 111  # also seeds the prompt initialisation; None: the run's seed


@register_method(
    "anomalyclip",
    title="AnomalyCLIP (object-agnostic prompt learning); AnomalyCLIP+ with shots > 0",
    paper="ICLR 2024",
    arxiv="2310.18961",
    code="https://github.com/zqhang/AnomalyCLIP",
    commit="45ed4dd3",
    license="MIT",
    trainable=True,
    shots=(0, 1, 2, 4),
    backbone="clip_vit_l14_336",
    input_size=518,
    summary="learnable object-agnostic text prompts (+ deep text prompts) vs V-V patch tokens",
)
class AnomalyCLIP(Method):
    """Frozen CLIP with the V-V path; learnable object-agnostic text prompts."""

    Config = AnomalyCLIPConfig
    trainable = True
    inference_keys = ("sigma",)  # knobs that do not change the trained weights

    def __init__(self, cfg: AnomalyCLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        c = self.cfg
        if c.variant not in _VARIANTS:
            raise ValueError(f"anomalyclip: variant={c.variant!r} is not one of {sorted(_VARIANTS)}")
        if c.dice not in ("code", "image", "row"):
            raise ValueError(f"anomalyclip: dice={c.dice!r} is not one of code, image, row")
        self.layers: list[int] = list(c.layers if c.layers is not None else _VARIANTS[c.variant]["layers"])
        lam = c.local_loss_weight
        self.local_loss_weight = float(lam if lam is not None else _VARIANTS[c.variant]["local_loss_weight"])
        if not self.layers or any(layer < c.first_block for layer in self.layers if layer > 0):
            raise ValueError(f"anomalyclip: layers {self.layers} must be V-V layers (>= first_block {c.first_block})")
        if c.n_ctx < 1 or c.deep_depth < 1 or c.deep_length < 1 or c.deep_first_block < 1:
            raise ValueError("anomalyclip: n_ctx, deep_depth, deep_length and deep_first_block must be >= 1")
        self.prompts: nn.Module | None = None
        self._placeholders: dict[str, torch.Tensor] = {}
        self._text: tuple[tuple[int, ...], torch.Tensor] | None = None  # (parameter versions, (2, E) text)
        self._memory: dict[str, dict[int, torch.Tensor]] = {}  # category → layer → (k·N, E) normalised

    # ------------------------------------------------------------------ setup and training contract
    def setup(self, ctx: Context) -> None:
        """Build the prompts (seeded by ``train_seed``, else ``ctx.seed``) for the CLIP backbone's text width."""
        super().setup(ctx)
        bb = ctx.backbone
        if not hasattr(bb, "vv_tokens") or not hasattr(bb, "encode_token_embeddings"):
            raise ValueError(f"anomalyclip needs a CLIP backbone (backbone=clip_vit_l14_336), got {bb.name}")
        bb.resolve_layers([*self.layers, self.cfg.first_block])  # fail early on layers the backbone lacks
        seed = self.cfg.train_seed if self.cfg.train_seed is not None else ctx.seed
        n_blocks = len(bb.model.transformer.resblocks)
        self.prompts = build_prompts(self.cfg, bb.text_width, n_blocks, seed).to(ctx.device)
        self._placeholders = self._tokenize()
        self._text, self._memory = None, {}

    def parameters_to_train(self) -> list[Any]:
        """The context vectors and the deep text prompts."""
        return list(self._ready().prompts.parameters())

    def train_recipe(self, aux: Sequence[str]) -> TrainRecipe:
        """Adam(1e-3, betas 0.5/0.999), batch 8, 15 epochs, seed 111 (``train.sh``, ``train.py``)."""
        from zsad_bench.train import TrainRecipe

        c = self.cfg
        return TrainRecipe(
            epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, optimizer="adam", betas=tuple(c.betas), seed=c.train_seed
        )

    def set_training(self, mode: bool) -> None:
        """Train/eval mode of the prompts (nothing in them depends on it)."""
        self._ready().prompts.train(mode)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """``ctx_pos``, ``ctx_neg`` (1, 1, n_ctx, D) and ``compound_prompts_text.<i>`` (deep_length, D)."""
        return dict(self._ready().prompts.state_dict())

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`learnable_state` (or :func:`convert_official_state`) returned (strict)."""
        self._ready().prompts.load_state_dict(dict(state))
        self._text = None

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """λ · Σ_layers (focal + dice + dice of the normal channel) and the image cross-entropy (``train.py``)."""
        import torch.nn.functional as F

        from zsad_bench.heads import segmentation_losses

        if batch.masks is None or batch.labels is None:
            raise ValueError("anomalyclip training needs labels and masks in the auxiliary batches")
        patches, global_feat = self.image_features(batch)
        text = self.text_features()  # (2, E), with gradients
        size = batch.images.shape[-1]
        terms: dict[str, torch.Tensor] = {}
        for tokens in patches.values():
            probs = probability_maps(state_probabilities(tokens, text, self.cfg.temperature), self.grid, size)
            masks = batch.masks.to(probs.device)
            for key, value in segmentation_losses(probs, masks, dice_normal=True, dice=self.cfg.dice).items():
                terms[key] = terms[key] + value if key in terms else value
        terms = {k: self.local_loss_weight * v for k, v in terms.items()}
        logits = F.normalize(global_feat, dim=-1) @ text.T / self.cfg.temperature  # (B, 2)
        terms["image_ce"] = F.cross_entropy(logits, batch.labels.to(logits.device).long())
        return terms

    # ------------------------------------------------------------------ inference
    def set_references(self, normals: Batch) -> None:
        """AnomalyCLIP+: keep the references' normalised patch tokens per used layer for their categories."""
        import torch.nn.functional as F

        patches, _ = self.image_features(normals)
        memory = {layer: F.normalize(t.reshape(-1, t.shape[-1]), dim=-1) for layer, t in patches.items()}
        for category in sorted(set(normals.categories)):
            self._memory[category] = memory
        logger.info("anomalyclip+: %d reference images for %s", len(normals), sorted(set(normals.categories)))

    def predict(self, batch: Batch) -> Prediction:
        """Smoothed summed layer maps and the global token's score (AnomalyCLIP+ with references)."""
        import torch

        from zsad_bench.heads import gaussian_smooth

        size = batch.images.shape[-1]
        with torch.no_grad():
            patches, global_feat = self.image_features(batch)
            text = self.text_features()
            maps = sum(
                anomaly_map(probability_maps(state_probabilities(t, text, self.cfg.temperature), self.grid, size))
                for t in patches.values()
            )  # (B, S, S)
            scores = _global_scores(global_feat, text, self.cfg.temperature)  # (B,)
            memory = self._batch_memory(batch)
            if memory is not None:
                few = association_maps(patches, memory, self.grid, size)  # (B, S, S)
                maps = (maps + few) / 2.0
                few_max = gaussian_smooth(few, self.cfg.sigma).flatten(1).amax(dim=1) / len(self.layers)
                scores = (scores.cpu() + few_max) / 2.0
            maps = gaussian_smooth(maps, self.cfg.sigma)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    # ------------------------------------------------------------------ features
    @property
    def grid(self) -> tuple[int, int]:
        """The backbone's patch grid."""
        return self._ready().ctx.backbone.grid_size

    def feature_spec(self) -> Any:
        """The frozen V-V features: ``vv.<layer>`` (``ln_post`` + ``proj``), ``cls``, ``embed``."""
        from zsad_bench.features import FeatureSpec

        bb = self._ready().ctx.backbone
        return FeatureSpec.create(
            bb,
            "vv",
            layers=self.layers,
            dtype=self.cfg.feature_dtype,
            first_block=self.cfg.first_block,
            norm=True,
            proj=True,
        )

    def image_features(self, batch: Batch) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Per used layer the (B, N, E) V-V patch tokens (CLS dropped) and the (B, E) global feature.

        Both come from the frozen backbone through the feature cache (they do not depend on the
        prompts); the global feature is ``cls @ proj`` (``global_ln_post``: ``ln_post(cls) @ proj``).
        """
        from zsad_bench.heads import frozen_features, trainable_tokens

        ctx = self._ready().ctx
        bb = ctx.backbone
        feats = frozen_features(ctx, batch, self.feature_spec())  # mosaic items (none by default) bypass the cache
        p = bb.num_prefix_tokens
        patches = {layer: trainable_tokens(feats[f"vv.{layer}"][:, p:]) for layer in self.layers}
        if self.cfg.global_ln_post:
            return patches, trainable_tokens(feats["embed"])
        proj = bb.model.visual.proj.detach().to(feats["cls"].device, feats["cls"].dtype)
        return patches, trainable_tokens(feats["cls"] @ proj)

    def text_features(self) -> torch.Tensor:
        """(2, E) L2-normalised [normal, anomalous] text features of the learned prompts.

        With gradients enabled they are recomputed (training); otherwise memoised until a
        parameter changes (an optimizer step or a load bumps the parameters' versions).
        """
        import torch
        import torch.nn.functional as F

        from zsad_bench.backbones.prompts import overwrite_prompts, replace_token_embeddings

        prompts, bb = self._ready().prompts, self.ctx.backbone
        grad = torch.is_grad_enabled()
        versions = tuple(p._version for p in prompts.parameters())
        if not grad and self._text is not None and self._text[0] == versions:
            return self._text[1]
        ph = self._placeholders
        ctx_vectors = torch.cat([prompts.ctx_pos[0], prompts.ctx_neg[0]])  # (2, n_ctx, D)
        emb = replace_token_embeddings(ph["embeddings"], ctx_vectors, start=1)  # (2, L, D)
        deep = list(prompts.compound_prompts_text)
        if self.cfg.round_deep_prompts_fp16:  # per sentence, as the code's expand(...).half(): so are the gradients
            deep = [_round_fp16(d.expand(len(emb), -1, -1)) for d in deep]
        hook = overwrite_prompts(deep, first_block=self.cfg.deep_first_block, start=1) if deep else None
        text = F.normalize(bb.encode_token_embeddings(emb, ph["eot"], prompts=hook).float(), dim=-1)
        if not grad:
            self._text = (versions, text)
        return text

    # ------------------------------------------------------------------ helpers
    def _tokenize(self) -> dict[str, torch.Tensor]:
        """Token ids, frozen word embeddings and EOT positions of the two placeholder sentences."""
        bb, c = self.ctx.backbone, self.cfg
        sentences = placeholder_sentences(c.n_ctx, c.class_word, c.anomalous_state)
        tokens = bb.tokenize(list(sentences))  # (2, L)
        placeholder_positions(tokens, c.n_ctx, bb.tokenize(["X"])[0, 1])  # raises if "X" is not one token each
        return {"tokens": tokens, "embeddings": bb.token_embeddings(tokens), "eot": bb.eot_index(tokens)}

    def _batch_memory(self, batch: Batch) -> dict[int, torch.Tensor] | None:
        """The reference memory of the batch's category (None: zero-shot)."""
        found = {c: self._memory.get(c) for c in set(batch.categories)}
        if all(m is None for m in found.values()):
            return None
        if len(found) > 1 or None in found.values():
            raise ValueError(f"anomalyclip+: a batch mixes categories {sorted(found)}; references are per category")
        return next(iter(found.values()))

    def _ready(self) -> AnomalyCLIP:
        if self.prompts is None or self.ctx is None:
            raise RuntimeError("anomalyclip: call setup(ctx) first")
        return self


# ----------------------------------------------------------------------------- building blocks
def placeholder_sentences(
    n_ctx: int, class_word: str = "object", anomalous_state: str = "damaged {}"
) -> tuple[str, str]:
    """The normal and anomalous placeholder sentences (``prompt_ensemble.py``).

    Example:
        >>> placeholder_sentences(3)
        ('X X X object.', 'X X X damaged object.')
    """
    prefix = " ".join(["X"] * n_ctx)
    return f"{prefix} {class_word}.", f"{prefix} {anomalous_state.format(class_word)}."


def placeholder_positions(tokens: torch.Tensor, n_ctx: int, x_id: Any) -> list[int]:
    """The positions the learnable contexts replace: 1..n_ctx, checked to hold the placeholder token.

    Args:
        tokens: (K, L) token ids of placeholder sentences.
        n_ctx: number of contexts.
        x_id: the token id of the placeholder word "X".

    Raises:
        ValueError: a position 1..n_ctx does not hold ``x_id`` or position n_ctx + 1 still does.
    """
    ids = tokens[:, 1 : n_ctx + 2]
    if not bool((ids[:, :n_ctx] == x_id).all()) or bool((ids[:, n_ctx] == x_id).any()):
        raise ValueError(f"the placeholder 'X' does not occupy exactly positions 1..{n_ctx}: {tokens[:, : n_ctx + 3]}")
    return list(range(1, n_ctx + 1))


def build_prompts(cfg: AnomalyCLIPConfig, width: int, text_blocks: int, seed: int) -> nn.Module:
    """The learnable prompts, initialised N(0, std) in the code's order: ``ctx_pos``, ``ctx_neg``, deep prompts.

    Keys follow ``AnomalyCLIP_PromptLearner``: ``ctx_pos``/``ctx_neg`` (1, 1, n_ctx, D) and
    ``compound_prompts_text.<i>`` (deep_length, D) for text blocks ``deep_first_block`` ..
    ``deep_depth`` that exist in the backbone's text tower.
    """
    import torch
    from torch import nn

    n_deep = max(0, min(cfg.deep_depth, text_blocks) - cfg.deep_first_block + 1)
    if n_deep < cfg.deep_depth - cfg.deep_first_block + 1:
        logger.info("anomalyclip: the text tower has %d blocks; %d deep prompts instead of %d",
                    text_blocks, n_deep, cfg.deep_depth - cfg.deep_first_block + 1)  # fmt: skip
    gen = torch.Generator().manual_seed(int(seed))

    def normal(*shape: int) -> nn.Parameter:
        return nn.Parameter(torch.randn(*shape, generator=gen) * cfg.prompt_init_std)

    module = nn.Module()
    module.ctx_pos = normal(1, 1, cfg.n_ctx, width)
    module.ctx_neg = normal(1, 1, cfg.n_ctx, width)
    module.compound_prompts_text = nn.ParameterList([normal(cfg.deep_length, width) for _ in range(n_deep)])
    return module


def state_probabilities(tokens: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over [normal, anomalous] of cos/temperature: (B, N, E), (2, E) → (B, N, 2)."""
    import torch.nn.functional as F

    return (F.normalize(tokens, dim=-1) @ text.T / temperature).softmax(dim=-1)


def probability_maps(probs: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """Per-patch probabilities (B, N, 2) → (B, 2, size, size), bilinear, ``align_corners=False``."""
    import torch.nn.functional as F

    b, n, c = probs.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patch probabilities do not fill a {grid[0]}x{grid[1]} grid")
    x = probs.transpose(1, 2).reshape(b, c, *grid)  # (B, 2, h, w)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def anomaly_map(maps: torch.Tensor) -> torch.Tensor:
    """(p_anomalous + 1 − p_normal)/2 of (B, 2, S, S) upsampled probabilities → (B, S, S) (``test.py``)."""
    return (maps[:, 1] + 1.0 - maps[:, 0]) / 2.0


def association_maps(
    patches: Mapping[int, torch.Tensor], memory: Mapping[int, torch.Tensor], grid: tuple[int, int], size: int
) -> torch.Tensor:
    """Σ over layers of the WinCLIP+ association min over the memory of (1 − cos)/2, upsampled.

    Args:
        patches: layer → (B, N, E) query patch tokens.
        memory: layer → (M, E) L2-normalised reference patch tokens.
        grid: the patch grid (N = rows · cols).
        size: the output side.

    Returns:
        (B, size, size).
    """
    import torch.nn.functional as F

    total = 0
    for layer, tokens in patches.items():
        cos = F.normalize(tokens, dim=-1) @ memory[layer].T  # (B, N, M)
        dist = (1.0 - cos).amin(dim=-1) / 2.0  # (B, N)
        up = F.interpolate(dist.reshape(-1, 1, *grid), size=(size, size), mode="bilinear", align_corners=False)
        total = total + up[:, 0]
    return total


def _global_scores(global_feat: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos(global, text)/temperature)[anomalous]: (B, E), (2, E) → (B,)."""
    return state_probabilities(global_feat[:, None], text, temperature)[:, 0, 1]


def _round_fp16(p: torch.Tensor) -> torch.Tensor:
    """Round to fp16 values and back (the code's ``.half()``); gradients pass unchanged."""
    import torch

    return p.to(torch.float16).to(p.dtype)


def convert_official_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The learnable tensors of an official ``prompt_learner`` state dict, as :meth:`AnomalyCLIP.learnable_state`.

    Keeps ``ctx_pos``, ``ctx_neg`` and ``compound_prompts_text.<i>``; drops the buffers (token
    prefixes/suffixes, tokenized prompts) and the unused ``compound_prompt_projections``.

    Raises:
        KeyError: a learnable tensor is missing.
    """
    out = {k: v.float() for k, v in state.items() if k.startswith(_OFFICIAL_KEYS)}
    missing = [k for k in ("ctx_pos", "ctx_neg") if k not in out]
    if missing:
        raise KeyError(f"not an AnomalyCLIP prompt_learner state dict: {missing} missing (keys: {sorted(state)[:8]})")
    return out


def convert_official_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Convert an official ``epoch_<n>.pth`` to a safetensors file usable as ``train.checkpoint=<dst>``.

    The file is read with ``torch.load(weights_only=True)`` (tensors only, no code runs).

    Raises:
        FileNotFoundError: naming ``src``.
        KeyError: the file holds no ``prompt_learner`` state dict.
    """
    import torch

    from zsad_bench.checkpoints import save_state

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such checkpoint (the official files are checkpoints/*/epoch_15.pth)")
    blob = torch.load(src, map_location="cpu", weights_only=True)
    state = blob.get("prompt_learner", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise KeyError(f"{src} holds no 'prompt_learner' state dict")
    save_state(Path(dst), convert_official_state(state), {"source": str(src.name)})
    return Path(dst)
