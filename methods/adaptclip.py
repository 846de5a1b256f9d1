"""AdaptCLIP: visual, textual and prompt-query adapters on a frozen CLIP, zero- and few-shot.

Paper: Gao, Zhou, Yan, Cai, Zhang, Wang, Liu, Liu, Wang, Wang, "AdaptCLIP: Adapting CLIP for Universal
Visual Anomaly Detection", AAAI 2026, arXiv 2505.09926.
Official code: gaobb/AdaptCLIP @ 354d9e33, **GPL-2.0**: nothing of it is copied or paraphrased here; this
module is written from the paper and from facts about the official code (architectures, constants,
formulas). Details and the paper-vs-code table: ``docs/methods/adaptclip.md``.

What runs (defaults = the official code's behaviour, as its ``test.py`` runs):

- backbone: OpenAI CLIP ViT-L/14@336 at 518, QuickGELU, positional embedding resized bilinearly
  (``conf/method/adaptclip.yaml``); the V-V dual path in blocks 6–24; patch tokens of layers 6/12/18/24
  from the V-V stream through ``ln_post`` and ``proj`` (CLS kept at index 0); the global feature is the
  original stream's CLS ``@ proj`` without ``ln_post``. All of it comes from the feature cache.
- visual adapter (VA): residual MLPs ``x + W2·ReLU(BN(W1·x))`` (no biases, reduction 4) on the global
  feature and on the layer-24 tokens (all of them, CLS included), scored against static text: WinCLIP's
  compositional prompts with the class word ``object``, embeddings averaged unnormalised.
- textual adapter (TA): two learnable 12-token prompts in ``SOT X×12 . EOT`` (no class word), encoded by
  the frozen text encoder, scored against the unadapted features.
- scoring of both: softmax(cos/0.07) per patch, bilinear to the input size; image logits cos/0.07.
  ``learning=alternating`` (default): VA meets only static text, TA only unadapted vision;
  ``learning=joint`` (Table 5 line 3): one branch, adapted vision against the learned text.
- prompt-query adapter (PQA, few-shot): per layer, the nearest normal-reference patch of every query
  patch by cosine (all shots pooled), align score min(1 − cos), joint feature ``q + |q − p'|``
  (``context=false``: ``|q − p'|``) → per-layer BatchNorm2d → a segmentation head and an image head that
  are **one module shared by the four layers** as in the code (``head_sharing=per_layer`` for the paper).
- fusion (the official ``test.py``'s) in :func:`fuse_zero_shot` / :func:`fuse_few_shot`; σ = 4; non-finite values → 0.
- training (the shared trainer): the summed losses of the branches (CE + focal + dice + dice of the
  normal channel; PQA summed over layers), Adam lr 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, seed 10.
  Each query is paired with a normal image of its class drawn from the auxiliary dataset's *train* split,
  re-drawn at every step from the trainer-seeded torch generator (exact on resume).

Deviation: a BatchNorm1d that meets a single row in training (the last batch of an epoch holding one
image) uses its running statistics for that step instead of failing as PyTorch (and the code) would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from zsad_bench.methods._adaptclip_parts import (
    build_parts,
    fuse_few_shot,
    fuse_zero_shot,
    harmonic_mean,
    joint_features,
    nearest_prompt_tokens,
    topk_pool,
    upsample_maps,
    upsample_probs,
)
from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch
    from torch import nn

    from zsad_bench.context import Context
    from zsad_bench.train import TrainRecipe
    from zsad_bench.types import SampleRecord

__all__ = [
    "ABLATIONS",
    "AdaptCLIP",
    "AdaptCLIPConfig",
    "build_parts",
    "convert_official_checkpoint",
    "fuse_few_shot",
    "fuse_zero_shot",
    "harmonic_mean",
    "joint_features",
    "nearest_prompt_tokens",
    "topk_pool",
]

logger = logging.getLogger(__name__)

# Table 5 "No." → the switches it sets (TA, VA, PQA, learning, context).
ABLATIONS: dict[int, dict[str, Any]] = {
    0: {"textual_adapter": False, "visual_adapter": False, "prompt_query_adapter": False},
    1: {"textual_adapter": True, "visual_adapter": False, "prompt_query_adapter": False},
    2: {"textual_adapter": False, "visual_adapter": True, "prompt_query_adapter": False},
    3: {"textual_adapter": True, "visual_adapter": True, "prompt_query_adapter": False, "learning": "joint"},
    4: {"textual_adapter": True, "visual_adapter": True, "prompt_query_adapter": False, "learning": "alternating"},
    5: {"textual_adapter": False, "visual_adapter": False, "prompt_query_adapter": True, "context": False},
    6: {"textual_adapter": False, "visual_adapter": False, "prompt_query_adapter": True, "context": True},
    7: {"textual_adapter": True, "visual_adapter": True, "prompt_query_adapter": True, "learning": "alternating",
        "context": True},
}  # fmt: skip
_CHOICES = {
    "learning": ("alternating", "joint"),
    "head_sharing": ("shared", "per_layer"),
    "alignment": ("cosine", "euclidean"),
    "fusion": ("code", "paper"),
    "prompt_source": ("auto", "train", "batch"),
}


@dataclass
class AdaptCLIPConfig:
    """Knobs; defaults are the official code's, the paper's variants are switches."""

    name: str = "adaptclip"
    # --- frozen image features (official ``adaptcliplib/adaptclip.py``)
    layers: list[int] = field(default_factory=lambda: [6, 12, 18, 24])  # PQA layers (features_list)
    local_layer: int = 24  # the layer VA and TA score
    first_block: int = 6  # first V-V block (DPAM_layer=20 on 24 blocks)
    global_ln_post: bool = False  # False: CLS @ proj without ln_post (the code)
    feature_dtype: str | None = None  # feature-cache storage dtype (None: the cache's)
    # --- components (Table 5); `ablation` = a line number sets them
    visual_adapter: bool = True
    textual_adapter: bool = True
    prompt_query_adapter: bool = True
    learning: str = "alternating"  # alternating | joint (Table 5 line 3)
    context: bool = True  # joint feature q + |q - p'| (False: |q - p'|, line 5); scripts pass --pq_context
    ablation: int | None = None  # Table 5 "No." 0..7, overriding the five switches above
    # --- architecture
    reduction: int = 4  # VA bottleneck: D -> D / 4
    n_ctx: int = 12  # tokens per learned prompt
    prompt_init_std: float = 0.02
    pq_mid_dim: int = 128  # segmentation/image head width
    head_sharing: str = "shared"  # shared (the code: one head for the 4 layers) | per_layer (the paper)
    pq_norm: bool = True  # per-layer BatchNorm2d before the heads (the code; not in the paper)
    alignment: str = "cosine"  # cosine on normalised tokens (code) | euclidean on raw tokens (paper Eq. 5)
    pq_topk: int = 10  # image pooling (mean + mean of top-k)/2 (code); 1 = the paper's (avg + max)/2
    # --- text
    class_word: str = "object"
    templates: str = "winclip_templates_anomalib"
    normal_states: str = "winclip_normal_states"
    anomalous_states: str = "winclip_anomalous_states"
    temperature: float = 0.07  # cos / 0.07 (the paper writes plain cosines: 1.0)
    # --- inference
    fusion: str = "code"  # code (official test.py) | paper (plain means of the adapters)
    sigma: float = 4.0
    # --- training recipe (scripts/train_adaptclip.sh); train.* overrides win
    epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    train_seed: int | None = 10  # also seeds the initialisation; None: the run's seed
    # --- training prompts: a normal image of the query's class from the auxiliary *train* split
    prompt_source: str = "auto"  # auto (train for registered datasets, else batch) | train | batch
    data_root: str = "data"  # the yaml fills in paths.data_root
    prompt_roots: dict[str, str] = field(default_factory=dict)  # dataset -> folder, where not under data_root


@dataclass(frozen=True)
class _Switches:
    visual: bool
    textual: bool
    pqa: bool
    joint: bool
    context: bool


def _switches(c: AdaptCLIPConfig) -> _Switches:
    values = {f.name: getattr(c, f.name) for f in fields(c)}
    if c.ablation is not None:
        if c.ablation not in ABLATIONS:
            raise ValueError(f"adaptclip: ablation={c.ablation} is not a Table 5 line (0..7) or null")
        values.update(ABLATIONS[c.ablation])
    joint = values["learning"] == "joint"
    if joint and not (values["visual_adapter"] and values["textual_adapter"]):
        raise ValueError("adaptclip: learning=joint needs both visual_adapter and textual_adapter")
    return _Switches(
        values["visual_adapter"], values["textual_adapter"], values["prompt_query_adapter"], joint, values["context"]
    )


_CARD = {
    "title": "AdaptCLIP (visual, textual and prompt-query adapters)",
    "paper": "AAAI 2026",
    "arxiv": "2505.09926",
    "code": "https://github.com/gaobb/AdaptCLIP",
    "commit": "354d9e33",
    "license": "GPL-2.0",
    "trainable": True,
    "shots": (0, 1, 2, 4),
    "backbone": "clip_vit_l14_336",
    "input_size": 518,
    "summary": "residual visual adapter + learned text prompts (zero-shot); nearest-normal-patch comparison head",
}


@register_method("adaptclip", **_CARD)
class AdaptCLIP(Method):
    """Frozen CLIP (V-V path) with three small adapters; one trained model serves every shot count."""

    Config = AdaptCLIPConfig
    trainable = True
    inference_keys = ("sigma", "fusion", "feature_dtype", "data_root", "prompt_roots")

    def __init__(self, cfg: AdaptCLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        c = self.cfg
        for key, allowed in _CHOICES.items():
            if getattr(c, key) not in allowed:
                raise ValueError(f"adaptclip: {key}={getattr(c, key)!r} is not one of {allowed}")
        if not c.layers or min(c.layers) < c.first_block or c.local_layer < c.first_block:
            raise ValueError(f"adaptclip: layers {c.layers} and local_layer must be V-V layers (>= {c.first_block})")
        if c.reduction < 1 or c.n_ctx < 1 or c.pq_mid_dim < 2 or c.pq_topk < 1:
            raise ValueError("adaptclip: reduction, n_ctx, pq_topk must be >= 1 and pq_mid_dim >= 2")
        self.switches = _switches(c)
        self.layers = [int(x) for x in c.layers]
        s = self.switches
        self.trainable = s.visual or s.textual or s.pqa  # Table 5 line 0 (naive CLIP) has nothing to learn
        self.parts: nn.ModuleDict | None = None
        self._text: dict[str, Any] = {}  # static text, learned text memo, placeholder tokens
        self._memory: dict[str, dict[int, torch.Tensor]] = {}  # category -> layer -> (k·N, E)
        self._pools: dict[tuple[str, str], tuple[list[SampleRecord], Any, str]] = {}
        self.prompt_draws = 0

    # ------------------------------------------------------------------ setup and the trainer's contract
    def setup(self, ctx: Context) -> None:
        """Build the adapters (seeded by ``train_seed``, else ``ctx.seed``) for the CLIP backbone's widths."""
        super().setup(ctx)
        bb = ctx.backbone
        if not hasattr(bb, "vv_tokens") or not hasattr(bb, "encode_token_embeddings"):
            raise ValueError(f"adaptclip needs a CLIP backbone (backbone=clip_vit_l14_336), got {bb.name}")
        bb.resolve_layers([*self.layers, self.cfg.local_layer, self.cfg.first_block])
        seed = self.cfg.train_seed if self.cfg.train_seed is not None else ctx.seed
        # loads the network here, outside inference mode: a first load inside the encoders' inference_mode
        # would make its parameters inference tensors, unusable in the text encoder's autograd graph later
        text_width = bb.text_width
        self.parts = build_parts(self.cfg, self.switches, bb.embed_dim, text_width, len(self.layers), seed)
        self.parts = self.parts.to(ctx.device).eval()
        self._text, self._memory, self._pools = {}, {}, {}

    def parameters_to_train(self) -> list[Any]:
        """The adapters' parameters (BatchNorm running statistics are buffers, saved with them)."""
        return list(self._ready().parts.parameters())

    def train_recipe(self, aux: Sequence[str]) -> TrainRecipe:
        """Adam(1e-3, betas 0.5/0.999), batch 8, 15 epochs, seed 10 (``scripts/train_adaptclip.sh``)."""
        from zsad_bench.train import TrainRecipe

        c = self.cfg
        betas = (float(c.betas[0]), float(c.betas[1]))
        return TrainRecipe(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, betas=betas, seed=c.train_seed)

    def set_training(self, mode: bool) -> None:
        """Train/eval mode of the adapters (their BatchNorms); forgets the memoised learned text."""
        self._ready().parts.train(mode)
        self._text.pop("learned", None)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """Parameters and BatchNorm buffers of the adapters (a shared head is stored once)."""
        return dict(self._ready().parts.state_dict())

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`learnable_state` returned (strict)."""
        self._ready().parts.load_state_dict(dict(state))
        self._text.pop("learned", None)

    def training_report(self) -> dict[str, Any]:
        """How the training prompts were drawn."""
        return {"prompt_source": self.cfg.prompt_source, "prompt_draws": self.prompt_draws}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The summed losses of the branches, named ``<branch>_<term>`` (``visual_ce``, ``pqa_focal`` …)."""
        return {f"{b}_{k}": v for b, terms in self.branch_losses(batch).items() for k, v in terms.items()}

    def branch_losses(self, batch: Batch) -> dict[str, dict[str, torch.Tensor]]:
        """Per branch: image cross-entropy, focal, dice and dice of the normal channel (PQA: summed over layers).

        Raises:
            ValueError: the batch has no labels or masks.
        """
        import torch.nn.functional as F

        from zsad_bench.heads import segmentation_losses

        if batch.masks is None or batch.labels is None:
            raise ValueError("adaptclip training needs labels and masks in the auxiliary batches")
        feats = self.image_features(batch)
        size, labels = batch.images.shape[-1], batch.labels.to(self.ctx.device).long()
        masks = batch.masks.to(self.ctx.device)
        outputs = dict(self.zero_shot_branches(feats, size))
        if self.switches.pqa:
            prompts = self.prompt_tokens(batch, feats)
            outputs["pqa"] = [(p, g) for p, g, _ in self.pqa_layers(feats, prompts, size)]
        losses: dict[str, dict[str, torch.Tensor]] = {}
        for name, out in outputs.items():
            terms: dict[str, torch.Tensor] = {}
            for probs, logits in out if isinstance(out, list) else [out]:
                step = {"ce": F.cross_entropy(logits, labels), **segmentation_losses(probs, masks, dice_normal=True)}
                for key, value in step.items():
                    terms[key] = terms[key] + value if key in terms else value
            losses[name] = terms
        return losses

    # ------------------------------------------------------------------ inference
    def set_references(self, normals: Batch) -> None:
        """Keep the k references' patch tokens of every PQA layer (all shots pooled) for their categories.

        Raises:
            ValueError: the prompt-query adapter is switched off.
        """
        if not self.switches.pqa:
            raise ValueError("adaptclip: few-shot needs the prompt-query adapter (prompt_query_adapter=true)")
        feats = self.image_features(normals)
        memory = {layer: t.reshape(-1, t.shape[-1]) for layer, t in feats["patches"].items()}  # (k·N, E)
        for category in sorted(set(normals.categories)):
            self._memory[category] = memory
        logger.info("adaptclip: %d reference images for %s", len(normals), sorted(set(normals.categories)))

    def clear_references(self) -> None:
        """Forget every category's references (back to zero-shot)."""
        self._memory.clear()

    def predict(self, batch: Batch) -> Prediction:
        """Zero-shot (VA + TA) or, with references, few-shot (VA + TA + PQA) fused as the official ``test.py`` does."""
        import torch

        size = batch.images.shape[-1]
        with torch.no_grad():
            feats = self.image_features(batch)
            out = self.zero_shot_branches(feats, size)
            maps = [probs[:, 1] for probs, _ in out.values()]
            scores = [logits.softmax(dim=-1)[:, 1] for _, logits in out.values()]
            memory = self._batch_memory(batch)
            if memory is None:
                if not maps:
                    raise ValueError("adaptclip: a model with only the prompt-query adapter needs shots > 0")
                image, pixel = fuse_zero_shot(maps, scores, self.cfg.sigma, self.cfg.fusion)
            else:
                layers = self.pqa_layers(feats, memory, size)
                maps.append(torch.stack([p[:, 1] for p, _, _ in layers]).mean(dim=0))  # (B, S, S)
                scores.append(torch.stack([g.softmax(dim=-1)[:, 1] for _, g, _ in layers]).mean(dim=0))  # (B,)
                align = harmonic_mean(torch.stack([a for _, _, a in layers]))  # (B, S, S)
                image, pixel = fuse_few_shot(maps, scores, align, self.cfg.sigma, self.cfg.fusion)
        return Prediction(image_scores=image.float().cpu(), anomaly_maps=pixel.float().cpu())

    # ------------------------------------------------------------------ branches
    def zero_shot_branches(self, feats: Mapping[str, Any], size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per branch ``(probabilities (B, 2, S, S), image logits (B, 2))``.

        ``visual``: adapted vision vs static text; ``textual``: unadapted vision vs learned text;
        ``joint`` (``learning=joint``): adapted vision vs learned text; ``clip`` (no adapter, Table 5
        line 0): unadapted vision vs static text.
        """
        s, parts = self.switches, self._ready().parts
        tokens, glob = feats["local"], feats["global"]  # (B, 1+N, E), (B, E)
        if s.visual:
            adapted = (parts["visual"].local_mlp(tokens), parts["visual"].global_mlp(glob))
        if s.joint:
            return {"joint": self._score(*adapted, self.learned_text(), size)}
        out = {}
        if s.visual:
            out["visual"] = self._score(*adapted, self.static_text(), size)
        if s.textual:
            out["textual"] = self._score(tokens, glob, self.learned_text(), size)
        if not out and not s.pqa:
            out["clip"] = self._score(tokens, glob, self.static_text(), size)
        return out

    def _score(
        self, tokens: torch.Tensor, glob: torch.Tensor, text: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(cos/T) per patch upsampled to (B, 2, S, S), and the (B, 2) image logits cos/T."""
        import torch.nn.functional as F

        t = self.cfg.temperature
        patches = F.normalize(tokens[:, self.ctx.backbone.num_prefix_tokens :], dim=-1)  # (B, N, E)
        probs = (patches @ text.T / t).softmax(dim=-1)  # (B, N, 2)
        logits = F.normalize(glob, dim=-1) @ text.T / t  # (B, 2)
        return upsample_probs(probs, self.grid, size), logits

    def pqa_layers(
        self, feats: Mapping[str, Any], prompts: Mapping[int, torch.Tensor], size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per PQA layer: (probabilities (B, 2, S, S), image logits (B, 2), align map (B, S, S)).

        Args:
            feats: from :meth:`image_features`.
            prompts: layer → (B, M, E) normal-prompt patch tokens for each query, or (M, E) for all.
            size: the output side.
        """
        import torch.nn.functional as F

        pqa, grid, out = self._ready().parts["pqa"], self.grid, []
        for i, layer in enumerate(self.layers):
            query = feats["patches"][layer]  # (B, N, E)
            aligned, score, _ = nearest_prompt_tokens(query, prompts[layer], self.cfg.alignment)
            if self.cfg.alignment == "cosine":  # the code compares L2-normalised tokens
                query = F.normalize(query, dim=-1)
            joint = joint_features(query, aligned, self.switches.context)  # (B, N, E)
            x = joint.transpose(1, 2).reshape(joint.shape[0], -1, *grid)  # (B, E, h, w)
            seg_logits, image_logits = pqa(i, x)
            probs = upsample_maps(seg_logits.softmax(dim=1), size)  # (B, 2, S, S)
            align = upsample_maps(score.reshape(-1, 1, *grid), size)[:, 0]  # (B, S, S)
            out.append((probs, image_logits, align))
        return out

    # ------------------------------------------------------------------ features and text
    @property
    def grid(self) -> tuple[int, int]:
        """The backbone's patch grid."""
        return self._ready().ctx.backbone.grid_size

    def feature_spec(self) -> Any:
        """The frozen V-V features (``ln_post`` + ``proj``) of the PQA layers and the local layer."""
        from zsad_bench.features import FeatureSpec

        bb = self._ready().ctx.backbone
        layers = sorted({*self.layers, self.cfg.local_layer})
        opts = {"first_block": self.cfg.first_block, "norm": True, "proj": True}
        return FeatureSpec.create(bb, "vv", layers=layers, dtype=self.cfg.feature_dtype, **opts)

    def image_features(self, batch: Batch, feats: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """``local`` (B, 1+N, E) layer tokens for VA/TA, ``global`` (B, E), ``patches`` layer → (B, N, E).

        Everything comes from the frozen backbone through the feature cache (``feats``: already fetched).
        """
        from zsad_bench.heads import trainable_tokens

        ctx = self._ready().ctx
        bb = ctx.backbone
        feats = feats if feats is not None else ctx.features(batch, self.feature_spec())
        p = bb.num_prefix_tokens
        if self.cfg.global_ln_post:
            glob = feats["embed"]
        else:
            glob = feats["cls"] @ bb.model.visual.proj.detach().to(feats["cls"].device, feats["cls"].dtype)
        return {
            "local": trainable_tokens(feats[f"vv.{self.cfg.local_layer}"]),
            "global": trainable_tokens(glob),
            "patches": {layer: trainable_tokens(feats[f"vv.{layer}"][:, p:]) for layer in self.layers},
        }

    def static_text(self) -> torch.Tensor:
        """(2, E) [normal, anomalous] static text: WinCLIP's ensemble with ``class_word``, unnormalised mean."""
        if "static" not in self._text:
            from zsad_bench.prompts import prompt_list, two_class_prompts

            c = self.cfg
            normal, anomalous = two_class_prompts(
                c.class_word, prompt_list(c.normal_states), prompt_list(c.anomalous_states), prompt_list(c.templates)
            )
            self._text["static"] = self.ctx.backbone.encode_prompt_ensemble([normal, anomalous], normalize_each=False)
        return self._text["static"]

    def learned_text(self) -> torch.Tensor:
        """(2, E) L2-normalised [normal, anomalous] embeddings of the learned prompts.

        Recomputed with gradients enabled (training); otherwise memoised until a parameter changes.
        """
        import torch
        import torch.nn.functional as F

        from zsad_bench.backbones.prompts import replace_token_embeddings

        prompts, bb = self._ready().parts["textual"], self.ctx.backbone
        grad = torch.is_grad_enabled()
        versions = tuple(p._version for p in prompts.parameters())
        memo = self._text.get("learned")
        if not grad and memo is not None and memo[0] == versions:
            return memo[1]
        if "placeholder" not in self._text:
            tokens = bb.tokenize([" ".join(["X"] * self.cfg.n_ctx) + " ."])  # SOT X×n . EOT
            _check_placeholder(tokens, self.cfg.n_ctx, bb.tokenize(["X"])[0, 1])
            self._text["placeholder"] = (bb.token_embeddings(tokens).expand(2, -1, -1), bb.eot_index(tokens).expand(2))
        emb, eot = self._text["placeholder"]
        ctx_vectors = torch.stack([prompts.normal, prompts.anomalous])  # (2, n_ctx, D)
        text = F.normalize(bb.encode_token_embeddings(replace_token_embeddings(emb, ctx_vectors), eot).float(), dim=-1)
        if not grad:
            self._text["learned"] = (versions, text)
        return text

    # ------------------------------------------------------------------ training prompts
    def prompt_tokens(self, batch: Batch, feats: Mapping[str, Any]) -> dict[int, torch.Tensor]:
        """Layer → (B, N, E) patch tokens of one normal prompt image per query (drawn anew at every call).

        ``prompt_source``: ``train`` draws from the query's dataset and category in the auxiliary
        *train* split (the code); ``batch`` from the normal images of the batch's category (for
        in-memory batches); ``auto`` = ``train`` for registered datasets, else ``batch``.
        """
        import torch

        from zsad_bench.registry import DATASETS

        index: list[int | SampleRecord] = []
        for i, record in enumerate(batch.records):
            source = self.cfg.prompt_source
            if source == "auto":
                source = "train" if record.dataset and record.dataset in DATASETS else "batch"
            index.append(self._draw_train(record) if source == "train" else self._draw_batch(batch, i))
        self.prompt_draws += len(index)
        external = [r for r in index if not isinstance(r, int)]
        ext = self.image_features(batch, self._prompt_features(external)) if external else None
        out = {}
        for layer in self.layers:
            rows, k = [], 0
            for item in index:
                if isinstance(item, int):
                    rows.append(feats["patches"][layer][item])
                else:
                    rows.append(ext["patches"][layer][k])  # type: ignore[index]
                    k += 1
            out[layer] = torch.stack(rows)  # (B, N, E)
        return out

    def _draw_batch(self, batch: Batch, i: int) -> int:
        """A normal image of the batch with the query's category, another than the query when there is one."""
        import torch

        cat = batch.records[i].category
        labels = batch.labels.tolist() if batch.labels is not None else [r.label for r in batch.records]
        pool = [j for j, r in enumerate(batch.records) if r.category == cat and labels[j] == 0]
        others = [j for j in pool if j != i] or pool
        if not others:
            raise ValueError(
                f"adaptclip: no normal image of {cat!r} in the batch to pair with its queries "
                "(prompt_source=batch); use prompt_source=train with a registered auxiliary dataset"
            )
        return others[int(torch.randint(len(others), (1,)).item())]

    def _draw_train(self, record: SampleRecord) -> SampleRecord:
        import torch

        pool, _, _ = self._pool(record)
        return pool[int(torch.randint(len(pool), (1,)).item())]

    def _pool(self, record: SampleRecord) -> tuple[list[SampleRecord], Any, str]:
        """(sorted normal train records, preprocessing, prompt words) of the record's dataset and category."""
        key = (record.dataset, record.category)
        if key not in self._pools:
            self._pools[key] = self._load_pool(record)
        return self._pools[key]

    def _load_pool(self, record: SampleRecord) -> tuple[list[SampleRecord], Any, str]:
        from zsad_bench.auxdata import build_aux
        from zsad_bench.preprocess import PreprocessSpec

        name, cat = record.dataset, record.category
        entry: dict[str, Any] = {"name": name, "categories": [cat]}
        if name in self.cfg.prompt_roots:
            entry["root"] = self.cfg.prompt_roots[name]
        hint = f"set method.data_root (now {self.cfg.data_root!r}) or method.prompt_roots.{name}=<folder>"
        try:
            aux = build_aux([entry], {"data_root": self.cfg.data_root}, split="train")
        except (FileNotFoundError, ValueError) as exc:
            raise FileNotFoundError(
                f"adaptclip: no train split of {name}/{cat} for the normal prompts ({exc}); {hint}"
            ) from exc
        pool = sorted((r for r in aux.records if r.label == 0), key=lambda r: r.key)
        if not pool:
            raise ValueError(f"adaptclip: {name}/{cat} has no normal training image to use as a prompt; {hint}")
        root = aux.roots[name].resolve()
        if not record.image_path.resolve().is_relative_to(root):
            logger.warning("adaptclip: %s is not under %s, where the prompts of %s come from; %s",
                           record.image_path, root, name, hint)  # fmt: skip
        cfg = self.ctx.backbone.cfg
        spec = PreprocessSpec(cfg.input_size, cfg.mean, cfg.std, cfg.interpolation, "input")
        return pool, spec, aux.infos[name].prompt_name(cat)

    def _prompt_features(self, records: list[SampleRecord]) -> dict[str, torch.Tensor]:
        """Cached features of the prompt records (decoded only when some are missing)."""
        from zsad_bench.shots import reference_batch

        ctx, spec = self.ctx, self.feature_spec()
        if ctx.cache is not None:
            found = ctx.cache.lookup(spec, records, ctx.device)
            if found is not None:
                return found
        groups: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault((r.dataset, r.category), []).append(i)
        parts, order = [], []
        for idx in groups.values():
            _, prep, words = self._pool(records[idx[0]])
            prompt_batch = reference_batch([records[i] for i in idx], prep, words)
            prompt_batch.images = prompt_batch.images.to(ctx.device)
            parts.append(ctx.features(prompt_batch, spec))
            order += idx
        import torch

        back = torch.tensor(order).argsort()
        return {k: torch.cat([p[k] for p in parts])[back.to(parts[0][k].device)] for k in parts[0]}

    # ------------------------------------------------------------------ helpers
    def _batch_memory(self, batch: Batch) -> dict[int, torch.Tensor] | None:
        found = {c: self._memory.get(c) for c in set(batch.categories)}
        if all(m is None for m in found.values()):
            return None
        if len(found) > 1 or None in found.values():
            raise ValueError(f"adaptclip: a batch mixes categories {sorted(found)}; references are per category")
        return next(iter(found.values()))

    def _ready(self) -> AdaptCLIP:
        if self.parts is None or self.ctx is None:
            raise RuntimeError("adaptclip: call setup(ctx) first")
        return self


def _check_placeholder(tokens: torch.Tensor, n_ctx: int, x_id: Any) -> None:
    """Positions 1..n_ctx of the placeholder sentence hold "X" (one token each), position n_ctx + 1 does not."""
    row = tokens[0, 1 : n_ctx + 2]
    if not bool((row[:n_ctx] == x_id).all()) or bool(row[n_ctx] == x_id):
        raise ValueError(f"the placeholder 'X' does not occupy exactly positions 1..{n_ctx}: {tokens[0, : n_ctx + 3]}")


_VA_NAMES = {"local_adater": "local_mlp", "global_adapter": "global_mlp"}  # the official spelling "adater"
_VA_LAYERS = {"0": "down", "1": "norm", "3": "up"}  # fc.<index> of the official ResMLP
_PQA_HEADS = {"local_adapter": "seg", "global_adapter": "image"}


def convert_official_checkpoint(
    checkpoint: Mapping[str, Mapping[str, torch.Tensor]], shared: bool = True
) -> dict[str, torch.Tensor]:
    """Our :meth:`AdaptCLIP.load_learnable_state` names for a gaobb/AdaptCLIP checkpoint.

    Args:
        checkpoint: the official file's ``{"textual_learner", "visual_learner", "pq_learner": state_dict}``
            (any of them may be missing).
        shared: ``head_sharing="shared"``: the official head is one module repeated per layer, so its
            checkpoint repeats the tensors under ``.0``–``.3``; as ``load_state_dict`` does there, the
            last index wins. ``False`` keeps one head per layer (``head_sharing="per_layer"``).

    Returns:
        ``{our key: tensor}``; the text placeholders' buffers (rebuilt by us) are dropped.

    Raises:
        KeyError: a tensor name the converter does not know (the file is not an AdaptCLIP checkpoint).
    """
    out: dict[str, torch.Tensor] = {}
    best: dict[str, int] = {}
    for group, state in checkpoint.items():
        for name, value in state.items():
            head, _, rest = name.partition(".")
            if group == "textual_learner":
                if name in ("ctx_pos", "ctx_neg"):  # (1, 1, n_ctx, D): pos = normal, neg = anomalous
                    key = "textual.normal" if name == "ctx_pos" else "textual.anomalous"
                    out[key] = value.reshape(-1, value.shape[-1])
                elif not name.startswith(("token_", "tokenized_")):
                    raise KeyError(f"convert_official_checkpoint: unknown textual_learner tensor {name!r}")
            elif group == "visual_learner" and head in _VA_NAMES and rest.split(".")[1] in _VA_LAYERS:
                _, index, tail = rest.split(".", 2)  # fc.<index>.<tail>
                out[f"visual.{_VA_NAMES[head]}.{_VA_LAYERS[index]}.{tail}"] = value
            elif group == "pq_learner" and head == "sharebn":
                out[f"pqa.norms.{rest}"] = value
            elif group == "pq_learner" and head in _PQA_HEADS:
                layer, tail = rest.split(".", 1)
                key = f"pqa.{_PQA_HEADS[head]}.{0 if shared else layer}.{tail}"
                if shared and best.get(key, -1) > int(layer):
                    continue
                out[key], best[key] = value, int(layer)
            else:
                raise KeyError(f"convert_official_checkpoint: unknown tensor {group}.{name}")
    return out
