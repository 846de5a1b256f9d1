"""Pieces shared by the methods that train small heads on frozen patch tokens.

APRIL-GAN, AdaCLIP and the DINOv2 / SAM segmentation heads all map the patch tokens of a few
layers with one learnable linear layer per layer, turn per-patch two-class logits into maps at
the input size, and train them with focal + dice (the official ``loss.py`` of APRIL-GAN and AdaCLIP):

* :func:`layer_linear` / :func:`apply_layers`: one ``Linear(in_dim, out_dim)`` per layer, seeded;
* :func:`logit_maps`: (B, N, 2) logits on a patch grid → (B, 2, S, S), bilinearly upsampled;
* :func:`segmentation_losses`: focal on the two-class probabilities + dice on the anomalous
  channel (+ dice of the normal channel against ``1 - mask``, AdaCLIP / AnomalyCLIP);
* :func:`gaussian_smooth`: ``scipy.ndimage.gaussian_filter`` per map (σ = 4 in AdaCLIP,
  AnomalyCLIP, AdaptCLIP);
* :func:`frozen_features`: features through the cache, mosaic items computed outside it;
* :func:`trainable_tokens`: frozen features made safe to use in an autograd graph;
* :class:`SegHeadMethod`: a frozen encoder with a per-layer ``Linear(D, 2)`` segmentation head
  (the DINOv2 and SAM baselines of AdaCLIP's appendix §3); methods subclass it with their layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from zsad_bench.types import Batch, Method, Prediction

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zsad_bench.context import Context

__all__ = [
    "SegHeadConfig",
    "SegHeadMethod",
    "apply_layers",
    "gaussian_smooth",
    "layer_linear",
    "logit_maps",
    "segmentation_losses",
    "trainable_tokens",
]


def layer_linear(layers: Sequence[int], in_dim: int, out_dim: int, bias: bool = True, seed: int = 0) -> nn.ModuleDict:
    """One ``Linear(in_dim, out_dim)`` per layer (APRIL-GAN ``LinearLayer``, AdaCLIP ``Proj``).

    Args:
        layers: the layer numbers (the module's keys, as strings: ``"6"``).
        in_dim: token width.
        out_dim: output width (the CLIP joint space, or 2 for a segmentation head).
        bias: whether the layers have a bias (all references: yes).
        seed: the initialisation seed (PyTorch's default ``Linear`` initialisation, drawn from it).

    Example:
        >>> sorted(layer_linear([6, 12], 8, 2).state_dict())
        ['12.bias', '12.weight', '6.bias', '6.weight']
    """
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.ModuleDict({str(int(x)): nn.Linear(in_dim, out_dim, bias=bias) for x in layers})


def apply_layers(modules: nn.ModuleDict, tokens: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Map each layer's (B, N, in_dim) tokens with its module: {layer: (B, N, out_dim)}."""
    return {int(key): module(tokens[int(key)]) for key, module in modules.items()}


def logit_maps(logits: torch.Tensor, grid: tuple[int, int], size: int, align_corners: bool = True) -> torch.Tensor:
    """Per-patch logits (B, N, C) → (B, C, size, size) by bilinear upsampling.

    APRIL-GAN and AdaCLIP upsample the *logits* with ``align_corners=True`` and softmax after.

    Example:
        >>> import torch
        >>> logit_maps(torch.zeros(1, 4, 2), (2, 2), 8).shape
        torch.Size([1, 2, 8, 8])
    """
    import torch.nn.functional as F

    b, n, c = logits.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} patch logits do not fill a {grid[0]}x{grid[1]} grid")
    x = logits.transpose(1, 2).reshape(b, c, *grid)  # (B, C, h, w)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=align_corners)


DICE_MODES = ("image", "row", "code")


def segmentation_losses(
    probs: torch.Tensor, masks: torch.Tensor, dice_normal: bool = False, dice: str = "image"
) -> dict[str, torch.Tensor]:
    """Focal + dice of a two-class probability map against binary masks.

    Args:
        probs: (B, 2, S, S) softmax probabilities, channel 1 = anomalous.
        masks: (B, S, S) ground truth; values > 0.5 are anomalous (the references binarise so).
        dice_normal: also dice of channel 0 against ``1 - mask`` (AdaCLIP, AnomalyCLIP, AdaptCLIP).
        dice: ``image`` (dice per image), ``row`` (per mask row) or ``code``: per row when the batch
            holds one image, as the references' ``train.py`` does (``gt.squeeze()`` drops the batch
            axis, so their ``BinaryDiceLoss`` takes the S rows for samples), else per image.

    Returns:
        ``{"focal", "dice"[, "dice_normal"]}`` scalars.

    Raises:
        ValueError: an unknown ``dice`` mode.
    """
    from zsad_bench.losses import binary_dice_loss, focal_loss

    if dice not in DICE_MODES:
        raise ValueError(f"dice={dice!r}: expected one of {DICE_MODES}")
    gt = (masks > 0.5).to(probs.dtype)  # (B, S, S)
    anomalous, normal, target = probs[:, 1], probs[:, 0], gt  # (B, S, S)
    if dice == "row" or (dice == "code" and len(probs) == 1):
        s = gt.shape[-1]
        anomalous, normal, target = anomalous.reshape(-1, s), normal.reshape(-1, s), gt.reshape(-1, s)  # (B·S, S)
    out = {"focal": focal_loss(probs, gt), "dice": binary_dice_loss(anomalous, target)}
    if dice_normal:
        out["dice_normal"] = binary_dice_loss(normal, 1.0 - target)
    return out


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter(map, sigma)`` on each (S, S) map (reflect mode, truncate 4).

    Args:
        maps: (B, S, S).
        sigma: the standard deviation in pixels; 0 returns the maps unchanged.

    Returns:
        (B, S, S) float32 on the CPU.
    """
    import torch

    maps = maps.detach().float().cpu()
    if sigma <= 0:
        return maps
    from scipy.ndimage import gaussian_filter

    return torch.stack([torch.from_numpy(gaussian_filter(m.numpy(), sigma=sigma)) for m in maps])


def frozen_features(ctx: Context, batch: Batch, spec: Any) -> dict[str, torch.Tensor]:
    """``ctx.features(batch, spec)``, with mosaic items (:mod:`zsad_bench.mosaic`) computed outside the cache.

    A mosaic's pixels are not its file's, so its features are computed and never stored; the
    batch's other images still come from (and go to) the cache.
    """
    import torch

    from zsad_bench.features import get_features
    from zsad_bench.mosaic import is_mosaic

    flags = [is_mosaic(r) for r in batch.records]
    if not any(flags):
        return ctx.features(batch, spec)
    if all(flags):
        return get_features(ctx, batch, spec, use_cache=False)
    parts = {}
    for mosaic in (False, True):
        idx = [i for i, f in enumerate(flags) if f == mosaic]
        sub = Batch(batch.images[idx], [batch.records[i] for i in idx], [batch.class_names[i] for i in idx])
        parts[mosaic] = (idx, get_features(ctx, sub, spec, use_cache=not mosaic))
    order = torch.tensor(parts[False][0] + parts[True][0]).argsort()  # back to the batch order
    plain, mosaics = parts[False][1], parts[True][1]
    return {k: torch.cat([v, mosaics[k]])[order.to(v.device)] for k, v in plain.items()}


def trainable_tokens(t: torch.Tensor) -> torch.Tensor:
    """Frozen features as a float32 tensor usable in autograd (inference-mode tensors are copied)."""
    t = t.float()
    return t.clone() if t.is_inference() else t  # clone outside inference mode: an ordinary tensor


# ----------------------------------------------------------------------------- a linear segmentation head
@dataclass
class SegHeadConfig:
    """Knobs of a frozen encoder + per-layer ``Linear(D → 2)`` segmentation head (AdaCLIP appendix §3).

    The appendix gives the layers and says "trainable projection layers … similar to AdaCLIP"; the
    rest follows AdaCLIP's code (``method/adaclip.py``, ``method/trainer.py``), which trained them.
    """

    name: str = ""
    layers: list[int] = field(default_factory=list)
    norm: bool = False  # apply the encoder's final norm to the tokens (DINOv2 only); AdaCLIP uses raw tokens
    align_corners: bool = True  # AdaCLIP upsamples logits with align_corners=True
    sigma: float = 4.0  # gaussian_filter(σ) on the map at test time (AdaCLIP)
    dice_normal: bool = True  # AdaCLIP: dice(p_anom, g) + dice(p_norm, 1 - g)
    epochs: int = 5  # AdaCLIP train.py
    batch_size: int = 8  # not stated for the heads; AdaCLIP's 1 is forced by its prompt code
    lr: float = 0.01  # AdaCLIP train.py
    optimizer: str = "adamw"  # AdaCLIP: AdamW (weight decay 0.01)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    train_seed: int | None = 111  # AdaCLIP train.py; None: the run's seed
    mosaic: dict[str, float] = field(default_factory=lambda: {"mvtec_ad": 0.2})  # AdaCLIP: 2x2 mosaics on MVTec AD


class SegHeadMethod(Method):
    """Frozen patch tokens of a few layers → one ``Linear(D, 2)`` per layer → anomaly map.

    Per layer the two logits of every patch are upsampled bilinearly to the input size; the
    layers' logits are averaged, softmaxed, and the anomalous channel, smoothed with a Gaussian
    of σ = ``sigma``, is the map; the image score is the map's maximum (AdaCLIP without HSF).
    Training: Σ over layers of focal + dice (+ dice of the normal channel) on each layer's map.
    """

    Config: ClassVar[type] = SegHeadConfig
    trainable = True
    inference_keys = ("sigma",)

    def __init__(self, cfg: SegHeadConfig | None = None) -> None:
        super().__init__(cfg if cfg is not None else self.Config())
        if not self.cfg.layers:
            raise ValueError(f"{self.cfg.name}: layers must name at least one layer")
        self.head: nn.ModuleDict | None = None

    def setup(self, ctx: Context) -> None:
        """Build the head (seeded by ``ctx.seed``) for the backbone's token width."""
        super().setup(ctx)
        bb = ctx.backbone
        bb.resolve_layers(self.cfg.layers)  # fail early on layers the backbone lacks
        self.head = layer_linear(self.cfg.layers, bb.width, 2, seed=ctx.seed).to(ctx.device).eval()

    def parameters_to_train(self) -> list[nn.Parameter]:
        """The per-layer linear layers."""
        return list(self._head().parameters())

    def train_recipe(self, aux: Sequence[str]) -> Any:
        """AdaCLIP's recipe (see :class:`SegHeadConfig`)."""
        from zsad_bench.train import TrainRecipe

        c = self.cfg
        return TrainRecipe(
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            optimizer=c.optimizer,
            betas=tuple(c.betas),
            weight_decay=c.weight_decay,
            seed=c.train_seed,
            mosaic=tuple(sorted((str(k), float(v)) for k, v in c.mosaic.items())),
        )

    def set_training(self, mode: bool) -> None:
        """Train/eval mode of the head."""
        self._head().train(mode)

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """The head's weights and biases."""
        return dict(self._head().state_dict())

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`learnable_state` returned (strict)."""
        self._head().load_state_dict(dict(state))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Σ over layers of the segmentation losses of each layer's map."""
        if batch.masks is None:
            raise ValueError(f"{self.cfg.name} training needs masks in the auxiliary batches")
        total: dict[str, torch.Tensor] = {}
        for logits in self._layer_logits(batch).values():
            for key, value in segmentation_losses(logits.softmax(dim=1), batch.masks, self.cfg.dice_normal).items():
                total[key] = total[key] + value if key in total else value
        return total

    def predict(self, batch: Batch) -> Prediction:
        """Mean of the layer logits → softmax → smoothed anomalous channel; score = map maximum."""
        import torch

        with torch.no_grad():
            logits = torch.stack(list(self._layer_logits(batch).values())).mean(dim=0)  # (B, 2, S, S)
            maps = gaussian_smooth(logits.softmax(dim=1)[:, 1], self.cfg.sigma)  # (B, S, S)
        return Prediction(image_scores=maps.flatten(1).amax(dim=1), anomaly_maps=maps)

    def _head(self) -> nn.ModuleDict:
        if self.head is None:
            raise RuntimeError(f"{self.cfg.name}: call setup(ctx) first")
        return self.head

    def _layer_logits(self, batch: Batch) -> dict[int, torch.Tensor]:
        """Per layer (B, 2, S, S) upsampled logits of the frozen tokens through the cache."""
        from zsad_bench.features import FeatureSpec

        head, ctx = self._head(), self.ctx
        assert ctx is not None  # setup(ctx) binds it, as it builds the head
        bb = ctx.backbone
        opts: dict[str, Any] = {"norm": True} if self.cfg.norm else {}
        feats = frozen_features(ctx, batch, FeatureSpec.create(bb, "tokens", layers=self.cfg.layers, **opts))
        p = bb.num_prefix_tokens
        tokens = {layer: trainable_tokens(feats[f"tokens.{layer}"][:, p:]) for layer in self.cfg.layers}
        size = batch.images.shape[-1]
        mapped = apply_layers(head, tokens)  # layer → (B, N, 2)
        return {k: logit_maps(v, bb.grid_size, size, self.cfg.align_corners) for k, v in mapped.items()}
