"""APRIL-GAN: CLIP patch tokens of four layers, learnable linear projections, text prompts.

Paper: Chen, Han, Zhang, "APRIL-GAN: A Zero-/Few-Shot Anomaly Classification and Segmentation
Method for CVPR 2023 VAND Workshop Challenge Tracks 1&2", arXiv 2305.17382 (text not in our store).
Official code: https://github.com/ByChelsea/VAND-APRIL-GAN @ f13b8a63 (MIT): ``train.py``,
``test.py``, ``model.py``, ``prompt_ensemble.py``, ``loss.py``.
Independent implementation; no reference code is copied.

What it does (the official code, our defaults):

- backbone: OpenAI CLIP ViT-L/14@336 run at 518 (37×37 patches), positional embedding resized
  bicubically, **GELU** as the official code really ran (its factory rebuilds the model from a
  config without ``quick_gelu``) — ``backbone.activation=quick_gelu`` is the switch;
- features: the raw residual stream (no ``ln_post``, no ``proj``) of layers 6, 12, 18, 24, CLS
  dropped; one learnable ``Linear(1024 → 768)`` with bias per layer;
- text: 7 normal × 35 and 5 abnormal × 35 sentences per class (``prompt_ensemble.py``), each
  embedding L2-normalised, averaged per polarity, re-normalised; class words = the dataset's
  folder names verbatim (``class_names=folder``);
- maps: per layer, mapped tokens L2-normalised, logits = 100 · token · text, reshaped to the grid,
  **logits** upsampled bilinearly with ``align_corners=True``, softmax, anomalous channel; the
  layers are **summed** (range [0, 4]); no smoothing;
- image score: softmax(100 · cos(ln_post(CLS) @ proj, text))[anomalous];
- training: per layer focal(softmax map) + dice(anomalous channel), summed over layers; Adam
  lr 1e-3, betas (0.5, 0.999), batch 8, 3 epochs on MVTec AD / 15 on VisA, seed 111, on the
  auxiliary dataset's test split, MVTec AD items replaced by 2×2 mosaics of their category with
  probability 0.2 (``dataset.py::combine_img``, :mod:`zsad_bench.mosaic`; ``method.mosaic.mvtec_ad=0`` turns it
  off); CLIP frozen (its features come from the feature cache, mosaics' are computed);
- few-shot: memory = raw tokens of the four layers of the k references; per layer
  min over memory of (1 − cos) per query patch, upsampled (``align_corners=True``), summed over
  layers and added to the zero-shot map.

Differences from the official code, each with its switch:

- few-shot image score: the official code averages the zero-shot score with the maximum of the
  map min–max normalised **over the whole test set of a class** (transductive). A method here
  scores one batch at a time, so ``fewshot_image=max_scaled`` uses 0.5 · (score + max(map) /
  (number of layers)) instead; ``fewshot_image=zero_shot`` keeps the zero-shot score.
- ``layer_fusion=mean`` divides the summed map by the number of layers (range [0, 1]);
  ``class_names=prompt`` uses the dataset's prompt words ("pipe fryum") instead of folder names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zsad_bench.prompts import prompt_list, two_class_prompts
from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch

    from zsad_bench.context import Context
    from zsad_bench.train import TrainRecipe

__all__ = ["APRILGAN", "APRILGANConfig", "from_official_checkpoint"]

_CARD = {
    "title": "APRIL-GAN (VAND 2023 challenge winner)",
    "paper": "CVPR-W 2023",
    "arxiv": "2305.17382",
    "code": "https://github.com/ByChelsea/VAND-APRIL-GAN",
    "commit": "f13b8a63",
    "license": "MIT",
    "trainable": True,
    "shots": (0, 1, 2, 4),
    "backbone": "clip_vit_l14_336",
    "input_size": 518,
    "summary": "per-layer linear projections of CLIP patch tokens vs a prompt ensemble",
}


@dataclass
class APRILGANConfig:
    """Knobs; defaults are the official code's values (``train.sh``, ``test_*.sh``)."""

    name: str = "april_gan"
    layers: list[int] = field(default_factory=lambda: [6, 12, 18, 24])  # --features_list
    templates: str = "april_gan_templates"  # prompt_ensemble.py: 35 templates
    normal_states: str = "april_gan_normal_states"  # 7
    abnormal_states: str = "april_gan_abnormal_states"  # 5
    class_names: str = "folder"  # folder (obj_list names verbatim) | prompt (the dataset's prompt words)
    logit_scale: float = 100.0  # test.py: 100 * token @ text
    align_corners: bool = True  # test.py / train.py: F.interpolate(..., align_corners=True)
    layer_fusion: str = "sum"  # test.py sums the layer maps; "mean" divides by the number of layers
    fewshot_image: str = "max_scaled"  # max_scaled | zero_shot (see the module docstring)
    epochs: int | None = None  # None: 3 when training on mvtec_ad, else 15 (train.sh)
    batch_size: int = 8  # train.sh
    lr: float = 1e-3  # train.sh
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # train.py: Adam betas
    train_seed: int | None = 111  # train.py seed; None: the run's seed
    mosaic: dict[str, float] = field(default_factory=lambda: {"mvtec_ad": 0.2})  # dataset.py: aug_rate on MVTec
    dice: str = "code"  # code: per mask row for a one-image batch (train.py's gt.squeeze()) | image | row


@register_method("april_gan", **_CARD)
class APRILGAN(Method):
    """Frozen CLIP, one learnable linear projection per layer, prompt-ensemble text."""

    Config = APRILGANConfig
    trainable = True
    inference_keys = ("layer_fusion", "fewshot_image")  # knobs that do not change the trained weights

    def __init__(self, cfg: APRILGANConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        c = self.cfg
        for key in ("templates", "normal_states", "abnormal_states"):
            prompt_list(getattr(c, key))  # fail at build time on an unknown list name
        _check_choice("class_names", c.class_names, ("folder", "prompt"))
        _check_choice("layer_fusion", c.layer_fusion, ("sum", "mean"))
        _check_choice("fewshot_image", c.fewshot_image, ("max_scaled", "zero_shot"))
        _check_choice("dice", c.dice, ("code", "image", "row"))
        self.proj: Any = None
        self._text: dict[str, torch.Tensor] = {}
        self._memory: dict[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ setup and training contract
    def setup(self, ctx: Context) -> None:
        """Build the projections (seeded by ``ctx.seed``) for the CLIP backbone's widths."""
        from zsad_bench.heads import layer_linear

        super().setup(ctx)
        bb = ctx.backbone
        if not hasattr(bb, "encode_prompt_ensemble") or not bb.embed_dim:
            raise ValueError(f"april_gan needs a CLIP backbone (text encoder), got {bb.name}")
        bb.resolve_layers(self.cfg.layers)  # fail early on layers the backbone lacks
        self.proj = layer_linear(self.cfg.layers, bb.width, bb.embed_dim, seed=ctx.seed).to(ctx.device).eval()
        self._text.clear()
        self._memory = None

    def parameters_to_train(self) -> list[Any]:
        """The per-layer projections."""
        return list(self._ready().proj.parameters())

    def train_recipe(self, aux: Sequence[str]) -> TrainRecipe:
        """Adam(1e-3, betas 0.5/0.999), batch 8, 3 epochs on MVTec AD else 15, seed 111, mosaics (``train.sh``)."""
        from zsad_bench.train import TrainRecipe

        c = self.cfg
        epochs = c.epochs if c.epochs is not None else (3 if list(aux) == ["mvtec_ad"] else 15)
        return TrainRecipe(
            epochs=epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            optimizer="adam",
            betas=tuple(c.betas),
            seed=c.train_seed,
            mosaic=tuple(sorted((str(k), float(v)) for k, v in c.mosaic.items())),
        )

    def set_training(self, mode: bool) -> None:
        """Train/eval mode of the projections."""
        self._ready().proj.train(mode)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """The projections' weights and biases."""
        return dict(self._ready().proj.state_dict())

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`learnable_state` returned (strict)."""
        self._ready().proj.load_state_dict(dict(state))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Σ over layers of focal(softmax map) + dice(anomalous channel) (``train.py``)."""
        from zsad_bench.heads import segmentation_losses

        if batch.masks is None:
            raise ValueError("april_gan training needs masks in the auxiliary batches")
        tokens, _ = self._features(batch)
        text = self._text_for(batch)
        total: dict[str, torch.Tensor] = {}
        for logits in self._layer_logits(tokens, text, batch.images.shape[-1]).values():
            for key, value in segmentation_losses(logits.softmax(dim=1), batch.masks, dice=self.cfg.dice).items():
                total[key] = total.get(key, 0) + value
        return total

    # ------------------------------------------------------------------ inference
    def set_references(self, normals: Batch) -> None:
        """Keep the raw tokens of the k normal references as the per-layer memory (``few_shot.py``)."""
        import torch.nn.functional as F

        tokens, _ = self._features(normals)
        self._memory = {layer: F.normalize(t.reshape(-1, t.shape[-1]), dim=-1) for layer, t in tokens.items()}

    def predict(self, batch: Batch) -> Prediction:
        """Summed layer maps (+ few-shot memory map) and the global-token image score."""
        import torch

        tokens, embed = self._features(batch)
        text = self._text_for(batch)  # (B, 2, E)
        size = batch.images.shape[-1]
        with torch.no_grad():
            maps = sum(m.softmax(dim=1)[:, 1] for m in self._layer_logits(tokens, text, size).values())  # (B, S, S)
            scores = _global_score(embed, text, self.cfg.logit_scale)  # (B,)
            if self._memory is not None:
                maps = maps + self._memory_map(tokens, size)
                if self.cfg.fewshot_image == "max_scaled":
                    scores = 0.5 * (scores + maps.flatten(1).amax(dim=1) / len(self.cfg.layers))
            if self.cfg.layer_fusion == "mean":
                maps = maps / len(self.cfg.layers)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps.float().cpu())

    # ------------------------------------------------------------------ helpers
    def _ready(self) -> APRILGAN:
        if self.proj is None or self.ctx is None:
            raise RuntimeError("april_gan: call setup(ctx) first")
        return self

    def _features(self, batch: Batch) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Raw patch tokens per layer (B, N, D) and the global embedding (B, E), through the cache."""
        from zsad_bench.features import FeatureSpec
        from zsad_bench.heads import frozen_features, trainable_tokens

        ctx = self._ready().ctx
        bb = ctx.backbone
        feats = frozen_features(ctx, batch, FeatureSpec.create(bb, "tokens", layers=self.cfg.layers))
        p = bb.num_prefix_tokens
        tokens = {layer: trainable_tokens(feats[f"tokens.{layer}"][:, p:]) for layer in self.cfg.layers}
        return tokens, feats["embed"].float()

    def _layer_logits(self, tokens: dict[int, torch.Tensor], text: torch.Tensor, size: int) -> dict[int, torch.Tensor]:
        """Per layer (B, 2, S, S) upsampled logits ``scale · normalise(Linear(token)) · text``."""
        import torch.nn.functional as F

        from zsad_bench.heads import apply_layers, logit_maps

        grid = self.ctx.backbone.grid_size
        out = {}
        for layer, mapped in apply_layers(self.proj, tokens).items():
            logits = self.cfg.logit_scale * F.normalize(mapped, dim=-1) @ text.transpose(1, 2)  # (B, N, 2)
            out[layer] = logit_maps(logits, grid, size, self.cfg.align_corners)
        return out

    def _memory_map(self, tokens: dict[int, torch.Tensor], size: int) -> torch.Tensor:
        """Σ over layers of min over the memory of (1 − cos), upsampled: (B, S, S)."""
        import torch.nn.functional as F

        grid = self.ctx.backbone.grid_size
        total = 0
        for layer, t in tokens.items():
            cos = F.normalize(t, dim=-1) @ self._memory[layer].T  # (B, N, M)
            dist = (1.0 - cos).amin(dim=-1)  # (B, N)
            total = (
                total
                + F.interpolate(
                    dist.reshape(-1, 1, *grid), size=(size, size), mode="bilinear", align_corners=self.cfg.align_corners
                )[:, 0]
            )
        return total

    def _text_for(self, batch: Batch) -> torch.Tensor:
        """(B, 2, E) [normal, anomalous] text embeddings of the batch's classes."""
        import torch

        names = batch.categories if self.cfg.class_names == "folder" and batch.records else batch.class_names
        return torch.stack([self._class_text(n) for n in names])

    def _class_text(self, word: str) -> torch.Tensor:
        import torch

        if word not in self._text:
            c = self.cfg
            sentences = two_class_prompts(
                word,
                prompt_list(c.normal_states),
                prompt_list(c.abnormal_states),
                prompt_list(c.templates),
                order="template_major",
            )
            with torch.no_grad():
                text = self.ctx.backbone.encode_prompt_ensemble(list(sentences), normalize_each=True)  # (2, E)
            self._text[word] = text.float().to(self.ctx.device)
        return self._text[word]


def _global_score(embed: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · cos(embed, text))[anomalous]: (B, E), (B, 2, E) → (B,)."""
    import torch.nn.functional as F

    cos = (F.normalize(embed, dim=-1)[:, None] @ text.transpose(1, 2))[:, 0]  # (B, 2)
    return (scale * cos).softmax(dim=-1)[:, 1]


def from_official_checkpoint(checkpoint: Mapping[str, Any], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Official checkpoint → :meth:`APRILGAN.load_learnable_state` names (``fc.<i>.*`` → ``<layers[i]>.*``).

    Loads the released ``exps/pretrained/{mvtec,visa}_pretrained.pth`` files (``torch.load``
    them first, or pass their ``"trainable_linearlayer"`` entry): the official ``LinearLayer`` keeps
    one ``fc.<i>`` per entry of ``--features_list``, in that order.

    Args:
        checkpoint: ``{"trainable_linearlayer": state}`` as ``train.py`` saves it, or that state.
        layers: the ``--features_list`` the checkpoint was trained with (the config's ``layers``).

    Raises:
        KeyError: when the checkpoint has names other than ``fc.<i>.weight|bias``.
        ValueError: when its number of layers differs from ``layers``.

    Example:
        >>> import torch
        >>> sorted(from_official_checkpoint({"fc.0.weight": torch.zeros(2, 3), "fc.0.bias": torch.zeros(2)}, [24]))
        ['24.bias', '24.weight']
    """
    state = checkpoint.get("trainable_linearlayer", checkpoint)
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        parts = name.removeprefix("module.").split(".")
        if len(parts) != 3 or parts[0] != "fc" or not parts[1].isdigit() or parts[2] not in ("weight", "bias"):
            raise KeyError(f"april_gan: {name!r} is not an official LinearLayer entry (fc.<i>.weight|bias)")
        index = int(parts[1])
        if index >= len(layers):
            raise ValueError(f"april_gan: the checkpoint has more layers than layers={list(layers)}; set method.layers")
        out[f"{int(layers[index])}.{parts[2]}"] = value
    if len(out) != 2 * len(layers):
        raise ValueError(f"april_gan: the checkpoint has {len(out) // 2} layers, layers={list(layers)}")
    return out


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"april_gan: {key}={value!r} is not one of {allowed} (conf/method/april_gan.yaml)")
