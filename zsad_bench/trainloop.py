"""The optimisation loop shared by :func:`zsad_bench.train.train_or_load` and ``Method.fit``.

One :class:`Loop` owns the optimizer and the gradient scaler of one method and performs
updates: ``method.training_step(batch)`` gives named scalar losses, their sum is minimised.
Non-finite losses (and, without AMP, non-finite gradient norms) raise :class:`TrainingDiverged`.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch

    from zsad_bench.train import TrainRecipe
    from zsad_bench.types import Batch, Method

__all__ = ["Loop", "TrainingDiverged", "deterministic", "epoch_order", "progress", "run_epoch", "seed_all"]

OPTIMIZERS = ("adam", "adamw", "sgd")


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite; the message says where and what to try."""


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU for the duration (the previous setting is restored)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy's legacy global generator and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may draw from the global generator
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of ``epoch``: a function of (n, seed, epoch) only.

    Example:
        >>> epoch_order(5, 0, 1) == epoch_order(5, 0, 1) != epoch_order(5, 0, 2)
        True
    """
    import torch

    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def _make_optimizer(params: list[Any], recipe: TrainRecipe) -> Any:
    import torch

    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


class Loop:
    """Optimizer, AMP and the per-step update of one method.

    Args:
        method: the method (its ``parameters_to_train()`` are optimised).
        recipe: optimizer, learning rate, clipping.
        device: where the method runs; AMP applies on CUDA only.
        amp: autocast (fp16) + gradient scaling on CUDA.
    """

    def __init__(self, method: Method, recipe: TrainRecipe, device: torch.device, amp: bool) -> None:
        import torch

        self.method, self.recipe, self.device = method, recipe, device
        self.params = [p for p in method.parameters_to_train() if p.requires_grad]
        if not self.params:
            raise ValueError(f"{type(method).__name__}.parameters_to_train() returned no trainable parameters")
        self.amp = bool(amp and device.type == "cuda")
        self.optimizer = _make_optimizer(self.params, recipe)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.steps = 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """fp16 autocast on CUDA when AMP is on, else nothing."""
        import torch

        return torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()

    def step(self, batch: Batch, where: str) -> tuple[float, float]:
        """One update; returns (loss, gradient norm before clipping).

        Raises:
            TrainingDiverged: a non-finite loss, or a non-finite gradient norm without AMP.
        """
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            terms = self.method.training_step(batch)
        if not terms:
            raise ValueError(f"{type(self.method).__name__}.training_step returned no loss")
        loss = cast("torch.Tensor", sum(t.float() for t in terms.values()))  # terms is not empty: a tensor
        value = loss.item()
        if not math.isfinite(value):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise TrainingDiverged(f"the loss became {value} at {where} ({parts})")
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.recipe.grad_clip if self.recipe.grad_clip is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        if not math.isfinite(norm) and not self.amp:  # with AMP the scaler skips such steps itself
            raise TrainingDiverged(f"the gradient norm became {norm} at {where} (loss {value:.4g})")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps += 1
        return value, norm

    def state(self) -> dict[str, Any]:
        """Optimizer, scaler and RNG state, for an exact resume."""
        import torch

        out = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}
        out["rng_cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            out["rng_cuda"] = torch.cuda.get_rng_state_all()
        return out

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`."""
        import torch

        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])


def run_epoch(loop: Loop, batches: Iterable[Batch | None], epoch: int, total: int, bar: Any) -> float:
    """Train on ``batches`` (None items are skipped); returns the mean loss.

    Raises:
        ValueError: no usable batch in the epoch.
    """
    losses = []
    for step, batch in enumerate(batches):
        if loop.recipe.max_steps is not None and step >= loop.recipe.max_steps:
            break
        if batch is None:
            continue
        loss, norm = loop.step(batch, f"epoch {epoch}/{total}, step {step + 1}")
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", grad_norm=f"{norm:.3g}")
    if not losses:
        raise ValueError(f"epoch {epoch} had no usable batch (every auxiliary image failed to decode?)")
    return sum(losses) / len(losses)


def progress(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar (disabled: a silent one)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
