"""One trainer for every method that learns on auxiliary data.

The evaluation loop calls :func:`train_or_load` once per job for a trainable method (after
``method.setup(ctx)``). It

1. resolves the auxiliary datasets (``train.aux``; ``auto`` = the test dataset config's ``aux``
   key, the papers' pairing) and their records (by default their *test* split, as APRIL-GAN,
   AnomalyCLIP, AdaCLIP and AdaptCLIP train);
2. enforces the zero-shot protocol (:mod:`zsad_bench.protocol`);
3. looks for a finished checkpoint by tag (``april_gan.visa``) and config hash under
   ``<paths.weights_root>/trained`` and ``<paths.results_root>/checkpoints``
   (:mod:`zsad_bench.checkpoints`) and loads it, or resumes an interrupted training, or trains.

The method side of the contract (:class:`~zsad_bench.types.Method`): ``trainable = True``,
``parameters_to_train()``, ``training_step(batch) -> {name: scalar loss}`` (the trainer sums
the values), ``learnable_state()`` / ``load_learnable_state()``, optionally
``train_recipe(aux_names) -> TrainRecipe`` and ``set_training(mode)``. Frozen features come
from ``ctx.features(batch, spec)`` inside ``training_step``, so epochs after the first read them
from the feature cache instead of running the encoder.

Training is seeded (the shuffling of epoch ``e`` depends only on the seed and ``e``), runs with
deterministic algorithms on CPU, under autocast + gradient scaling on CUDA (``train.amp``), shows
the loss and the gradient norm in a progress bar, stops on a non-finite loss with a clear
message (keeping the last good checkpoint), saves every epoch and resumes to the same
parameters an uninterrupted run reaches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from zsad_bench.auxdata import AuxData, AuxDataset, aux_entries, build_aux, check_aux, section, to_batch
from zsad_bench.checkpoints import CheckpointStore, config_hash, load_state
from zsad_bench.trainloop import (
    OPTIMIZERS,
    Loop,
    TrainingDiverged,
    deterministic,
    epoch_order,
    run_epoch,
    seed_all,
)
from zsad_bench.trainloop import progress as progress_bar

if TYPE_CHECKING:
    import torch

    from zsad_bench.context import Context
    from zsad_bench.types import Batch, Method

__all__ = [
    "TRAINER_VERSION",
    "TrainRecipe",
    "TrainRecord",
    "TrainingDiverged",
    "fit_batches",
    "train_or_load",
]

logger = logging.getLogger(__name__)
TRAINER_VERSION = 1  # part of every config hash: bump when a change alters trained weights


@dataclass(frozen=True)
class TrainRecipe:
    """How a method trains; the method's :meth:`train_recipe` gives its paper values.

    Attributes:
        epochs: passes over the auxiliary data.
        batch_size: images per step.
        lr: learning rate.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        betas: Adam(W) betas.
        weight_decay: weight decay (AdamW's default is 0.01).
        grad_clip: clip the gradient norm to this value (None: no clipping, the norm is still logged).
        seed: the training seed (None: the run's seed).
        split: the auxiliary datasets' split trained on.
        max_steps: stop each epoch after this many steps (None: the whole epoch); for quick runs.
        max_per_category: use at most this many records per auxiliary category (None: all).
        mosaic: (dataset, probability) pairs: items of these auxiliary datasets become 2×2 mosaics of
            their category with that probability (APRIL-GAN / AdaCLIP on MVTec AD; :mod:`zsad_bench.mosaic`).
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int | None = None
    split: str = "test"
    max_steps: int | None = None
    max_per_category: int | None = None
    mosaic: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"train recipe needs epochs >= 1, batch_size >= 1 and lr > 0, got {self}")

    def with_overrides(self, train_cfg: Mapping[str, Any]) -> TrainRecipe:
        """Apply the non-null ``train.*`` keys that name recipe fields (``train.epochs=5``)."""
        names = {f.name for f in fields(self)}
        changes = {k: v for k, v in train_cfg.items() if k in names and v is not None}
        if "betas" in changes:
            changes["betas"] = tuple(float(b) for b in changes["betas"])
        return replace(self, **changes)


class _RecordBase(TypedDict):
    """The :class:`TrainRecord` fields known before training or loading (see there)."""

    tag: str
    config_hash: str
    epochs: int
    protocol: dict[str, Any]
    recipe: dict[str, Any]
    device: str


@dataclass
class TrainRecord:
    """What :func:`train_or_load` did; ``to_dict()`` goes into the result file.

    Attributes:
        tag: ``<method>.<aux>`` (``april_gan.visa``).
        config_hash: the hash of everything that determines the weights.
        folder: the checkpoint folder used.
        status: ``trained``, ``resumed`` or ``loaded``.
        epochs: epochs of the recipe.
        steps: optimizer steps taken in this call.
        losses: mean loss per epoch (all epochs, also those of an earlier interrupted run).
        seconds: training time of this call.
        epoch_seconds: wall time of each epoch trained in this call.
        protocol: the zero-shot guard's record (see :class:`~zsad_bench.protocol.ProtocolRecord`).
        recipe: the recipe used.
        resumed_from: the epoch an interrupted run had finished, else None.
        device: where it trained.
        amp: whether autocast was on.
        method: what the method reports about its training (``Method.training_report``, e.g. the
            epoch AdaCLIP selected on a validation set).
    """

    tag: str
    config_hash: str
    folder: str
    status: str
    epochs: int
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    resumed_from: int | None = None
    device: str = "cpu"
    amp: bool = False
    method: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _device(ctx: Context) -> torch.device:
    import torch

    name = str(ctx.device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


# ----------------------------------------------------------------------------- public API
def fit_batches(
    method: Method,
    batches: Iterable[Batch],
    recipe: TrainRecipe | None = None,
    device: Any = None,
    progress: bool = False,
) -> list[float]:
    """Train ``method`` on given batches (``Method.fit``'s default): no dataset, no checkpoints.

    Args:
        method: a trainable method, set up.
        batches: the auxiliary batches (with labels and masks), reused every epoch in a seeded order.
        recipe: the recipe (None: the method's ``train_recipe([])`` or the defaults).
        device: where to train (None: the method's context device, else CPU).
        progress: show a progress bar.

    Returns:
        The mean loss of each epoch.
    """
    import torch

    recipe = recipe or method.train_recipe([]) or TrainRecipe()
    ctx = method.ctx
    dev = torch.device(device) if device is not None else (_device(ctx) if ctx is not None else torch.device("cpu"))
    seed = recipe.seed if recipe.seed is not None else (ctx.seed if ctx is not None else 0)
    items = list(batches)
    seed_all(seed)
    loop = Loop(method, recipe, dev, amp=False)
    losses = []
    method.set_training(True)
    try:
        with deterministic(dev):
            for epoch in range(1, recipe.epochs + 1):
                order = [items[i] for i in epoch_order(len(items), seed, epoch)]
                with progress_bar(progress, len(order), f"fit epoch {epoch}/{recipe.epochs}") as bar:
                    losses.append(run_epoch(loop, order, epoch, recipe.epochs, bar))
                method.end_of_epoch(epoch, recipe.epochs)  # as in train_or_load (AdaCLIP's epoch selection)
    finally:
        method.set_training(False)
    return losses


def train_or_load(method: Method, cfg: Any, ctx: Context) -> TrainRecord:
    """Load the stored training of ``method`` for this config, resume it, or train it.

    Args:
        method: a trainable method after ``setup(ctx)``.
        cfg: the composed config (``method``, ``backbone``, ``dataset``, ``train``, ``paths``, ``seed``).
        ctx: the run context (device, seed, feature cache).

    Returns:
        The record of what was done (``to_dict()`` for the result file).

    Raises:
        zsad_bench.protocol.ProtocolError: the auxiliary data shares categories with the test data.
        TrainingDiverged: the loss became non-finite (the last good checkpoint is kept).
    """
    train_cfg = section(cfg, "train")
    method_name = str(section(cfg, "method").get("name") or type(method).__name__.lower())
    entries = aux_entries(cfg)
    recipe = (method.train_recipe([e["name"] for e in entries]) or TrainRecipe()).with_overrides(train_cfg)
    aux = build_aux(entries, section(cfg, "paths"), recipe.split, list_records=False)  # records only to train
    protocol = check_aux(cfg, aux).to_dict()
    seed = recipe.seed if recipe.seed is not None else int(cfg.get("seed", ctx.seed))
    identity = _identity_of(method, cfg, recipe, aux, seed)
    digest = config_hash(identity)
    tag = f"{method_name}.{'+'.join(aux.names)}"
    store = _store(cfg, train_cfg, tag, digest)
    device = _device(ctx)
    base: _RecordBase = {"tag": tag, "config_hash": digest, "epochs": recipe.epochs, "protocol": protocol,
                         "recipe": asdict(recipe), "device": str(device)}  # fmt: skip
    if train_cfg.get("checkpoint"):
        return _load_file(method, Path(str(train_cfg["checkpoint"])), base, device)
    found = None if train_cfg.get("retrain") else store.find_complete()
    if found is not None:
        folder, meta = found
        method.load_learnable_state(store.load_model(folder, meta, device))
        logger.info("%s: loaded the trained weights from %s", tag, folder)
        losses, report = list(meta.get("losses", [])), dict(meta.get("method_report", {}))
        return TrainRecord(folder=str(folder), status="loaded", losses=losses, method=report, **base)
    partial = None if train_cfg.get("retrain") else store.find_partial()
    aux.list_records(recipe.max_per_category)
    run = _Training(method, recipe, aux, store, device, seed, train_cfg, section(cfg, "backbone"))
    records = {"count": len(aux.records), "digest": aux.digest()}  # recorded, not hashed: see _identity_of
    run.meta = {"method": method_name, "identity": identity, "protocol": protocol, "aux_records": records}
    record = run.run(partial)
    report = method.training_report()
    return TrainRecord(folder=str(store.write_folder), **base, **record, amp=run.loop.amp, method=report)


def _identity_of(method: Method, cfg: Any, recipe: TrainRecipe, aux: AuxData, seed: int) -> dict[str, Any]:
    """Everything that determines the trained weights (hashed into the checkpoint name).

    The auxiliary *selections* (datasets, categories, split, ``max_per_category`` in the recipe)
    are hashed, not the listed records, so a stored training is found without the auxiliary data
    on disk; the records' count and digest go into ``meta.json`` instead.
    """
    method_cfg = section(cfg, "method")
    for key in getattr(method, "inference_keys", ()):
        method_cfg.pop(key, None)
    backbone = {k: v for k, v in section(cfg, "backbone").items() if k != "weights_root"}
    identity = {
        "trainer": TRAINER_VERSION,
        "method": method_cfg,
        "backbone": backbone,
        "recipe": asdict(recipe),
        "seed": seed,
        "aux": [asdict(s) for s in aux.selections],
    }
    inputs = getattr(method, "training_identity", None)
    if callable(inputs):  # inputs read from files the config only names (e.g. KAnoCLIP's knowledge texts)
        identity["inputs"] = inputs()
    return identity


def _store(cfg: Any, train_cfg: Mapping[str, Any], tag: str, digest: str) -> CheckpointStore:
    paths = section(cfg, "paths")
    weights = Path(str(paths.get("weights_root", "weights"))) / "trained"
    results = Path(str(paths.get("results_root", "results"))) / "checkpoints"
    write = Path(str(train_cfg["checkpoint_dir"])) if train_cfg.get("checkpoint_dir") else results
    return CheckpointStore(tag, digest, roots=[weights, results], write_root=write)


def _load_file(method: Method, path: Path, base: _RecordBase, device: Any) -> TrainRecord:
    """``train.checkpoint=<file>``: load learnable parameters from a safetensors file."""
    method.load_learnable_state(load_state(path, device))
    logger.info("%s: loaded learnable parameters from %s (train.checkpoint)", base["tag"], path)
    return TrainRecord(folder=str(path), status="loaded", **base)


def _items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DataLoader's collate function: keep the decoded items as they are."""
    return items


class _Training:
    """One training run with checkpoints (fresh or resumed)."""

    def __init__(
        self,
        method: Method,
        recipe: TrainRecipe,
        aux: AuxData,
        store: CheckpointStore,
        device: torch.device,
        seed: int,
        train_cfg: Mapping[str, Any],
        backbone_cfg: Mapping[str, Any],
    ) -> None:
        self.method, self.recipe, self.aux, self.store = method, recipe, aux, store
        self.device, self.seed, self.train_cfg = device, seed, train_cfg
        self.backbone_cfg = dict(backbone_cfg)
        self.meta: dict[str, Any] = {}
        if not self.backbone_cfg.get("input_size"):
            raise KeyError("training needs backbone.input_size to preprocess the auxiliary images")
        self.kept = self._keep_decoded()  # decoded items reused by later epochs (None: decode every epoch)
        seed_all(seed)
        self.loop = Loop(method, recipe, device, amp=bool(train_cfg.get("amp", True)))

    def run(self, partial: Mapping[str, Any] | None) -> dict[str, Any]:
        """Train the remaining epochs; returns the record fields (status, steps, losses, seconds, resumed_from)."""
        start, losses, resumed = 1, [], None
        self.epoch_seconds: list[float] = []
        if partial is not None and self._resume(partial):
            resumed, losses = int(partial["epoch"]), list(partial.get("losses", []))
            start = resumed + 1
        t0 = time.perf_counter()
        self.method.set_training(True)
        try:
            with deterministic(self.device):
                for epoch in range(start, self.recipe.epochs + 1):
                    losses.append(self._epoch(epoch, losses))
        finally:
            self.method.set_training(False)
        seconds = round(time.perf_counter() - t0, 3)
        status = "resumed" if resumed is not None else "trained"
        return {
            "status": status,
            "steps": self.loop.steps,
            "losses": losses,
            "seconds": seconds,
            "epoch_seconds": self.epoch_seconds,
            "resumed_from": resumed,
        }

    def _resume(self, meta: Mapping[str, Any]) -> bool:
        folder = self.store.write_folder
        optim = self.store.load_optim(folder, meta)
        if optim is None:
            logger.warning(
                "%s: interrupted run at epoch %s has no optimizer state; training anew", self.store.tag, meta["epoch"]
            )
            return False
        self.method.load_learnable_state(self.store.load_model(folder, meta, self.device))
        self.loop.load(optim)
        logger.info("%s: resuming after epoch %s from %s", self.store.tag, meta["epoch"], folder)
        return True

    def _loader(self, epoch: int) -> Iterator[Batch | None]:
        """The epoch's batches in its seeded order: decoded, or from the decoded items kept in memory."""
        import torch

        order = epoch_order(len(self.aux.records), self.seed, epoch)
        size = self.recipe.batch_size
        if self.kept is not None and len(self.kept) == len(order):
            chunks = (order[i : i + size] for i in range(0, len(order), size))
            return (to_batch([self.kept[i] for i in chunk], self.aux, self.device) for chunk in chunks)
        mosaic = dict(self.recipe.mosaic)
        dataset = AuxDataset(self.aux, self.backbone_cfg, mosaic=mosaic, seed=self.seed, epoch=epoch)
        loader: torch.utils.data.DataLoader[dict[str, Any]] = torch.utils.data.DataLoader(
            dataset,  # type: ignore[arg-type]  # a map-style dataset by duck typing, not a torch Dataset
            batch_size=size,
            sampler=order,
            num_workers=int(self.train_cfg.get("num_workers") or 0),
            collate_fn=_items,
        )
        return (to_batch(self._keep(items), self.aux, self.device) for items in loader)

    def _keep(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Remember decoded items for the next epochs when ``train.keep_decoded_mb`` allows it."""
        if self.kept is not None:
            self.kept.update({it["index"]: it for it in items if it["error"] is None})
        return items

    def _keep_decoded(self) -> dict[int, dict[str, Any]] | None:
        """An empty store when the decoded auxiliary set fits ``train.keep_decoded_mb`` and no mosaic applies."""
        limit = float(self.train_cfg.get("keep_decoded_mb") or 0) * 2**20
        s = int(self.backbone_cfg["input_size"])
        needed = len(self.aux.records) * (3 * s * s * 4 + s * s)  # float32 image + bool mask
        mosaics = any(p > 0 and name in self.aux.names for name, p in self.recipe.mosaic)
        return {} if needed <= limit and not mosaics else None

    def _epoch(self, epoch: int, previous: list[float]) -> float:
        n_steps = math.ceil(len(self.aux.records) / self.recipe.batch_size)
        if self.recipe.max_steps is not None:
            n_steps = min(n_steps, self.recipe.max_steps)
        desc = f"{self.store.tag} epoch {epoch}/{self.recipe.epochs}"
        t = time.perf_counter()
        try:
            with progress_bar(bool(self.train_cfg.get("progress", True)), n_steps, desc) as bar:
                loss = run_epoch(self.loop, self._loader(epoch), epoch, self.recipe.epochs, bar)
        except TrainingDiverged as exc:
            kept = (
                f"the checkpoint of epoch {epoch - 1} is kept in {self.store.write_folder}"
                if epoch > 1
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"{self.store.tag}: {exc}. Training stopped; {kept}. Try a lower train.lr, train.amp=false, "
                "or check the auxiliary images; train.retrain=true starts again from scratch."
            ) from exc
        self.epoch_seconds.append(round(time.perf_counter() - t, 3))
        logger.info("%s: loss %.5f (%.1f s)", desc, loss, self.epoch_seconds[-1])
        self.method.end_of_epoch(epoch, self.recipe.epochs)  # validation / epoch selection, before the checkpoint
        self._save(epoch, [*previous, loss], complete=epoch == self.recipe.epochs)
        return loss

    def _save(self, epoch: int, losses: list[float], complete: bool) -> None:
        meta = {
            **self.meta,
            "epochs": self.recipe.epochs,
            "losses": losses,
            "method_report": self.method.training_report(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        state = self.method.learnable_state()
        self.store.save_epoch(epoch, state, None if complete else self.loop.state(), meta, complete=complete)
