"""AdaCLIP's ``select_epoch=best_val``: keep the epoch with the best pixel F1-max on a validation set.

The official ``train.py`` validates after every epoch on the *test* split of another dataset
(VisA when training on MVTec AD + ColonDB) and keeps the checkpoint with the best mean pixel
F1-max over its categories. That is model selection on test data: allowed here only when the
validation dataset is not the one this run tests (the zero-shot guard of
:mod:`zsad_bench.protocol` refuses it otherwise), and recorded in the result through
:meth:`EpochSelection.report` (``train.info.method``).

A private module of :mod:`zsad_bench.methods.adaclip` (not a registered plugin).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from zsad_bench.methods.adaclip import AdaCLIP

__all__ = ["EpochSelection", "check_validation_guard"]

logger = logging.getLogger(__name__)
PREFIX = "_select."


def check_validation_guard(val_dataset: str, ctx: Any) -> dict[str, Any]:
    """Refuse a validation dataset that shares categories with the run's test data.

    Args:
        val_dataset: the registered name of the validation dataset.
        ctx: the run context (``dataset``: the test dataset's info, ``categories``).

    Returns:
        The guard's record (``zero_shot`` True), or ``{"checked": False}`` when the run names no test dataset.

    Raises:
        zsad_bench.protocol.ProtocolError: the validation and test data overlap.
    """
    from zsad_bench.protocol import DataSelection, check_protocol
    from zsad_bench.registry import DATASETS

    info = getattr(ctx, "dataset", None)
    if info is None:
        return {"checked": False}
    val_info = DATASETS.get(val_dataset).info()
    test = DataSelection(info.name, tuple(ctx.categories or info.categories), "test")
    val = DataSelection(val_dataset, tuple(val_info.categories), "test")
    try:
        record = check_protocol([val], test, {val_dataset: val_info, info.name: info})
    except ValueError as exc:
        raise type(exc)(
            f"adaclip select_epoch=best_val validates on {val_dataset!r}, which this run also tests: {exc}. "
            "Use method.select_epoch=last, or another method.val_dataset."
        ) from exc
    return record.to_dict()


class EpochSelection:
    """Validation after each epoch; the best epoch's parameters are restored after the last one.

    While training runs, :meth:`state` adds the best parameters so far to the checkpoint, so a
    resumed training selects as an uninterrupted one would.
    """

    def __init__(self, method: AdaCLIP) -> None:
        self.method = method
        self.guard = check_validation_guard(method.cfg.val_dataset, method.ctx)
        self.scores: list[float] = []
        self.best_epoch: int | None = None
        self.best: dict[str, torch.Tensor] | None = None

    def end_of_epoch(self, epoch: int, epochs: int) -> None:
        """Validate; remember the parameters if best; after the last epoch, restore the best."""
        score = self.validate()
        self.scores.append(score)
        logger.info("adaclip epoch %d: validation pixel F1-max %.4f on %s", epoch, score, self.method.cfg.val_dataset)
        if self.best_epoch is None or score > max(self.scores[:-1], default=float("-inf")):
            self.best_epoch = epoch
            self.best = {k: v.detach().clone() for k, v in self.method.parts.state_dict().items()}
        if epoch == epochs and self.best is not None:
            self.method.parts.load_state_dict(self.best)
            self.best = None  # the parts now hold it; the final checkpoint needs no copy

    def validate(self) -> float:
        """Mean over categories of the pixel F1-max on the validation dataset's test split."""
        import dataclasses

        from zsad_bench.auxdata import AuxDataset, build_aux, to_batch
        from zsad_bench.metrics import CategoryEvaluator

        m, c = self.method, self.method.cfg
        aux = build_aux([{"name": c.val_dataset}], {"data_root": c.data_root}, "test", c.val_max_per_category)
        data = AuxDataset(aux, dataclasses.asdict(m.ctx.backbone.cfg))
        per_cat: dict[str, Any] = {}
        m.set_training(False)
        try:
            for start in range(0, len(data), 8):
                batch = to_batch([data[i] for i in range(start, min(start + 8, len(data)))], aux, m.ctx.device)
                if batch is None:
                    continue
                pred = m.predict(batch)
                for i, record in enumerate(batch.records):
                    ev = per_cat.setdefault(record.category, CategoryEvaluator((), ("pixel_f1max",), mode="histogram"))
                    ev.update(None, None, pred.anomaly_maps[i : i + 1], batch.masks[i : i + 1].cpu().bool())
        finally:
            m.set_training(True)
        values = [ev.compute()["pixel_f1max"].value for ev in per_cat.values()]
        values = [v for v in values if v == v]  # NaN: a category without anomalous pixels
        return sum(values) / len(values) if values else float("nan")

    def state(self) -> dict[str, torch.Tensor]:
        """Checkpoint entries: scores so far, the best epoch and (while training) its parameters."""
        import torch

        out = {f"{PREFIX}scores": torch.tensor(self.scores, dtype=torch.float64)}
        out[f"{PREFIX}best_epoch"] = torch.tensor(self.best_epoch or 0)
        if self.best is not None:
            out.update({f"{PREFIX}best.{k}": v for k, v in self.best.items()})
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (nothing when the checkpoint has no selection entries)."""
        if f"{PREFIX}scores" not in state:
            return
        self.scores = [float(v) for v in state[f"{PREFIX}scores"].tolist()]
        self.best_epoch = int(state[f"{PREFIX}best_epoch"]) or None
        best = {k[len(PREFIX) + 5 :]: v for k, v in state.items() if k.startswith(f"{PREFIX}best.")}
        self.best = best or None

    def report(self) -> dict[str, Any]:
        """What the result records: the rule, the validation set, every epoch's score, the epoch kept."""
        return {
            "select_epoch": "best_val",
            "val_dataset": self.method.cfg.val_dataset,
            "val_metric": "pixel_f1max (mean over categories, test split)",
            "val_scores": list(self.scores),
            "selected_epoch": self.best_epoch,
            "guard": self.guard,
        }
