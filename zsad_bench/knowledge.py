"""Anomaly knowledge for KAnoCLIP's knowledge-driven prompts: files, LLM generation, VQA descriptions.

KAnoCLIP (arXiv 2501.03786, §2.2.1) builds an "LLM-VQA knowledge base": n = 5 LLM
answers per category to "Describe what an abnormal image of <class> looks like?" and m = 1 VQA
description per training image. Three pluggable sources provide it here:

1. **knowledge files** (YAML, :class:`KnowledgeFile`): the files shipped in ``conf/knowledge/``
   (written by the zsad-bench contributors, marked ``source: written``) or files written by
   :func:`generate_llm_knowledge` (``source: llm``, with the model and the question) that can be
   reviewed and versioned;
2. **LLM generation** through a transformers ``text-generation`` pipeline with any local model
   (``zsad-bench knowledge generate model=<path> dataset=<name>``);
3. **VQA descriptions per image** through an ``image-text-to-text`` pipeline (a vision-language
   model; transformers 5 has no ``visual-question-answering`` task any more), cached as one JSON
   file per image (:class:`VQACache`, ``zsad-bench knowledge vqa ...``).

Nothing here downloads anything: pipelines are built from what the user names (a local folder,
or a model object). Transformers is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "LLM_QUESTION",
    "VQA_QUESTION",
    "KnowledgeBase",
    "KnowledgeFile",
    "VQACache",
    "clean_answer",
    "describe_images",
    "generate_llm_knowledge",
    "generic_descriptions",
    "shipped_knowledge",
    "shipped_knowledge_files",
]

logger = logging.getLogger(__name__)

FORMAT = "zsad-bench-knowledge/1"
LLM_QUESTION = "Q: Describe what an abnormal image of {cls} looks like?"  # the paper's template (§2.2.1)
VQA_QUESTION = (
    "Q: Identify anomalies in the input image of the specified class ({cls}). "
    "Describe each anomaly's location, color, shape, size, and other characteristics."
)
SOURCES = ("written", "llm", "vqa", "generic")


@dataclass
class KnowledgeFile:
    """A set of anomaly descriptions per class name (the words used in prompts: "metal nut").

    Attributes:
        descriptions: class name → descriptions of how an abnormal image of it looks.
        source: ``written`` (by people), ``llm`` (generated) or ``generic`` (templates).
        author: who wrote or generated it.
        model: the generating model (LLM files).
        question: the question asked, with ``{cls}`` for the class name.
        notes: free text.
        path: the file it was read from, if any.
        label: how results name it (the file name; "shipped" for the merged shipped files).
    """

    descriptions: dict[str, list[str]]
    source: str = "written"
    author: str = ""
    model: str = ""
    question: str = LLM_QUESTION
    notes: str = ""
    path: Path | None = None
    label: str = ""

    @classmethod
    def load(cls, path: str | Path) -> KnowledgeFile:
        """Read and validate a knowledge file.

        Raises:
            FileNotFoundError: naming the file.
            ValueError: naming the file and the malformed field.
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such knowledge file (write one with `zsad-bench knowledge generate`)")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if raw.get("format") != FORMAT:
            raise ValueError(f"{path}: `format: {FORMAT}` expected, got {raw.get('format')!r}")
        desc = raw.get("descriptions")
        if not isinstance(desc, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) and s.strip() for s in v) for v in desc.values()
        ):
            raise ValueError(f"{path}: `descriptions` must map each class name to a list of non-empty strings")
        source = str(raw.get("source", "written"))
        if source not in SOURCES:
            raise ValueError(f"{path}: source {source!r} is not one of {SOURCES}")
        return cls(
            descriptions={str(k): [s.strip() for s in v] for k, v in desc.items()},
            source=source,
            author=str(raw.get("author", "")),
            model=str(raw.get("model", "") or ""),
            question=str(raw.get("question", LLM_QUESTION)),
            notes=str(raw.get("notes", "")),
            path=path,
            label=path.name,
        )

    def save(self, path: str | Path) -> Path:
        """Write the file as YAML (class names sorted); returns the path."""
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "format": FORMAT,
            "source": self.source,
            "author": self.author,
            "model": self.model,
            "question": self.question,
            "notes": self.notes,
            "descriptions": {k: list(self.descriptions[k]) for k in sorted(self.descriptions)},
        }
        path.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8")
        return path


def shipped_knowledge_files() -> list[Path]:
    """The knowledge files shipped in ``zsad_bench.conf/knowledge`` (sorted)."""
    from importlib.resources import files

    folder = Path(str(files("zsad_bench.conf") / "knowledge"))
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def shipped_knowledge() -> KnowledgeFile:
    """All shipped files merged (a later file adds descriptions for classes an earlier one lacks)."""
    merged: dict[str, list[str]] = {}
    for path in shipped_knowledge_files():
        for name, desc in KnowledgeFile.load(path).descriptions.items():
            merged.setdefault(name, list(desc))
    notes = "shipped files merged: " + ", ".join(p.name for p in shipped_knowledge_files())
    return KnowledgeFile(merged, source="written", author="zsad-bench contributors", notes=notes, label="shipped")


def generic_descriptions(cls: str) -> list[str]:
    """Five class-agnostic descriptions (the fallback for a class no source covers)."""
    return [
        f"An abnormal image of {cls} shows a local defect such as a scratch, crack or hole.",
        f"An abnormal image of {cls} may show a stain or a discoloured region.",
        f"An abnormal image of {cls} may show a missing, broken or deformed part.",
        f"An abnormal image of {cls} may show contamination or a foreign object on its surface.",
        f"An abnormal image of {cls} shows an irregular structure that differs from a normal {cls}.",
    ]


class KnowledgeBase:
    """Descriptions per class name from knowledge files (first file wins), then generic templates.

    Args:
        files: knowledge files in priority order.
        generic_fallback: use :func:`generic_descriptions` for classes no file covers
            (else a :class:`KeyError` naming the class and the files searched).
        per_class: at most this many descriptions per class (the paper's n = 5; None: all).
    """

    def __init__(
        self, files: Sequence[KnowledgeFile], generic_fallback: bool = True, per_class: int | None = 5
    ) -> None:
        self.files = list(files)
        self.generic_fallback = generic_fallback
        self.per_class = per_class
        self.used: dict[str, str] = {}  # class → where its descriptions came from

    def descriptions(self, cls: str) -> list[str]:
        """The descriptions of ``cls`` (looked up as given, then lower-cased with spaces for '_')."""
        keys = (cls, cls.lower().replace("_", " "))
        for f in self.files:
            for key in keys:
                if f.descriptions.get(key):
                    self.used[cls] = f"{f.source}:{f.label or 'in-memory'}"
                    return f.descriptions[key][: self.per_class]
        if not self.generic_fallback:
            where = [str(f.path or f.source) for f in self.files]
            raise KeyError(
                f"no knowledge for class {cls!r} in {where}; add it to a knowledge file or allow the fallback"
            )
        self.used[cls] = "generic"
        return generic_descriptions(cls)[: self.per_class]

    def report(self) -> dict[str, Any]:
        """Which source served each class (for the result file)."""
        sources = sorted({v.split(":", 1)[0] for v in self.used.values()})
        return {"sources": sources, "classes": dict(sorted(self.used.items()))}


# ----------------------------------------------------------------------------- generation
def clean_answer(text: str, prompt: str = "", max_chars: int = 300) -> str:
    r"""One description from a generated answer: the prompt removed, whitespace collapsed, first lines kept.

    Example:
        >>> clean_answer("Q: x?  A: It has a   crack.\nMore", prompt="Q: x?")
        'It has a crack. More'
    """
    if prompt and text.startswith(prompt):
        text = text[len(prompt) :]
    text = re.sub(r"^\s*(A:|Answer:)\s*", "", text.strip())
    text = re.sub(r"\s+", " ", text).strip()
    return text[:max_chars].strip()


def _pipeline(task: str, model: Any, **kw: Any) -> Any:
    """A transformers pipeline for ``model`` (a pipeline, a model object or a local path)."""
    if callable(model) and hasattr(model, "task"):
        return model
    from transformers import pipeline

    if isinstance(model, (str, Path)) and not Path(model).exists():
        raise FileNotFoundError(f"{model}: no such local model folder (nothing is downloaded; name a local model)")
    source = str(model) if isinstance(model, (str, Path)) else model
    # transformers overloads ``pipeline`` for literal task names only; the implementation takes any str
    return pipeline(task, model=source, **kw)  # type: ignore[call-overload]


def generate_llm_knowledge(
    model: Any,
    classes: Iterable[str],
    n: int = 5,
    *,
    tokenizer: Any = None,
    question: str = LLM_QUESTION,
    max_new_tokens: int = 60,
    seed: int = 0,
    model_name: str = "",
) -> KnowledgeFile:
    """Ask a text-generation model the paper's question for every class, ``n`` sampled answers each.

    Args:
        model: a local model folder, a transformers model (with ``tokenizer``) or a pipeline.
        classes: class names (prompt words).
        n: answers per class (the paper: 5).
        tokenizer: the tokenizer when ``model`` is a model object.
        question: the question with ``{cls}``.
        max_new_tokens: answer length.
        seed: sampling seed.
        model_name: recorded in the file (default: the model's name or path).

    Returns:
        A :class:`KnowledgeFile` with ``source: llm``; empty answers are replaced by a
        "(no answer)" placeholder so that every class has ``n`` entries (review the file).
    """
    from transformers import set_seed

    pipe = (
        _pipeline("text-generation", model, tokenizer=tokenizer)
        if tokenizer is not None
        else _pipeline("text-generation", model)
    )
    set_seed(seed)
    out: dict[str, list[str]] = {}
    for cls in classes:
        prompt = question.format(cls=cls) + " A:"
        answers = pipe(
            prompt, num_return_sequences=n, do_sample=True, max_new_tokens=max_new_tokens, return_full_text=False
        )
        texts = [clean_answer(a["generated_text"], prompt) for a in answers]
        out[cls] = [t or "(no answer)" for t in texts]
        logger.info("knowledge: %d answers for %r", len(texts), cls)
    name = model_name or _model_name(pipe, model)
    return KnowledgeFile(out, source="llm", author="generated", model=name, question=question)


def _model_name(pipe: Any, model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    cfg = getattr(getattr(pipe, "model", None), "config", None)
    return str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "unknown"))


@dataclass
class VQACache:
    """One JSON file per (image, model, question) under ``root``: the VQA description of that image.

    Attributes:
        root: the cache folder (e.g. ``<paths.cache_root>/knowledge/vqa``).
        model: the model name recorded in every entry and hashed into its key.
    """

    root: Path
    model: str = ""
    _memo: dict[str, str | None] = field(default_factory=dict)

    def key(self, image: str | Path, question: str) -> str:
        """A stable key of the image file (resolved path, size, mtime), the model and the question."""
        p = Path(image)
        stat = p.stat() if p.exists() else None
        ident = f"{p.resolve()}|{stat.st_size if stat else ''}|{int(stat.st_mtime) if stat else ''}"
        return hashlib.sha1(f"{ident}|{self.model}|{question}".encode()).hexdigest()

    def path(self, image: str | Path, question: str) -> Path:
        """The entry file of one image."""
        k = self.key(image, question)
        return Path(self.root) / k[:2] / f"{k}.json"

    def get(self, image: str | Path, question: str) -> str | None:
        """The cached description, or None."""
        p = self.path(image, question)
        if not p.is_file():
            return None
        return str(json.loads(p.read_text(encoding="utf-8"))["description"])

    def put(self, image: str | Path, question: str, description: str) -> Path:
        """Store one description (written to a temporary file and renamed)."""
        p = self.path(image, question)
        p.parent.mkdir(parents=True, exist_ok=True)
        entry = {"image": str(image), "model": self.model, "question": question, "description": description}
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
        tmp.replace(p)
        return p

    def lookup(self, images: Sequence[str | Path], classes: Sequence[str]) -> list[str | None]:
        """Descriptions of the images (the question filled with each image's class), None where absent."""
        out = []
        for image, cls in zip(images, classes, strict=True):
            q = VQA_QUESTION.format(cls=cls)
            key = f"{image}|{q}"
            if key not in self._memo:
                self._memo[key] = self.get(image, q)
            out.append(self._memo[key])
        return out


def describe_images(
    model: Any,
    images: Sequence[str | Path],
    classes: Sequence[str],
    cache: VQACache,
    *,
    processor: Any = None,
    max_new_tokens: int = 60,
) -> list[str]:
    """The VQA description of each image (m = 1), from the cache or asked and cached.

    Args:
        model: a local model folder, a model object (with ``processor``) or a pipeline.
        images: image files.
        classes: the class name of each image.
        cache: where descriptions are kept.
        processor: the processor when ``model`` is a model object.
        max_new_tokens: answer length.
    """
    from PIL import Image

    pipe = None
    out = []
    for image, cls in zip(images, classes, strict=True):
        q = VQA_QUESTION.format(cls=cls)
        found = cache.get(image, q)
        if found is None:
            if pipe is None:
                task = "image-text-to-text"  # transformers 5 removed visual-question-answering
                pipe = _pipeline(task, model, processor=processor) if processor is not None else _pipeline(task, model)
            with Image.open(image) as im:
                found = _ask(pipe, im.convert("RGB"), q, max_new_tokens)
            cache.put(image, q, found)
        out.append(found)
    return out


def _ask(pipe: Any, image: Any, question: str, max_new_tokens: int) -> str:
    """One answer of an image-text-to-text pipeline (the image token is put before the question)."""
    token = getattr(getattr(pipe, "processor", None), "image_token", None)
    prompt = f"{token} {question}" if token and token not in question else question  # the image's place
    res = pipe(images=image, text=prompt, max_new_tokens=max_new_tokens, return_full_text=False)
    first = res[0] if isinstance(res, list) else res
    text = first.get("generated_text", "") if isinstance(first, Mapping) else str(first)
    if isinstance(text, list):  # chat format: a list of messages
        text = str(text[-1].get("content", "")) if text else ""
    return clean_answer(str(text), question) or "(no answer)"
