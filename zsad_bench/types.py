"""The data contracts shared by datasets, methods, the evaluation loop and the metrics.

Shapes use B batch, H×W map, C channels. Nothing here imports torch at module level, so
that plugin modules stay cheap to import; tensors are typed as ``torch.Tensor`` in
annotations only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch

    from zsad_bench.context import Context

__all__ = [
    "BackboneCard",
    "Batch",
    "DatasetCard",
    "DatasetFamily",
    "DatasetInfo",
    "DownloadInfo",
    "Method",
    "MethodCard",
    "Prediction",
    "SampleRecord",
]

Domain = Literal["industrial", "medical", "mixed"]
Split = Literal["train", "test"]


# ----------------------------------------------------------------------------- cards
@dataclass(frozen=True)
class MethodCard:
    """What a method is, where it comes from and what it supports."""

    name: str
    title: str = ""
    paper: str = ""  # "Venue Year"
    arxiv: str = ""  # "2303.14814"
    code: str = ""  # official code URL, "" when none exists
    commit: str = ""  # the commit of the official code we follow
    license: str = ""  # the official code's licence
    trainable: bool = False
    shots: tuple[int, ...] = (0,)
    backbone: str = ""
    input_size: int = 0
    summary: str = ""


@dataclass(frozen=True)
class DatasetCard:
    """A registered dataset family (details are in :meth:`DatasetFamily.info`)."""

    name: str
    title: str = ""
    summary: str = ""


@dataclass(frozen=True)
class BackboneCard:
    """A registered backbone."""

    name: str
    family: str = ""  # "clip", "dinov2", "sam"
    arch: str = ""  # e.g. the open_clip model name
    input_size: int = 0
    license: str = ""
    summary: str = ""


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SampleRecord:
    """One test or training image as found on disk; nothing is decoded.

    Attributes:
        image_path: the image file.
        label: 0 normal, 1 anomalous.
        mask_path: the ground-truth mask, or None (normal images, datasets without masks).
        category: the dataset's category name ("pipe_fryum").
        defect_type: "good" for normal images, else the defect folder or class.
        split: "train" or "test".
        dataset: the registered dataset name.
    """

    image_path: Path
    label: int
    mask_path: Path | None
    category: str
    defect_type: str
    split: str
    dataset: str = ""

    @property
    def key(self) -> str:
        """A stable identifier: dataset/category/split/defect/parent folder/file name.

        The parent folder is part of it because some layouts reuse file names across
        folders of one category (KolektorSDD: ``kos01/Part0.jpg`` and ``kos02/Part0.jpg``).
        """
        parts = (self.dataset, self.category, self.split, self.defect_type, self.image_path.parent.name)
        return "/".join(parts) + f"/{self.image_path.name}"


@dataclass(frozen=True)
class DownloadInfo:
    """Where a dataset can be obtained and where to put it."""

    page: str = ""
    archive: str = ""
    sha256: str = ""
    notes: str = ""
    md5: str = ""  # where only an md5 is published (anomalib's older releases)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset family.

    Attributes:
        name: registered name.
        domain: "industrial", "medical", or "mixed" (then see ``category_domains``).
        modality: e.g. "rgb", "ct", "mri", "x-ray", "endoscopy", "ultrasound", "oct".
        categories: category names as on disk.
        prompt_names: category → words used in prompts ("pipe_fryum" → "pipe fryum").
        has_image_labels: whether normal and anomalous test images both exist.
        has_masks: whether pixel-level ground truth exists.
        expected: category → split → (normal, anomalous) counts of the distributed copy.
        default_aux: the auxiliary training set the papers use before testing on this one.
        overlaps: other datasets whose categories count as the same for the zero-shot guard.
        download: where to get it.
        subdir: the folder name expected under ``paths.data_root``.
        mask_threshold: mask pixel values above it are anomalous.
        category_domains: category → domain, for "mixed" datasets.
        expected_totals: split → (normal, anomalous) over all categories, as published; used where
            per-category counts are unknown (else the sum of ``expected``).
        count_notes: where the expected counts come from and how sure they are.
        splits: the splits ``records`` accepts.
        mask_size_must_match: whether a mask of another size than its image is an error.
    """

    name: str
    domain: Domain
    modality: str
    categories: tuple[str, ...]
    prompt_names: Mapping[str, str] = field(default_factory=dict)
    has_image_labels: bool = True
    has_masks: bool = True
    expected: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    default_aux: str | None = None
    overlaps: tuple[str, ...] = ()
    download: DownloadInfo = field(default_factory=DownloadInfo)
    subdir: str = ""
    mask_threshold: int = 0  # a mask value > threshold is anomalous (JPEG masks need ~127)
    category_domains: Mapping[str, str] = field(default_factory=dict)
    expected_totals: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    count_notes: str = ""
    splits: tuple[str, ...] = ("train", "test")
    mask_size_must_match: bool = True

    def expected_counts(self, split: str = "test") -> tuple[int, int] | None:
        """(normal, anomalous) images of ``split`` over all categories, or None when unknown."""
        per_cat = [self.expected.get(c, {}).get(split) for c in self.categories]
        known = [c for c in per_cat if c is not None]
        if per_cat and len(known) == len(per_cat):
            return (sum(c[0] for c in known), sum(c[1] for c in known))
        return self.expected_totals.get(split)

    def domain_of(self, category: str) -> str:
        """The domain of one category ("mixed" datasets declare it per category)."""
        return self.category_domains.get(category, self.domain)

    def prompt_name(self, category: str) -> str:
        """The words for ``category`` in prompts (underscores become spaces by default)."""
        return self.prompt_names.get(category, category.replace("_", " "))


class DatasetFamily(ABC):
    """A dataset read from its distributed on-disk layout.

    Subclasses are registered with ``@register_dataset("name")`` and implement
    :meth:`info` and :meth:`records`. Records are lazy (nothing decoded), sorted and
    deterministic.
    """

    name: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def info(cls) -> DatasetInfo:
        """Static facts: categories, domain, ground truth kinds, expected counts."""

    def available_categories(self, root: Path) -> list[str]:
        """The categories found under ``root``; families with fixed categories return ``info().categories``."""
        return list(self.info().categories)

    @abstractmethod
    def records(self, root: Path, category: str, split: str) -> list[SampleRecord]:
        """All samples of one category and split under ``root`` (the dataset's folder).

        Raises:
            FileNotFoundError: naming the missing folder and where to get the data.
        """


@dataclass
class Batch:
    """A decoded, preprocessed batch handed to a method.

    Attributes:
        images: (B, 3, S, S) float tensor after the backbone's preprocessing.
        records: the B source records.
        class_names: B prompt words for the images' categories.
        labels: (B,) long tensor, 0/1.
        masks: (B, S, S) float tensor in {0, 1} at input resolution, or None; for training.
    """

    images: torch.Tensor
    records: list[SampleRecord]
    class_names: list[str]
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def categories(self) -> list[str]:
        """The category of each image."""
        return [r.category for r in self.records]


@dataclass
class Prediction:
    """What a method returns for a batch: higher means more anomalous.

    Attributes:
        image_scores: (B,) float tensor.
        anomaly_maps: (B, S, S) float tensor at the input resolution.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor

    def validate(self, batch_size: int) -> Prediction:
        """Check shapes and dtypes against the batch.

        Raises:
            ValueError: naming the offending field and shape.
        """
        s, m = self.image_scores, self.anomaly_maps
        if s.ndim != 1 or s.shape[0] != batch_size:
            raise ValueError(f"image_scores must have shape ({batch_size},), got {tuple(s.shape)}")
        if m.ndim != 3 or m.shape[0] != batch_size:
            raise ValueError(f"anomaly_maps must have shape ({batch_size}, H, W), got {tuple(m.shape)}")
        if not (s.is_floating_point() and m.is_floating_point()):
            raise ValueError(f"scores and maps must be floating point, got {s.dtype} and {m.dtype}")
        return self


# ----------------------------------------------------------------------------- methods
class Method:
    """Base class of every method; subclasses are registered with ``@register_method``.

    A method owns its ``Config`` dataclass (defaults = the paper's or the official code's
    values), is built from it, gets its backbone and cache in :meth:`setup`, optionally
    learns on auxiliary data in :meth:`fit`, and maps batches to :class:`Prediction`.
    It never computes metrics.
    """

    Config: ClassVar[type] = object
    trainable: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.ctx: Context | None = None

    def setup(self, ctx: Context) -> None:
        """Bind the run context: device, backbone, feature cache, categories."""
        self.ctx = ctx

    def fit(self, aux: Iterable[Batch]) -> None:
        """Learn on auxiliary batches (trainable methods only).

        The default runs the shared trainer (:func:`zsad_bench.train.fit_batches`) with the
        method's :meth:`train_recipe`; :func:`zsad_bench.train.train_or_load` is the full path
        (datasets, zero-shot guard, checkpoints) the evaluation loop uses.
        """
        if not self.trainable:
            raise NotImplementedError(f"{type(self).__name__} is not trainable")
        from zsad_bench.train import fit_batches

        fit_batches(self, aux)

    # --- the trainer's side of the contract (trainable methods; see zsad_bench/train.py) ---
    def parameters_to_train(self) -> list[torch.nn.Parameter]:
        """The parameters the shared trainer optimises."""
        return []

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar losses of one auxiliary batch (with labels and masks); the trainer sums them."""
        raise NotImplementedError(f"{type(self).__name__} has no training_step")

    def train_recipe(self, aux: Sequence[str]) -> Any:
        """The :class:`zsad_bench.train.TrainRecipe` for the auxiliary datasets ``aux`` (None: defaults)."""
        return None

    def set_training(self, mode: bool) -> None:
        """Switch the learnable modules between training and inference behaviour (dropout, batch norm)."""

    def end_of_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer after each epoch, before its checkpoint is written (validation, epoch selection)."""

    def training_report(self) -> dict[str, Any]:
        """Method-specific facts about the training for the result file (``TrainRecord.method``)."""
        return {}

    def set_references(self, normals: Batch) -> None:
        """Receive the k normal reference images of a category (few-shot methods)."""
        raise NotImplementedError(f"{type(self).__name__} has no few-shot mode")

    def predict(self, batch: Batch) -> Prediction:
        """Score a batch."""
        raise NotImplementedError

    def learnable_state(self) -> dict[str, torch.Tensor]:
        """The learnable parameters to checkpoint (empty for training-free methods)."""
        return {}

    def load_learnable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`learnable_state` returned."""
        if state:
            raise NotImplementedError(f"{type(self).__name__} has no learnable state")
