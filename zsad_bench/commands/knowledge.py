"""``zsad-bench knowledge generate|vqa|check|show``: KAnoCLIP's anomaly knowledge (:mod:`zsad_bench.knowledge`).

- ``generate model=<local model folder> dataset=<name> [n=5] [out=<file>] [max_new_tokens=60] [seed=0]``
  (``out`` defaults to ``<cache root>/knowledge/llm/<dataset>.<model>.yaml``):
  ask a text-generation model the paper's question for every category of the dataset and write a
  knowledge file (review it, then pass it as ``method.knowledge_files=[<file>]``);
- ``vqa model=<local model folder> dataset=<name> root=<dataset folder> [split=test] [cache=<folder>]
  [max_new_tokens=60] [limit=N]``: one description per image, cached per image under
  ``<cache root>/knowledge/vqa`` by default (``method.vqa_cache``);
- ``check [file=<knowledge file>]``: which registered categories the shipped files (or ``file``) lack;
- ``show [file=<knowledge file>] [class=<name>]``: print descriptions.

Nothing is downloaded: ``model`` must be a local folder (``save_pretrained`` layout).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from zsad_bench.commands import echo

__all__ = ["main", "parse_pairs", "registered_classes"]

logger = logging.getLogger(__name__)
_USAGE = __doc__.split("\n\n", 1)[1] if __doc__ else ""


def parse_pairs(argv: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments as a dict.

    Raises:
        ValueError: an argument without ``=``.
    """
    out = {}
    for arg in argv:
        if "=" not in arg:
            raise ValueError(f"expected key=value, got {arg!r}\n{_USAGE}")
        key, value = arg.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def registered_classes(dataset: str | None = None) -> dict[str, list[str]]:
    """Class names (prompt words) of every registered dataset (or one): dataset → sorted unique names."""
    from zsad_bench.registry import DATASETS

    names = [dataset] if dataset else DATASETS.list()
    out = {}
    for name in names:
        info = DATASETS.get(name).info()
        out[name] = sorted({info.prompt_name(c) for c in info.categories})
    return out


def _generate(args: dict[str, str]) -> int:
    from zsad_bench.knowledge import generate_llm_knowledge

    model, dataset = _require(args, "model"), _require(args, "dataset")
    classes = registered_classes(dataset)[dataset]
    if not classes:
        raise ValueError(f"dataset {dataset!r} declares no categories; name a dataset with fixed categories")
    kf = generate_llm_knowledge(
        model, classes, int(args.get("n", 5)), max_new_tokens=int(args.get("max_new_tokens", 60)),
        seed=int(args.get("seed", 0)),
    )  # fmt: skip
    kf.notes = f"generated for dataset {dataset}; review before use"
    from zsad_bench.features import default_cache_root

    default = Path(default_cache_root()) / "knowledge" / "llm" / f"{dataset}.{Path(model).name}.yaml"
    out = Path(args.get("out") or default)
    kf.save(out)
    echo(f"wrote {len(kf.descriptions)} classes x {args.get('n', 5)} descriptions to {out}")
    return 0


def _vqa(args: dict[str, str]) -> int:
    from zsad_bench.features import default_cache_root
    from zsad_bench.knowledge import VQACache, describe_images
    from zsad_bench.registry import DATASETS

    model, dataset, root = _require(args, "model"), _require(args, "dataset"), Path(_require(args, "root"))
    family = DATASETS.get(dataset)()
    info = family.info()
    records = [r for c in family.available_categories(root) for r in family.records(root, c, args.get("split", "test"))]
    if args.get("limit"):
        records = records[: int(args["limit"])]
    cache = VQACache(Path(args.get("cache") or Path(default_cache_root()) / "knowledge" / "vqa"), Path(model).name)
    classes = [info.prompt_name(r.category) for r in records]
    describe_images(
        model, [r.image_path for r in records], classes, cache, max_new_tokens=int(args.get("max_new_tokens", 60))
    )
    echo(f"{len(records)} images described; cache {cache.root} (method.vqa_cache={cache.root} "
          f"method.vqa_model={cache.model})")  # fmt: skip
    return 0


def _check(args: dict[str, str]) -> int:
    from zsad_bench.knowledge import KnowledgeFile, shipped_knowledge

    kf = KnowledgeFile.load(args["file"]) if args.get("file") else shipped_knowledge()
    missing = {
        d: [c for c in cs if c not in kf.descriptions] for d, cs in registered_classes(args.get("dataset")).items()
    }
    missing = {d: cs for d, cs in missing.items() if cs}
    for d, cs in missing.items():
        echo(f"{d}: no knowledge for {', '.join(cs)}")
    echo(f"{len(kf.descriptions)} classes described; {sum(map(len, missing.values()))} registered classes missing")
    return 1 if missing else 0


def _show(args: dict[str, str]) -> int:
    from zsad_bench.knowledge import KnowledgeFile, shipped_knowledge

    kf = KnowledgeFile.load(args["file"]) if args.get("file") else shipped_knowledge()
    names = [args["class"]] if args.get("class") else sorted(kf.descriptions)
    for name in names:
        echo(f"{name}:")
        for line in kf.descriptions.get(name, ["(none)"]):
            echo(f"  - {line}")
    return 0


def _require(args: dict[str, str], key: str) -> str:
    if not args.get(key):
        raise ValueError(f"zsad-bench knowledge: {key}=... is required\n{_USAGE}")
    return args[key]


def main(argv: Sequence[str]) -> int:
    """Run the sub-command; return the exit status."""
    argv = list(argv)
    actions = {"generate": _generate, "vqa": _vqa, "check": _check, "show": _show}
    if not argv or argv[0] not in actions:
        echo(f"usage: zsad-bench knowledge {{{'|'.join(actions)}}} [key=value ...]\n\n{_USAGE}")
        return 2
    try:
        return actions[argv[0]](parse_pairs(argv[1:]))
    except (ValueError, KeyError, FileNotFoundError) as exc:
        echo(f"zsad-bench knowledge {argv[0]}: {exc}")
        return 2
