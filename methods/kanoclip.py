"""KAnoCLIP: knowledge-driven prompt learning, CLIP-VV, Bi-CMCI and the Conv-Adapter (our interpretation).

Paper: Li, Zhou, Kong, Qi, Xue, "KAnoCLIP: Zero-Shot Anomaly Detection through Knowledge-Driven
Prompt Learning and Enhanced Cross-Modal Integration", arXiv 2501.03786.
Official code: none exists; this is the first public implementation.
``docs/methods/kanoclip.md`` lists what the paper leaves open; every such choice is a config value, and
``docs/methods/kanoclip.md`` has the table "the paper says / we chose / why / switch".

- **KnPL** (Eq. 1–3): learnable prefixes of K = 12 word embeddings, one for the normal and one
  for the abnormal prompts, before the state word ("normal", "perfect" / "abnormal", "defective")
  and the class name: "X×K normal bottle."; F_n, F_a = normalised means of the CLIP text features
  of the normal / abnormal sentences. L_KD (:func:`~zsad_bench.methods._kanoclip_nn.kd_loss`)
  pulls the abnormal mean towards the mean of the knowledge descriptions' features and pushes
  the normal one away (:mod:`zsad_bench.knowledge`: shipped file, LLM-generated files, VQA cache).
- **CLIP-VV** (Eq. 4–8): the backbone's V-V dual path (``vv_tokens``) from block ``first_block``;
  patch tokens of the four stages (``ln_post`` + ``proj``); the image-level token S_l[0].
- **Bi-CMCI** (Eq. 9–10): per stage, bidirectional cross-attention, self-attention and
  deformable self-attention → per-patch logits vs [F_n, F_a]; stage probabilities averaged
  (Norm to [0, 1]), upsampled; M = G_σ(M^a + 1 − M^n)/2.
- **Conv-Adapter** (Eq. 11) on the global feature; global score Eq. 12 (``global_score``: the
  paper's sum p + max(M) is not a probability for its BCE (Eq. 14); we default to the mean).
- **Loss** (Eq. 13–15): α L_KD + β BCE(S_global, label) + γ [focal(M) + dice(M^n, 1 − G) + dice(M^a, G)].
- **Ablations** (Table 3): ``knpl``, ``clip_vv``, ``bicmci``, ``conv_adapter`` switches, or
  ``table3_row`` = 1..5 for the paper's incremental rows.
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
    from zsad_bench.knowledge import KnowledgeBase, VQACache
    from zsad_bench.train import TrainRecipe

__all__ = ["MODULES", "KAnoCLIP", "KAnoCLIPConfig", "resolve_switches"]

logger = logging.getLogger(__name__)
MODULES = ("knpl", "clip_vv", "bicmci", "conv_adapter")  # Table 3's column order
GLOBAL_SCORES = ("mean", "prob_plus_max", "prob")
MAP_NORMS = ("mean", "logits")


@dataclass
class KAnoCLIPConfig:
    """Knobs; paper values where it gives them, else our reasoned defaults (docs/methods/kanoclip.md)."""

    name: str = "kanoclip"
    # --- ablation switches (Table 3); table3_row 1..5 overrides them with the paper's incremental rows
    knpl: bool = True
    clip_vv: bool = True
    bicmci: bool = True
    conv_adapter: bool = True
    table3_row: int | None = None
    # --- KnPL (Eq. 1-3)
    n_ctx: int = 12  # K, the paper's learnable prefix length
    normal_states: list[str] = field(default_factory=lambda: ["normal", "perfect"])
    abnormal_states: list[str] = field(default_factory=lambda: ["abnormal", "defective"])
    handcrafted_template: str = "a photo of a {state} {cls}."  # prompts when knpl is off
    prompt_init_std: float = 0.02
    knowledge_files: list[str] = field(default_factory=list)  # searched before the shipped files
    knowledge_shipped: bool = True
    knowledge_per_class: int = 5  # the paper's n
    knowledge_fallback: bool = True  # generic descriptions for a class no file covers
    vqa_cache: str | None = None  # folder of per-image VQA descriptions (zsad-bench knowledge vqa)
    vqa_model: str = ""  # the model name those descriptions were cached under
    # --- CLIP-VV (Eq. 4-8)
    layers: list[int] = field(default_factory=lambda: [6, 12, 18, 24])  # the four stages
    first_block: int = 6  # first V-V block (AnomalyCLIP's DPAM_layer=20 on 24 blocks)
    global_token: str = "vv"  # vv: S_l[0] of the V-V stream (the paper) | ori: the standard CLIP embedding
    # --- Bi-CMCI (Eq. 9-10)
    bicmci_dim: int = 128
    bicmci_heads: int = 4
    bicmci_depth: int = 1
    deform_kernel: int = 3
    mlp_ratio: float = 2.0
    map_norm: str = "mean"  # mean: average of the stage probabilities | logits: softmax of the mean logits
    temperature: float = 0.07
    sigma: float = 4.0
    # --- Conv-Adapter (Eq. 11-12)
    adapter_reduction: int = 4  # d_bottle = E / reduction
    adapter_residual: bool = False
    global_score: str = "mean"  # mean: (p + max M)/2 | prob_plus_max: BCE on p, score p + max M | prob: p only
    # --- loss weights (Eq. 13)
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    feature_dtype: str | None = None
    # --- training recipe: AnomalyCLIP's (its train.sh), the paper says it follows it
    epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    train_seed: int | None = 111


def resolve_switches(cfg: KAnoCLIPConfig) -> dict[str, bool]:
    """The module switches: ``table3_row`` r ∈ 1..5 enables the first r − 1 of :data:`MODULES`.

    Example:
        >>> resolve_switches(KAnoCLIPConfig(table3_row=2))
        {'knpl': True, 'clip_vv': False, 'bicmci': False, 'conv_adapter': False}
    """
    row = cfg.table3_row
    if row is None:
        return {m: bool(getattr(cfg, m)) for m in MODULES}
    if not 1 <= int(row) <= len(MODULES) + 1:
        raise ValueError(f"kanoclip: table3_row={row} must be 1..{len(MODULES) + 1} (or null)")
    return {m: i < int(row) - 1 for i, m in enumerate(MODULES)}


@register_method(
    "kanoclip",
    title="KAnoCLIP (knowledge-driven prompts, CLIP-VV, Bi-CMCI, Conv-Adapter); our interpretation",
    paper="arXiv 2025",
    arxiv="2501.03786",
    trainable=True,
    shots=(0,),
    backbone="clip_vit_l14_336",
    input_size=518,
    summary="learnable prompts guided by LLM/VQA knowledge; Bi-CMCI on 4 V-V stages; Conv-Adapter",
)
class KAnoCLIP(Method):
    """Frozen CLIP (V-V path) + knowledge-guided learnable prompts + Bi-CMCI + Conv-Adapter."""

    Config = KAnoCLIPConfig
    trainable = True
    inference_keys = ("sigma", "feature_dtype")

    def __init__(self, cfg: KAnoCLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        c = self.cfg
        self.switches = resolve_switches(c)
        if c.global_score not in GLOBAL_SCORES:
            raise ValueError(f"kanoclip: global_score={c.global_score!r} is not one of {GLOBAL_SCORES}")
        if c.map_norm not in MAP_NORMS:
            raise ValueError(f"kanoclip: map_norm={c.map_norm!r} is not one of {MAP_NORMS}")
        if c.global_token not in ("vv", "ori"):
            raise ValueError(f"kanoclip: global_token={c.global_token!r} must be 'vv' or 'ori'")
        if not c.layers or not c.normal_states or not c.abnormal_states or c.n_ctx < 1:
            raise ValueError("kanoclip: layers, normal_states, abnormal_states must be non-empty and n_ctx >= 1")
        if self.switches["clip_vv"] and any(0 < layer < c.first_block for layer in c.layers):
            raise ValueError(f"kanoclip: stages {c.layers} must be V-V layers (>= first_block {c.first_block})")
        self.net: nn.Module | None = None
        self.knowledge: KnowledgeBase | None = None
        self.vqa: VQACache | None = None
        self._sentences: dict[str, dict[str, torch.Tensor]] = {}
        self._fixed_text: dict[str, torch.Tensor] = {}
        self._knowledge_feats: dict[str, torch.Tensor] = {}
        self._text_memo: tuple[tuple[int, ...], dict[str, torch.Tensor]] | None = None
        self._vqa_used = 0

    # ------------------------------------------------------------------ setup and training contract
    def setup(self, ctx: Context) -> None:
        """Build the learnable modules (seeded by ``train_seed``, else ``ctx.seed``) and the knowledge base."""
        import torch

        super().setup(ctx)
        bb = ctx.backbone
        if not hasattr(bb, "vv_tokens") or not hasattr(bb, "encode_token_embeddings"):
            raise ValueError(f"kanoclip needs a CLIP backbone (backbone=clip_vit_l14_336), got {bb.name}")
        bb.resolve_layers([*self.cfg.layers, self.cfg.first_block])
        seed = self.cfg.train_seed if self.cfg.train_seed is not None else ctx.seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.net = self._build(bb.text_width, int(bb.embed_dim)).to(ctx.device).eval()
        self.knowledge, self.vqa = self._knowledge_sources()
        self._sentences, self._fixed_text, self._knowledge_feats, self._text_memo = {}, {}, {}, None

    def _build(self, width: int, embed: int) -> nn.Module:
        from torch import nn

        from zsad_bench.methods._kanoclip_nn import BiCMCIStage, ConvAdapter, LinearStage

        c, net = self.cfg, nn.Module()
        if self.switches["knpl"]:
            std = c.prompt_init_std
            net.prompts = nn.ParameterDict(
                {"ctx_normal": _normal(c.n_ctx, width, std), "ctx_abnormal": _normal(c.n_ctx, width, std)}
            )
        if self.switches["bicmci"]:
            stages = {
                str(x): BiCMCIStage(embed, c.bicmci_dim, c.bicmci_heads, c.bicmci_depth, c.deform_kernel, c.mlp_ratio)
                for x in c.layers
            }
        else:
            stages = {str(x): LinearStage(embed) for x in c.layers}
        net.stages = nn.ModuleDict(stages)
        if self.switches["conv_adapter"]:
            net.adapter = ConvAdapter(embed, max(1, embed // c.adapter_reduction), c.adapter_residual)
        return net

    def _knowledge_sources(self) -> tuple[KnowledgeBase | None, VQACache | None]:
        from zsad_bench.knowledge import KnowledgeBase, KnowledgeFile, VQACache, shipped_knowledge

        c = self.cfg
        if not self.switches["knpl"]:
            return None, None
        files = [KnowledgeFile.load(p) for p in c.knowledge_files]
        if c.knowledge_shipped:
            files.append(shipped_knowledge())
        kb = KnowledgeBase(files, generic_fallback=c.knowledge_fallback, per_class=c.knowledge_per_class)
        vqa = None
        if c.vqa_cache:
            if not Path(c.vqa_cache).is_dir():
                raise FileNotFoundError(f"kanoclip: vqa_cache {c.vqa_cache} is not a folder (zsad-bench knowledge vqa)")
            vqa = VQACache(Path(c.vqa_cache), c.vqa_model)
        return kb, vqa

    def training_identity(self) -> dict[str, str]:
        """Digests of the training inputs the config only names: knowledge texts and VQA cache files."""
        from zsad_bench.checkpoints import config_hash

        out = {}
        if self.knowledge is not None:
            out["knowledge"] = config_hash([(f.source, f.descriptions) for f in self.knowledge.files])
        if self.vqa is not None:
            files = sorted(p for p in Path(self.cfg.vqa_cache).rglob("*") if p.is_file())
            out["vqa_cache"] = config_hash([(p.name, p.read_text(errors="replace")) for p in files])
        return out

    def parameter_counts(self) -> dict[str, int]:
        """Learnable parameters per module (``knpl``, ``bicmci`` or its linear stand-in, ``conv_adapter``)."""
        net = self._ready().net
        parts = (("knpl", "prompts"), ("bicmci", "stages"), ("conv_adapter", "adapter"))
        count = {k: sum(p.numel() for p in getattr(net, a).parameters()) if hasattr(net, a) else 0 for k, a in parts}
        count["total"] = sum(count.values())
        return count

    def parameters_to_train(self) -> list[Any]:
        """Prompt prefixes, Bi-CMCI stages (or their linear stand-ins), Conv-Adapter."""
        return list(self._ready().net.parameters())

    def train_recipe(self, aux: Sequence[str]) -> TrainRecipe:
        """AnomalyCLIP's recipe (the paper follows its protocol): Adam(1e-3, 0.5/0.999), batch 8, 15 epochs."""
        from zsad_bench.train import TrainRecipe

        c = self.cfg
        return TrainRecipe(
            epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, optimizer="adam", betas=tuple(c.betas), seed=c.train_seed
        )

    def set_training(self, mode: bool) -> None:
        """Train/eval mode of the learnable modules."""
        self._ready().net.train(mode)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """Every learnable tensor (``prompts.*``, ``stages.<layer>.*``, ``adapter.*``)."""
        return {k: v.detach().clone() for k, v in self._ready().net.state_dict().items()}

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`learnable_state` returned (strict)."""
        self._ready().net.load_state_dict(dict(state))
        self._text_memo = None

    def training_report(self) -> dict[str, Any]:
        """The module switches, parameter counts and the knowledge sources used."""
        know = self.knowledge.report() if self.knowledge is not None else {"sources": ["none (knpl off)"]}
        if self.vqa is not None:
            know["vqa_descriptions_used"] = self._vqa_used
            know["sources"] = sorted({*know["sources"], "vqa"}) if self._vqa_used else know["sources"]
        return {"modules": dict(self.switches), "parameters": self.parameter_counts(), "knowledge": know}

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """α L_KD + β BCE(S_global) + γ (focal + dice + dice of the normal channel), named terms."""
        from zsad_bench.heads import segmentation_losses

        if batch.masks is None or batch.labels is None:
            raise ValueError("kanoclip training needs labels and masks in the auxiliary batches")
        c = self.cfg
        text, sentence_feats = self.text_features(batch.class_names, with_sentences=True)  # (B, 2, E)
        probs, global_prob = self._forward(batch, text)  # (B, 2, S, S), (B,)
        terms = {k: c.gamma * v for k, v in segmentation_losses(probs, batch.masks.to(probs.device), True).items()}
        score = global_prob
        if c.global_score == "mean":
            score = (global_prob + _anomaly_map(probs).flatten(1).amax(dim=1)) / 2.0
        label = batch.labels.to(score.device).float()
        terms["global_bce"] = c.beta * _bce(score, label)
        if self.switches["knpl"]:
            terms["kd"] = c.alpha * self._kd_term(batch, sentence_feats)
        return terms

    # ------------------------------------------------------------------ inference
    def predict(self, batch: Batch) -> Prediction:
        """M = G_σ(M^a + 1 − M^n)/2 (Eq. 10) and the global score of Eq. 12 (``global_score``)."""
        import torch

        from zsad_bench.heads import gaussian_smooth

        with torch.no_grad():
            text = self.text_features(batch.class_names)
            probs, global_prob = self._forward(batch, text)
            maps = gaussian_smooth(_anomaly_map(probs), self.cfg.sigma)  # (B, S, S)
            peak = maps.flatten(1).amax(dim=1)
            p = global_prob.float().cpu()
            scores = {"mean": (p + peak) / 2.0, "prob_plus_max": p + peak, "prob": p}[self.cfg.global_score]
        return Prediction(image_scores=scores.float(), anomaly_maps=maps.float())

    def stage_logits(self, batch: Batch, text: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per stage the (B, N, 2) Bi-CMCI (or linear) logits of the patches against [F_n, F_a]."""
        return self._stage_logits(self.image_features(batch)[0], text)

    def _stage_logits(self, patches: Mapping[int, torch.Tensor], text: torch.Tensor) -> dict[int, torch.Tensor]:
        net, grid = self._ready().net, self.ctx.backbone.grid_size
        return {x: net.stages[str(x)](patches[x], text, grid, self.cfg.temperature) for x in self.cfg.layers}

    def _forward(self, batch: Batch, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, S, S) normalised [M^n, M^a] (Eq. 9) and (B,) softmax global probability (Eq. 12's first term)."""
        import torch
        import torch.nn.functional as F

        from zsad_bench.methods.anomalyclip import probability_maps

        patches, global_feat = self.image_features(batch)
        logits = list(self._stage_logits(patches, text).values())  # each (B, N, 2)
        if self.cfg.map_norm == "mean":
            probs = torch.stack([x.softmax(dim=-1) for x in logits]).mean(dim=0)  # (B, N, 2)
        else:
            probs = torch.stack(logits).mean(dim=0).softmax(dim=-1)
        maps = probability_maps(probs, self.ctx.backbone.grid_size, batch.images.shape[-1])
        net = self._ready().net
        g = net.adapter(global_feat) if hasattr(net, "adapter") else global_feat  # (B, E)
        cos = torch.einsum("bc,bkc->bk", F.normalize(g, dim=-1), text) / self.cfg.temperature  # (B, 2)
        return maps, cos.softmax(dim=-1)[:, 1]

    # ------------------------------------------------------------------ features
    def feature_spec(self) -> Any:
        """The frozen image features: V-V (``clip_vv``) or plain tokens of the stages, ``ln_post`` + ``proj``."""
        from zsad_bench.features import FeatureSpec

        bb, c = self._ready().ctx.backbone, self.cfg
        if self.switches["clip_vv"]:
            return FeatureSpec.create(
                bb, "vv", layers=c.layers, dtype=c.feature_dtype, first_block=c.first_block, norm=True, proj=True
            )
        return FeatureSpec.create(bb, "tokens", layers=c.layers, dtype=c.feature_dtype, norm=True, proj=True)

    def image_features(self, batch: Batch) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Per stage (B, N, E) patch tokens (CLS dropped) and the (B, E) global feature I_G."""
        from zsad_bench.heads import frozen_features, trainable_tokens

        ctx, c = self._ready().ctx, self.cfg
        feats = frozen_features(ctx, batch, self.feature_spec())
        kind = "vv" if self.switches["clip_vv"] else "tokens"
        p = ctx.backbone.num_prefix_tokens
        dev = ctx.device
        patches = {x: trainable_tokens(feats[f"{kind}.{x}"][:, p:]).to(dev) for x in c.layers}
        if self.switches["clip_vv"] and c.global_token == "vv":
            return patches, trainable_tokens(feats[f"vv.{c.layers[-1]}"][:, 0]).to(dev)  # S_l[0] (Eq. 8)
        return patches, trainable_tokens(feats["embed"]).to(dev)

    def text_features(self, class_names: Sequence[str], with_sentences: bool = False) -> Any:
        """(B, 2, E) normalised [F_n, F_a] per image.

        With ``with_sentences`` also, per class, the (S, E) normalised features of its normal then
        abnormal sentences (for L_KD): returns ``(text, {class: features})``.
        """
        import torch

        names = sorted(set(class_names))
        if not self.switches["knpl"]:
            per = {n: self._handcrafted(n) for n in names}
            text = torch.stack([per[n] for n in class_names])
            return (text, {}) if with_sentences else text
        grad = torch.is_grad_enabled()
        versions = tuple(p._version for p in self._ready().net.prompts.values())
        fresh = grad or with_sentences  # L_KD needs every class's sentence features
        memo = self._text_memo[1] if (self._text_memo and self._text_memo[0] == versions and not fresh) else {}
        sentences: dict[str, torch.Tensor] = {}
        per: dict[str, torch.Tensor] = {}
        for n in names:
            if n in memo:
                per[n] = memo[n]
                continue
            feats = self._learned_sentences(n)  # (S, E)
            k = len(self.cfg.normal_states)
            per[n] = _state_means(feats, k)
            sentences[n] = feats
        if not grad:
            self._text_memo = (versions, {**memo, **per})
        text = torch.stack([per[n] for n in class_names])  # (B, 2, E)
        return (text, sentences) if with_sentences else text

    def _learned_sentences(self, cls: str) -> torch.Tensor:
        """(S, E) normalised features of "X×K <state> <cls>." with the learned prefixes (normal, then abnormal)."""
        import torch
        import torch.nn.functional as F

        from zsad_bench.backbones.prompts import replace_token_embeddings

        bb, c, prompts = self.ctx.backbone, self.cfg, self._ready().net.prompts
        if cls not in self._sentences:
            states = [*c.normal_states, *c.abnormal_states]
            prefix = " ".join(["X"] * c.n_ctx)
            tokens = bb.tokenize([f"{prefix} {s} {cls}." for s in states])
            self._sentences[cls] = {"embeddings": bb.token_embeddings(tokens), "eot": bb.eot_index(tokens)}
        ph = self._sentences[cls]
        k, s = len(c.normal_states), len(c.normal_states) + len(c.abnormal_states)
        ctx_vectors = torch.stack([prompts["ctx_normal"] if i < k else prompts["ctx_abnormal"] for i in range(s)])
        emb = replace_token_embeddings(ph["embeddings"], ctx_vectors, start=1)  # (S, L, D)
        return F.normalize(bb.encode_token_embeddings(emb, ph["eot"]).float(), dim=-1)

    def _handcrafted(self, cls: str) -> torch.Tensor:
        """(2, E) fixed ensembles of the hand-written template (KnPL off)."""
        if cls not in self._fixed_text:
            c, bb = self.cfg, self.ctx.backbone
            groups = [[c.handcrafted_template.format(state=s, cls=cls) for s in states]
                      for states in (c.normal_states, c.abnormal_states)]  # fmt: skip
            self._fixed_text[cls] = bb.encode_prompt_ensemble(groups).float().to(self.ctx.device)
        return self._fixed_text[cls]

    def _kd_term(self, batch: Batch, sentences: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L_KD (Eq. 2) per class of the batch, averaged; w^k over the class's LLM and the images' VQA descriptions."""
        import torch

        from zsad_bench.methods._kanoclip_nn import kd_loss

        k = len(self.cfg.normal_states)
        vqa = self._vqa_features(batch)
        losses = [kd_loss(self.batch_knowledge(batch, cls, vqa), f[:k], f[k:]) for cls, f in sentences.items()]
        return torch.stack(losses).mean()

    def batch_knowledge(self, batch: Batch, cls: str, vqa: Sequence[Any] | None = None) -> torch.Tensor:
        """(N + M, E) knowledge features of ``cls`` for this batch (Eq. 3).

        The N descriptions of the knowledge files and the M cached VQA descriptions of the batch's
        images of that class.
        """
        import torch

        vqa = self._vqa_features(batch) if vqa is None else vqa
        extra = [f for f, n in zip(vqa, batch.class_names, strict=True) if n == cls and f is not None]
        know = self.knowledge_features(cls)
        return torch.cat([know, torch.stack(extra)]) if extra else know

    def knowledge_features(self, cls: str) -> torch.Tensor:
        """(n, E) normalised frozen CLIP text features of the class's knowledge descriptions (Eq. 3)."""
        import torch

        if cls not in self._knowledge_feats:
            desc = self._ready().knowledge.descriptions(cls)
            with torch.no_grad():
                feats = self.ctx.backbone.encode_text(desc, normalize=True).float()
            self._knowledge_feats[cls] = feats.to(self.ctx.device)
        return self._knowledge_feats[cls]

    def _vqa_features(self, batch: Batch) -> list[torch.Tensor | None]:
        """Per image the (E,) feature of its cached VQA description, or None."""
        import torch

        if self.vqa is None:
            return [None] * len(batch)
        found = self.vqa.lookup([r.image_path for r in batch.records], batch.class_names)
        texts = [t for t in found if t]
        if not texts:
            return [None] * len(batch)
        self._vqa_used += len(texts)
        with torch.no_grad():
            feats = iter(self.ctx.backbone.encode_text(texts, normalize=True).float().to(self.ctx.device))
        return [next(feats) if t else None for t in found]

    def _ready(self) -> KAnoCLIP:
        if self.net is None or self.ctx is None:
            raise RuntimeError("kanoclip: call setup(ctx) first")
        return self


def _normal(n: int, width: int, std: float) -> nn.Parameter:
    """An (n, width) parameter drawn from N(0, std²) (the global RNG, seeded by the caller)."""
    import torch
    from torch import nn

    return nn.Parameter(torch.randn(n, width) * std)


def _state_means(feats: torch.Tensor, k: int) -> torch.Tensor:
    """(S, E) normalised sentence features → (2, E) [F_n, F_a]: normalised means of the first k and the rest."""
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.stack([feats[:k].mean(dim=0), feats[k:].mean(dim=0)]), dim=-1)


def _bce(prob: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Binary cross-entropy of probabilities (B,) in fp32 (``F.binary_cross_entropy`` refuses autocast)."""
    p = prob.float().clamp(eps, 1.0 - eps)
    return -(label * p.log() + (1.0 - label) * (1.0 - p).log()).mean()


def _anomaly_map(probs: torch.Tensor) -> torch.Tensor:
    """(M^a + 1 − M^n)/2 of (B, 2, S, S) [M^n, M^a] → (B, S, S) (Eq. 10 before G_σ)."""
    return (probs[:, 1] + 1.0 - probs[:, 0]) / 2.0
