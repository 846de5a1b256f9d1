"""The plain CLIP baselines of the KAnoCLIP / AnomalyCLIP tables: ``clip`` and ``clip_ac``.

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021, arXiv 2103.00020. Official code: https://github.com/openai/CLIP (no anomaly-detection
code). The baselines themselves are defined in the AnomalyCLIP paper's appendix (arXiv 2310.18961),
whose CLIP / CLIP-AC rows the KAnoCLIP tables copy (MVTec-AD 74.1/38.4 and 71.5/38.2):

- ``clip``: two classes, "a photo of a normal [class]." against "a photo of an anomalous [class].";
  the anomaly score is the anomalous softmax probability of the global image embedding;
  segmentation applies the same to every last-layer patch token (``ln_post`` then ``proj``).
- ``clip_ac``: the same two classes, each averaged over an ImageNet-style template ensemble
  (the 35 templates AnomalyCLIP's repository carries, :data:`zsad_bench.prompts.APRIL_GAN_TEMPLATES`).

Our choices (the papers leave them open), each a switch: the logit scale is OpenAI CLIP's learned
100 (``logit_scale``); sentence embeddings are L2-normalised before averaging, as CLIP's zero-shot
recipe does (``normalize_each``); "a" becomes "an" before a vowel (``articles``); the patch map is
upsampled bilinearly (align_corners False). The text of AnomalyCLIP's appendix was recalled, not
read from a stored copy: see docs/methods/clip.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zsad_bench.prompts import prompt_list, two_class_prompts
from zsad_bench.registry import register_method
from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    import torch

    from zsad_bench.context import Context

__all__ = ["CLIPAC", "CLIPACConfig", "CLIPBaseline", "CLIPConfig", "two_class_probability"]

_CARD = {
    "paper": "ICML 2021",
    "arxiv": "2103.00020",
    "code": "https://github.com/openai/CLIP",
    "license": "MIT",
    "shots": (0,),
    "backbone": "clip_vit_l14_336",
    "input_size": 518,
}


@dataclass
class CLIPConfig:
    """Knobs of the ``clip`` baseline (one template, normal/anomalous state words)."""

    name: str = "clip"
    templates: str = "clip_templates"  # a zsad_bench.prompts list: "a photo of a {}."
    normal_states: str = "clip_normal_states"  # "normal {}"
    anomalous_states: str = "clip_anomalous_states"  # "anomalous {}"
    articles: bool = True  # "a anomalous" → "an anomalous"
    normalize_each: bool = True  # L2-normalise each sentence embedding before averaging
    logit_scale: float = 100.0  # OpenAI CLIP's learned logit scale
    layer: int = -1  # the patch tokens' layer (-1: the last)
    class_name: str | None = None  # prompt words for every category (None: the dataset's)


@dataclass
class CLIPACConfig(CLIPConfig):
    """Knobs of ``clip_ac``: the same two classes over an ImageNet-style template ensemble."""

    name: str = "clip_ac"
    templates: str = "april_gan_templates"  # 35 ImageNet-style templates


@register_method(
    "clip", title="CLIP (two-class prompts)", summary="global and last-layer patch tokens vs 2 prompts", **_CARD
)
class CLIPBaseline(Method):
    """Global image token and last-layer patch tokens against two class prompts."""

    Config = CLIPConfig

    def __init__(self, cfg: CLIPConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        for key in ("templates", "normal_states", "anomalous_states"):
            prompt_list(getattr(self.cfg, key))  # fail at build time on an unknown list name
        self._text: dict[str, torch.Tensor] = {}

    def setup(self, ctx: Context) -> None:
        """Bind the context; the backbone must be a CLIP model (it needs a text encoder)."""
        super().setup(ctx)
        if not hasattr(ctx.backbone, "encode_prompt_ensemble"):
            raise ValueError(f"{self.cfg.name} needs a CLIP backbone, got {ctx.backbone.name}")
        self._text.clear()

    def sentences(self, class_name: str) -> tuple[list[str], list[str]]:
        """The (normal, anomalous) sentences for ``class_name``."""
        c = self.cfg
        return two_class_prompts(
            c.class_name or class_name,
            prompt_list(c.normal_states),
            prompt_list(c.anomalous_states),
            prompt_list(c.templates),
            order="template_major",
            articles=c.articles,
        )

    def text_embeddings(self, class_name: str) -> torch.Tensor:
        """(2, E) normalised [normal, anomalous] embeddings (memoised per class words)."""
        if class_name not in self._text:
            bb = self._context().backbone
            self._text[class_name] = bb.encode_prompt_ensemble(
                list(self.sentences(class_name)), normalize_each=self.cfg.normalize_each
            )
        return self._text[class_name]

    def predict(self, batch: Batch) -> Prediction:
        """Global score and upsampled patch map of the anomalous probability."""
        import torch
        import torch.nn.functional as F

        from zsad_bench.features import FeatureSpec

        ctx = self._context()
        bb = ctx.backbone
        spec = FeatureSpec.create(bb, "tokens", layers=(self.cfg.layer,), norm=True, proj=True)
        feats = ctx.features(batch, spec)
        patches = feats[f"tokens.{self.cfg.layer}"][:, bb.num_prefix_tokens :]  # (B, N, E)
        text = torch.stack([self.text_embeddings(c) for c in batch.class_names]).to(patches.device)  # (B, 2, E)
        scores = two_class_probability(feats["embed"][:, None], text, self.cfg.logit_scale)[:, 0]  # (B,)
        grid = two_class_probability(patches, text, self.cfg.logit_scale).reshape(-1, 1, *bb.grid_size)
        maps = F.interpolate(grid, size=tuple(batch.images.shape[-2:]), mode="bilinear", align_corners=False)
        return Prediction(image_scores=scores.float().cpu(), anomaly_maps=maps[:, 0].float().cpu())

    def _context(self) -> Any:
        if self.ctx is None:
            raise RuntimeError(f"{self.cfg.name}: call setup(ctx) before predict")
        return self.ctx


@register_method("clip_ac", title="CLIP-AC (template ensemble)", summary="CLIP with a 35-template ensemble", **_CARD)
class CLIPAC(CLIPBaseline):
    """``clip`` with the two classes averaged over an ImageNet-style template ensemble."""

    Config = CLIPACConfig


def two_class_probability(tokens: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """The anomalous probability softmax(logit_scale · cos)[1] of every token.

    Args:
        tokens: (B, M, E) embeddings.
        text: (B, 2, E) [normal, anomalous] embeddings.
        logit_scale: the softmax's inverse temperature.

    Returns:
        (B, M).

    Example:
        >>> import torch
        >>> text = torch.eye(2)[None]
        >>> two_class_probability(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), text, 1.0).round(decimals=4).tolist()
        [[0.7311, 0.2689]]
    """
    import torch.nn.functional as F

    cos = F.normalize(tokens.float(), dim=-1) @ F.normalize(text.float(), dim=-1).transpose(1, 2)  # (B, M, 2)
    return (logit_scale * cos).softmax(dim=-1)[..., 1]
