"""AdaCLIP: hybrid learnable prompts inside both CLIP encoders and hybrid semantic fusion.

Paper: Cao, Zhang, Frittoli, Cheng, Shen, Boracchi, "AdaCLIP: Adapting CLIP with Hybrid Learnable
Prompts for Zero-Shot Anomaly Detection", ECCV 2024, arXiv 2407.15795.
Official code: https://github.com/caoyunkang/AdaCLIP @ e27ee32b (MIT): ``method/adaclip.py``,
``method/trainer.py``, ``train.py``, ``loss.py``.
Independent implementation; no reference code is copied. docs/methods/adaclip.md lists, side by
side, what the paper says, what the code does and the switch for each difference.

What it does (the official code, our defaults):

- backbone: OpenAI CLIP ViT-L/14@336 at 518 (37×37 patches), positional embedding resized
  bicubically without antialiasing, **GELU** as the code ran it (``backbone.activation=quick_gelu``);
- prompts (``prompts=hybrid``): J = 4 static prompts of M = 5 tokens per encoder, N(0, 0.02);
  a dynamic prompt generator per encoder (one ``Linear`` per prompt token) maps the frozen,
  un-prompted image embedding ``ln_post(CLS) @ proj`` (read through the feature cache) to M tokens;
  hybrid = static[j] + dynamic. Image encoder: appended after the patch tokens before block 1,
  replaced before blocks 2..J, propagated after, never reported; text encoder: positions 1..M
  (right after SOT) overwritten before blocks 2..J, block 1 unprompted. Prompt values are rounded
  to fp16 as the code's ``.half()`` casts do (``round_prompts_fp16``);
- text: 7 normal and 5 abnormal states × the first four APRIL-GAN templates per class, each
  sentence L2-normalised, averaged per polarity, re-normalised; class words = folder names with
  ``-`` → space; with dynamic text prompts every image gets its own text embeddings;
- projection: one ``Linear(width → E)`` per output layer (6/12/18/24, raw residual stream, CLS
  dropped) and ``Linear(E → E)`` on the prompted image embedding, all L2-normalised;
- maps: per layer ``100 · token · text`` logits, bilinear upsampling with ``align_corners=True``,
  mean over layers, softmax, ``(p_anomalous + 1 − p_normal) / 2``, Gaussian σ = 4;
- image score: HSF as the code does it (k-means over the top-5K patches of the mean-logit map,
  mean of all K centroids), ``softmax(100 · normalise(0.2 · HSF + 0.8 · CLS) · text)[anomalous]``;
- training (:meth:`AdaCLIP.training_step` through the shared trainer): focal on the image
  probabilities + Σ_layers focal + dice(anomalous, mask) + dice(normal, 1 − mask); AdamW lr 0.01,
  betas (0.5, 0.999), weight decay 0.01, 5 epochs, batch 1, seed 111.

Differences from the official code, each with its switch:

- any batch size gives the batch-1 numbers (the code supports batch size 1 only): every image's
  dynamic prompts go into its own text encoding;
- k-means is seeded from the run's seed (the code leaves ``random_state=None``); a parity test
  may inject the labels through ``ctx.hooks["adaclip.kmeans"]`` (see :func:`kmeans_labels`);
- at batch size 1 the code's dice loss is computed per image *row* (``gt.squeeze()`` drops the
  batch axis, so ``BinaryDiceLoss`` sees H "samples"): ``dice=row`` reproduces it for any batch,
  ``dice=image`` is the per-image dice the loss was written for.

Paper variants, each a switch: ``hsf=paper`` (centroid of the cluster with the highest mean
anomaly score, clustering all patches of the layer-averaged tokens), ``no_hsf_score=max``
(without HSF, the map's maximum instead of the CLS score), ``insertion=paper`` (text prompts
inserted after SOT at every layer j ≤ J, words kept). Ablations: ``prompts`` none / static /
dynamic / hybrid (Table 3), ``prompt_encoders`` image / text / both (appendix Table 2),
``hsf=none`` and ``k_clusters`` (Table 4, appendix Table 3), ``projection=frozen`` (CLIP's own
``ln_post`` + ``proj``, appendix Table 5), ``backbone=clip_vit_b16`` (Table 6).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zsad_bench.prompts import prompt_list, two_class_prompts
from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from zsad_bench.context import Context
    from zsad_bench.train import TrainRecipe

__all__ = ["AdaCLIP", "AdaCLIPConfig", "from_official_state_dict", "hsf_code", "hsf_paper", "kmeans_labels"]

_CARD = {
    "title": "AdaCLIP (hybrid learnable prompts, hybrid semantic fusion)",
    "paper": "ECCV 2024",
    "arxiv": "2407.15795",
    "code": "https://github.com/caoyunkang/AdaCLIP",
    "commit": "e27ee32b",
    "license": "MIT",
    "trainable": True,
    "shots": (0,),
    "backbone": "clip_vit_l14_336",
    "input_size": 518,
    "summary": "static + dynamic prompts in both CLIP encoders, per-layer projections, k-means image fusion",
}
_CHOICES = {
    "prompts": ("hybrid", "static", "dynamic", "none"),
    "prompt_encoders": ("both", "image", "text"),
    "insertion": ("code", "paper"),
    "projection": ("learnable", "frozen"),
    "hsf": ("code", "paper", "none"),
    "no_hsf_score": ("cls", "max"),
    "class_names": ("folder", "prompt"),
    "dice": ("row", "image"),
    "select_epoch": ("last", "best_val"),
}
KMEANS_HOOK = "adaclip.kmeans"


@dataclass
class AdaCLIPConfig:
    """Knobs; defaults are the official code's values (``train.py`` arguments, ``method/adaclip.py``)."""

    name: str = "adaclip"
    layers: list[int] | None = None  # None: multiples of depth // 4 as train.py (ViT-L 6/12/18/24, ViT-B 3/6/9/12)
    # --- prompts (paper §4.2-4.3; method/adaclip.py PromptLayer)
    prompts: str = "hybrid"  # hybrid (V4) | static (V2) | dynamic (V3) | none (V1): paper Table 3
    prompt_encoders: str = "both"  # both | image | text: appendix Table 2 (--prompting_branch VL)
    prompt_depth: int = 4  # J (--prompting_depth)
    prompt_length: int = 5  # M (--prompting_length)
    prompt_init_std: float = 0.02  # nn.init.normal_(std=0.02)
    insertion: str = "code"  # code (append/replace vision, overwrite text 2..J) | paper (Eq. 1-2, text inserted)
    round_prompts_fp16: bool = True  # the code casts prompts with .half() before inserting them
    # --- text (TextEmbebddingLayer)
    templates: str = "adaclip_templates"  # the first 4 APRIL-GAN templates
    normal_states: str = "april_gan_normal_states"  # 7
    abnormal_states: str = "april_gan_abnormal_states"  # 5
    class_names: str = "folder"  # folder (names as on disk, "-" -> " ") | prompt (the dataset's prompt words)
    # --- projection and scoring (ProjectLayer, visual_text_similarity)
    projection: str = "learnable"  # learnable | frozen (CLIP's ln_post + proj): appendix Table 5
    logit_scale: float = 100.0
    align_corners: bool = True
    sigma: float = 4.0  # gaussian_filter on the test maps (trainer.py evaluation)
    # --- hybrid semantic fusion (HybridSemanticFusion; paper appendix §2.2)
    hsf: str = "code"  # code (mean of all centroids of the top patches) | paper (most anomalous cluster) | none
    k_clusters: int = 20  # K: appendix Table 3 sweeps 10, 20, 40, 80
    hsf_topk_factor: int = 5  # code: the top 5·K patches are clustered
    hsf_alpha: float = 0.2  # image feature = normalise(alpha · HSF + (1 - alpha) · CLS)
    no_hsf_score: str = "cls"  # without HSF: cls (code) | max of the map (paper §5.3)
    # --- training recipe (train.py, trainer.py); train.* overrides win
    epochs: int = 5
    batch_size: int = 1  # the code refuses any other; ours gives the same per-image numbers at any size
    lr: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.01  # AdamW's default, which the code keeps
    train_seed: int | None = 111  # setup_seed(111); None: the run's seed
    dice: str = "row"  # row (the code at batch size 1) | image
    mosaic: dict[str, float] = field(default_factory=lambda: {"mvtec_ad": 0.2})  # dataset/mvtec.py aug_rate
    # --- auxiliary data: named training sets (conf/method/adaclip.yaml resolves ``aux``)
    training_set: str = "code"  # code (README/train.sh) | paper (appendix §1) | any key of training_sets
    training_sets: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> test dataset -> aux
    aux: str = ""  # the auxiliary datasets for this run's test dataset ("" : the trainer's train.aux)
    # --- epoch selection (train.py keeps the best pixel F1-max on another dataset's test split)
    select_epoch: str = "last"  # last | best_val (refused when val_dataset is also tested)
    val_dataset: str = "visa"
    val_max_per_category: int | None = None  # None: the whole test split of val_dataset
    data_root: str = "data"  # where val_dataset lives (the yaml fills in paths.data_root)


@register_method("adaclip", **_CARD)
class AdaCLIP(Method):
    """Frozen CLIP with hybrid prompts in both encoders, per-layer projections and HSF."""

    Config = AdaCLIPConfig
    trainable = True
    # knobs that do not change the trained weights (the trainer leaves them out of the checkpoint hash)
    inference_keys = ("sigma", "no_hsf_score", "training_set", "training_sets", "aux", "data_root")

    def __init__(self, cfg: AdaCLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        c = self.cfg
        for key, allowed in _CHOICES.items():
            if getattr(c, key) not in allowed:
                raise ValueError(
                    f"adaclip: {key}={getattr(c, key)!r} is not one of {allowed} (conf/method/adaclip.yaml)"
                )
        for key in ("templates", "normal_states", "abnormal_states"):
            prompt_list(getattr(c, key))  # fail at build time on an unknown list name
        if c.prompt_depth < 1 or c.prompt_length < 1 or c.k_clusters < 1:
            raise ValueError("adaclip: prompt_depth, prompt_length and k_clusters must be >= 1")
        self.parts: nn.ModuleDict | None = None
        self.layers: list[int] = []
        self._frozen_text: dict[str, torch.Tensor] = {}
        self._words: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self.selection: Any = None

    # ------------------------------------------------------------------ switches
    @property
    def static(self) -> bool:
        """Whether static prompts are used."""
        return self.cfg.prompts in ("hybrid", "static")

    @property
    def dynamic(self) -> bool:
        """Whether dynamic prompts are used."""
        return self.cfg.prompts in ("hybrid", "dynamic")

    @property
    def image_prompted(self) -> bool:
        """Whether the image encoder gets prompts."""
        return self.cfg.prompts != "none" and self.cfg.prompt_encoders in ("both", "image")

    @property
    def text_prompted(self) -> bool:
        """Whether the text encoder gets prompts."""
        return self.cfg.prompts != "none" and self.cfg.prompt_encoders in ("both", "text")

    # ------------------------------------------------------------------ setup and training contract
    def setup(self, ctx: Context) -> None:
        """Build the learnable parts (seeded by ``ctx.seed``) for the CLIP backbone's widths."""
        super().setup(ctx)
        bb = ctx.backbone
        if not hasattr(bb, "encode_token_embeddings") or not bb.embed_dim:
            raise ValueError(f"adaclip needs a CLIP backbone (both encoders), got {bb.name}")
        self.layers = list(self.cfg.layers) if self.cfg.layers else [bb.depth // 4 * i for i in range(1, 5)]
        bb.resolve_layers(self.layers)  # fail early on layers the backbone lacks
        self.parts = _build_parts(self, bb.width, bb.text_width, bb.embed_dim, ctx.seed).to(ctx.device).eval()
        self._frozen_text.clear()
        if self.cfg.select_epoch == "best_val":
            from zsad_bench.methods._adaclip_select import EpochSelection

            self.selection = EpochSelection(self)

    def parameters_to_train(self) -> list[Any]:
        """Static prompts, both generators and the projections (whichever the switches build)."""
        return list(self._ready().parts.parameters())

    def train_recipe(self, aux: Sequence[str]) -> TrainRecipe:
        """AdamW(0.01, betas 0.5/0.999, wd 0.01), batch 1, 5 epochs, seed 111, MVTec AD mosaics p = 0.2."""
        from zsad_bench.train import TrainRecipe

        c = self.cfg
        return TrainRecipe(
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            optimizer="adamw",
            betas=(float(c.betas[0]), float(c.betas[1])),
            weight_decay=c.weight_decay,
            seed=c.train_seed,
            mosaic=tuple(sorted((str(k), float(v)) for k, v in c.mosaic.items())),
        )

    def set_training(self, mode: bool) -> None:
        """Train/eval mode of the learnable parts; forgets memoised text embeddings."""
        self._ready().parts.train(mode)
        self._frozen_text.clear()

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """Prompts, generators and projections (and, while selecting epochs, the best ones so far)."""
        state = dict(self._ready().parts.state_dict())
        if self.selection is not None:
            state.update(self.selection.state())
        return state

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`learnable_state` returned (strict on the parts)."""
        parts = {k: v for k, v in state.items() if not k.startswith("_select.")}
        self._ready().parts.load_state_dict(parts)
        if self.selection is not None:
            self.selection.load({k: v for k, v in state.items() if k.startswith("_select.")})
        self._frozen_text.clear()

    def end_of_epoch(self, epoch: int, epochs: int) -> None:
        """Validate and keep the best epoch (``select_epoch=best_val``); called by the trainer."""
        if self.selection is not None:
            self.selection.end_of_epoch(epoch, epochs)

    def training_report(self) -> dict[str, Any]:
        """What the result file records about the training (epoch selection)."""
        if self.selection is None:
            return {"select_epoch": "last"}
        return self.selection.report()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Focal on the image probabilities + Σ_layers focal + dice + dice of the normal channel (``trainer.py``)."""
        from zsad_bench.losses import focal_loss

        if batch.masks is None or batch.labels is None:
            raise ValueError("adaclip training needs labels and masks in the auxiliary batches")
        out = self._forward(batch)
        terms = {"image_focal": focal_loss(out["image_probs"], batch.labels.long())}
        gt = (batch.masks > 0.5).float()  # (B, S, S)
        for logits in out["layer_maps"]:
            for key, value in _segmentation_terms(logits.softmax(dim=1), gt, self.cfg.dice).items():
                terms[key] = terms.get(key, 0) + value
        return terms

    # ------------------------------------------------------------------ inference
    def predict(self, batch: Batch) -> Prediction:
        """Smoothed maps and HSF image scores, per image as with batch size 1."""
        import torch

        from zsad_bench.heads import gaussian_smooth

        with torch.no_grad():
            out = self._forward(batch)
            logits = torch.stack(out["layer_maps"]).mean(dim=0)  # (B, 2, S, S)
            probs = logits.softmax(dim=1)
            maps = (probs[:, 1] + 1.0 - probs[:, 0]) / 2.0  # (B, S, S)
            maps = gaussian_smooth(maps, self.cfg.sigma)
            scores = out["image_probs"][:, 1]
            if self.cfg.hsf == "none" and self.cfg.no_hsf_score == "max":
                scores = maps.flatten(1).amax(dim=1)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    # ------------------------------------------------------------------ the forward pass
    def _forward(self, batch: Batch) -> dict[str, Any]:
        """Per-layer upsampled logits (B, 2, S, S) and image probabilities (B, 2)."""
        import torch.nn.functional as F

        from zsad_bench.heads import logit_maps

        c, bb = self.cfg, self._ready().ctx.backbone
        vision_p, text_p = self._prompt_sets(batch)
        tokens, embed = self._image_features(batch, vision_p)  # {layer: (B, N, E)}, (B, E), normalised
        text = self._text_features(batch, text_p)  # (B, 2, E)
        patch_logits = [c.logit_scale * t @ text.transpose(1, 2) for t in tokens.values()]  # L × (B, N, 2)
        feature = embed
        if c.hsf != "none":
            fused = self._hsf(list(tokens.values()), patch_logits)  # (B, E)
            feature = F.normalize(c.hsf_alpha * fused + (1.0 - c.hsf_alpha) * embed, dim=-1)
        image_probs = (c.logit_scale * (feature[:, None] @ text.transpose(1, 2))[:, 0]).softmax(dim=-1)  # (B, 2)
        size = batch.images.shape[-1]
        maps = [logit_maps(lg, bb.grid_size, size, c.align_corners) for lg in patch_logits]
        return {"layer_maps": maps, "image_probs": image_probs}

    def _prompt_sets(self, batch: Batch) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """The J hybrid prompts of each prompted encoder, each (B, M, D) (None: encoder not prompted)."""
        parts, b = self._ready().parts, len(batch)
        embed = self._generator_input(batch) if self.dynamic else None  # (B, E)
        out: list[list[torch.Tensor] | None] = []
        for enc, on in (("vision", self.image_prompted), ("text", self.text_prompted)):
            if not on:
                out.append(None)
                continue
            dyn = _generate(parts[f"{enc}_gen"], embed) if self.dynamic else None  # (B, M, D)
            static = parts[f"{enc}_static"] if self.static else None
            prompts = [_hybrid(static[j] if static is not None else None, dyn, b) for j in range(self.cfg.prompt_depth)]
            out.append([_round_fp16(p) for p in prompts] if self.cfg.round_prompts_fp16 else prompts)
        return out[0], out[1]

    def _generator_input(self, batch: Batch) -> torch.Tensor:
        """(B, E) frozen un-prompted ``ln_post(CLS) @ proj``, through the feature cache (fp32)."""
        from zsad_bench.features import FeatureSpec

        spec = FeatureSpec.create(self._ready().ctx.backbone, "embed", dtype="fp32")
        return self._frozen(batch, spec)["embed"].float()

    def _frozen(self, batch: Batch, spec: Any) -> dict[str, torch.Tensor]:
        """Frozen features through the cache, except for mosaics (their pixels are not their files')."""
        from zsad_bench.heads import frozen_features

        return frozen_features(self.ctx, batch, spec)

    def _image_features(
        self, batch: Batch, prompts: list[torch.Tensor] | None
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Projected, normalised patch tokens per layer (B, N, E) and the image embedding (B, E)."""
        import torch.nn.functional as F

        from zsad_bench.backbones.prompts import append_prompts
        from zsad_bench.features import FeatureSpec
        from zsad_bench.heads import apply_layers, trainable_tokens

        ctx, c = self._ready().ctx, self.cfg
        bb, frozen = ctx.backbone, c.projection == "frozen"
        if prompts is None:  # the frozen backbone's tokens, from the feature cache
            feats = self._frozen(batch, FeatureSpec.create(bb, "tokens", layers=self.layers, norm=frozen, proj=frozen))
            raw = {layer: trainable_tokens(feats[f"tokens.{layer}"][:, 1:]) for layer in self.layers}
            embed = feats["embed"].float()
        else:
            out = bb.image_tokens(batch.images, self.layers, norm=frozen, proj=frozen, prompts=append_prompts(prompts))
            raw, embed = {layer: out.patches(layer) for layer in self.layers}, out.embed
        if not frozen:
            raw = apply_layers(self.parts["patch_proj"], raw)
            embed = self.parts["cls_proj"](embed)
        return {k: F.normalize(v, dim=-1) for k, v in raw.items()}, F.normalize(embed, dim=-1)

    # ------------------------------------------------------------------ text side
    def _text_features(self, batch: Batch, prompts: list[torch.Tensor] | None) -> torch.Tensor:
        """(B, 2, E) [normal, abnormal] text embeddings of every image of the batch."""
        import torch

        words = self._class_words(batch)
        if prompts is None:
            return torch.stack([self._frozen_class_text(w) for w in words])
        if self.dynamic:  # every image has its own prompts
            return self._prompted_text(words, prompts)
        unique = sorted(set(words))  # static prompts: one encoding per class
        text = self._prompted_text(unique, [p[:1].expand(len(unique), -1, -1) for p in prompts])
        return text[[unique.index(w) for w in words]]

    def _class_words(self, batch: Batch) -> list[str]:
        if self.cfg.class_names == "folder" and batch.records:
            return [r.category.replace("-", " ") for r in batch.records]  # TextEmbebddingLayer.encode_text
        return list(batch.class_names)

    def _sentences(self, word: str) -> tuple[list[str], list[str]]:
        c = self.cfg
        return two_class_prompts(
            word, prompt_list(c.normal_states), prompt_list(c.abnormal_states), prompt_list(c.templates)
        )

    def _frozen_class_text(self, word: str) -> torch.Tensor:
        """(2, E) text of an unprompted text encoder (memoised: it has no learnable part)."""
        if word not in self._frozen_text:
            bb = self._ready().ctx.backbone
            self._frozen_text[word] = bb.encode_prompt_ensemble(list(self._sentences(word))).float()
        return self._frozen_text[word]

    def _word_tokens(self, word: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Frozen word embeddings (K, L, D), pooled positions (K,) and the normal count of ``word``'s sentences."""
        if word not in self._words:
            bb = self._ready().ctx.backbone
            normal, abnormal = self._sentences(word)
            tokens = bb.tokenize(normal + abnormal)
            self._words[word] = (bb.token_embeddings(tokens), bb.eot_index(tokens), len(normal))
        return self._words[word]

    def _prompted_text(self, words: Sequence[str], prompts: list[torch.Tensor]) -> torch.Tensor:
        """(G, 2, E) text of G (words, prompt set) groups; ``prompts[j]`` is (G, M, D).

        Each group's K sentences run through the text encoder together, with its prompts, cut
        after their longest end token (exact under the causal mask). One call per group keeps the
        numbers those of batch size 1 to the last bit (a joint call changes the float summation).
        """
        import torch

        return torch.stack([self._class_text(w, [p[g : g + 1] for p in prompts]) for g, w in enumerate(words)])

    def _class_text(self, word: str, prompts: list[torch.Tensor]) -> torch.Tensor:
        """(2, E) [normal, abnormal] text of ``word`` with one prompt set (``prompts[j]``: (1, M, D))."""
        import torch
        import torch.nn.functional as F

        from zsad_bench.backbones.prompts import overwrite_prompts

        bb, m = self._ready().ctx.backbone, self.cfg.prompt_length
        emb, eot, n_normal = self._word_tokens(word)  # (K, L, D), (K,)
        if self.cfg.insertion == "paper":  # prompts inserted after SOT (words kept), then replaced before 2..J
            if int(eot.max()) + m >= emb.shape[1]:
                raise ValueError(f"adaclip insertion=paper: a sentence is too long for {m} inserted prompt tokens")
            first = prompts[0].expand(emb.shape[0], -1, -1).to(emb.dtype)  # (K, M, D)
            emb = torch.cat([emb[:, :1], first, emb[:, 1 : emb.shape[1] - m]], dim=1)
            eot = eot + m
        hook = overwrite_prompts(prompts[1:], first_block=2, start=1)
        x = bb.encode_token_embeddings(emb, eot, prompts=hook, normalize=True)  # (K, E)
        pair = torch.stack([x[:n_normal].mean(dim=0), x[n_normal:].mean(dim=0)])  # (2, E)
        return F.normalize(pair, dim=-1)

    # ------------------------------------------------------------------ HSF
    def _hsf(self, tokens: list[torch.Tensor], logits: list[torch.Tensor]) -> torch.Tensor:
        ctx, c = self._ready().ctx, self.cfg
        cluster = _kmeans_function(ctx.hooks.get(KMEANS_HOOK), ctx.seed)
        if c.hsf == "code":
            return hsf_code(tokens, logits, c.k_clusters, c.hsf_topk_factor, cluster)
        return hsf_paper(tokens, logits, c.k_clusters, cluster)

    def _ready(self) -> AdaCLIP:
        if self.parts is None or self.ctx is None:
            raise RuntimeError("adaclip: call setup(ctx) first")
        return self


# ----------------------------------------------------------------------------- building blocks
def _build_parts(method: AdaCLIP, width: int, text_width: int, embed_dim: int, seed: int) -> nn.ModuleDict:
    """The learnable parts, created in a fixed order from ``seed``.

    Keys: ``{vision,text}_static`` (J × (M, D) parameters), ``{vision,text}_gen`` (M × ``Linear(E, D)``),
    ``patch_proj`` (one ``Linear(width, E)`` per layer, keyed by layer) and ``cls_proj`` (``Linear(E, E)``).
    """
    import torch
    from torch import nn

    from zsad_bench.heads import layer_linear

    c = method.cfg
    parts = nn.ModuleDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for enc, dim, on in (("vision", width, method.image_prompted), ("text", text_width, method.text_prompted)):
            if on and method.static:
                params = [nn.Parameter(torch.empty(c.prompt_length, dim)) for _ in range(c.prompt_depth)]
                for p in params:
                    nn.init.normal_(p, std=c.prompt_init_std)
                parts[f"{enc}_static"] = nn.ParameterList(params)
            if on and method.dynamic:
                parts[f"{enc}_gen"] = nn.ModuleList([nn.Linear(embed_dim, dim) for _ in range(c.prompt_length)])
        if c.projection == "learnable":
            parts["patch_proj"] = layer_linear(method.layers, width, embed_dim, seed=seed)
            parts["cls_proj"] = nn.Linear(embed_dim, embed_dim)
    return parts


def _generate(gen: nn.ModuleList, embed: torch.Tensor) -> torch.Tensor:
    """(B, E) → (B, M, D): one linear layer per prompt token (the DPG)."""
    import torch

    return torch.stack([lin(embed) for lin in gen], dim=1)


def _hybrid(static: torch.Tensor | None, dynamic: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The hybrid prompt: static (M, D) + dynamic (B, M, D) → (B, M, D); either may be None."""
    if dynamic is None:
        return static[None].expand(batch, -1, -1)
    return dynamic if static is None else dynamic + static[None]


def _round_fp16(p: torch.Tensor) -> torch.Tensor:
    """Round to fp16 values and back (the code's ``.half()``); gradients pass unchanged."""
    import torch

    return p.to(torch.float16).to(p.dtype)


def _segmentation_terms(probs: torch.Tensor, gt: torch.Tensor, dice: str) -> dict[str, torch.Tensor]:
    """focal(probs, gt) + dice(p_anomalous, gt) + dice(p_normal, 1 - gt); dice per image or per image row."""
    from zsad_bench.losses import binary_dice_loss, focal_loss

    s = gt.shape[-1]
    anomalous, normal = probs[:, 1], probs[:, 0]  # (B, S, S)
    if dice == "row":  # the code at batch size 1: BinaryDiceLoss sees the S rows as samples
        anomalous, normal, target = anomalous.reshape(-1, s), normal.reshape(-1, s), gt.reshape(-1, s)
    else:
        target = gt
    return {
        "focal": focal_loss(probs, gt),
        "dice": binary_dice_loss(anomalous, target),
        "dice_normal": binary_dice_loss(normal, 1.0 - target),
    }


def from_official_state_dict(state: Mapping[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rename the official learnable parameters (``AdaCLIP_Trainer.save``) to :meth:`AdaCLIP.learnable_state` keys.

    Args:
        state: ``clip_model.{visual,text}_prompter.static_prompts.j``, ``clip_model.patch_token_layer.head.i.*``,
            ``clip_model.cls_token_layer.head.0.*``, ``clip_model.dynamic_{visual,text}_prompt_generator.head.m.*``
            (the ``clip_model.`` prefix is optional); other entries are ignored.
        layers: the output layers, in order (``head.i`` is the i-th).

    Returns:
        A state for ``load_learnable_state`` (convert a ``.pth`` with ``torch.load`` first, save as safetensors).

    Example:
        >>> import torch
        >>> sorted(from_official_state_dict({"clip_model.patch_token_layer.head.1.bias": torch.zeros(2)}, [6, 12]))
        ['patch_proj.12.bias']
    """
    renames = {
        "visual_prompter.static_prompts.": "vision_static.",
        "text_prompter.static_prompts.": "text_static.",
        "cls_token_layer.head.0.": "cls_proj.",
        "dynamic_visual_prompt_generator.head.": "vision_gen.",
        "dynamic_text_prompt_generator.head.": "text_gen.",
    }
    out = {}
    for key, value in state.items():
        name = key.removeprefix("clip_model.")
        if name.startswith("patch_token_layer.head."):
            index, rest = name.removeprefix("patch_token_layer.head.").split(".", 1)
            out[f"patch_proj.{layers[int(index)]}.{rest}"] = value
            continue
        for old, new in renames.items():
            if name.startswith(old):
                out[new + name.removeprefix(old)] = value
    return out


# ----------------------------------------------------------------------------- hybrid semantic fusion
KMeansFn = Callable[["np.ndarray", int], "np.ndarray"]


def kmeans_labels(data: np.ndarray, n_clusters: int, random_state: int) -> np.ndarray:
    """scikit-learn ``KMeans(n_clusters, n_init="auto", random_state)`` cluster labels of (n, d) rows.

    A parity test replaces this by ``ctx.hooks["adaclip.kmeans"]``: a callable with the same
    signature returning the labels the official code drew (its ``random_state`` is None).
    """
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init="auto", random_state=random_state).fit_predict(data)


def _kmeans_function(hook: Callable[..., np.ndarray] | None, seed: int) -> KMeansFn:
    fn = hook or kmeans_labels
    return lambda data, k: fn(data, k, seed)


def _cluster_mean(members: torch.Tensor, labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Mean over the non-empty clusters of each cluster's mean member: (L, n, E), (n,) → (E,)."""
    import torch.nn.functional as F

    onehot = F.one_hot(labels, n_clusters).to(members.dtype)  # (n, C)
    sums = onehot.T @ members.sum(dim=0)  # (C, E): Σ over the cluster's patches and all layers
    counts = onehot.sum(dim=0) * members.shape[0]  # (C,) member tokens over all layers
    keep = counts > 0
    return (sums[keep] / counts[keep, None]).mean(dim=0)


def hsf_code(
    tokens: Sequence[torch.Tensor], logits: Sequence[torch.Tensor], k_clusters: int, factor: int, cluster: KMeansFn
) -> torch.Tensor:
    """HSF as the official code computes it (``HybridSemanticFusion.forward``).

    The mean of the layer logits gives each patch an anomalous probability; the ``factor · K``
    most anomalous patches are clustered on their tokens of all layers concatenated; each
    centroid is the mean of its members' tokens over all layers; the result is the mean of the
    centroids, L2-normalised. Gradients flow through the gathered tokens.

    Args:
        tokens: L × (B, N, E) projected, normalised patch tokens.
        logits: L × (B, N, 2) patch logits.
        k_clusters: K.
        factor: the code's 5 (top ``factor · K`` patches).
        cluster: ``(data (n, d), n_clusters) -> labels (n,)``.

    Returns:
        (B, E).
    """
    import torch
    import torch.nn.functional as F

    prob = torch.stack(list(logits)).mean(dim=0).softmax(dim=-1)[..., 1]  # (B, N)
    k = min(prob.shape[1], factor * k_clusters)
    top = prob.topk(k, dim=1).indices  # (B, k), most anomalous first
    stacked = torch.stack(list(tokens))  # (L, B, N, E)
    gathered = stacked.gather(2, top[None, :, :, None].expand(stacked.shape[0], -1, -1, stacked.shape[-1]))
    out = []
    for b in range(prob.shape[0]):
        members = gathered[:, b]  # (L, k, E)
        data = members.detach().transpose(0, 1).reshape(k, -1).float().cpu().numpy()  # (k, L·E)
        n_clusters = min(k_clusters, k)
        labels = torch.as_tensor(cluster(data, n_clusters), dtype=torch.long, device=members.device)
        out.append(_cluster_mean(members, labels, n_clusters))
    return F.normalize(torch.stack(out), dim=-1)


def hsf_paper(
    tokens: Sequence[torch.Tensor], logits: Sequence[torch.Tensor], k_clusters: int, cluster: KMeansFn
) -> torch.Tensor:
    """HSF as the paper describes it (appendix §2.2; the code's commented-out variant).

    All patches are clustered on their layer-averaged tokens; the cluster with the highest mean
    anomalous probability wins (ties: the lowest label); its centroid, L2-normalised, is returned.

    Args:
        tokens: L × (B, N, E) projected, normalised patch tokens.
        logits: L × (B, N, 2) patch logits.
        k_clusters: K.
        cluster: ``(data (n, d), n_clusters) -> labels (n,)``.

    Returns:
        (B, E).
    """
    import torch
    import torch.nn.functional as F

    prob = torch.stack(list(logits)).mean(dim=0).softmax(dim=-1)[..., 1]  # (B, N)
    avg = torch.stack(list(tokens)).mean(dim=0)  # (B, N, E)
    out = []
    for b in range(avg.shape[0]):
        data = avg[b].detach().float().cpu().numpy()
        labels = torch.as_tensor(cluster(data, min(k_clusters, data.shape[0])), dtype=torch.long, device=avg.device)
        ids = torch.unique(labels)  # sorted
        scores = torch.stack([prob[b, labels == i].mean() for i in ids])
        best = ids[int(torch.argmax(scores))]  # argmax returns the first maximum
        out.append(avg[b, labels == best].mean(dim=0))
    return F.normalize(torch.stack(out), dim=-1)
