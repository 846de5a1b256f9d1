"""Build registered methods and datasets from their config groups (methods validated against ``Config``)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from zsad_bench.registry import DATASETS, METHODS
from zsad_bench.types import DatasetFamily, Method

__all__ = ["DATASET_CONFIG_KEYS", "build_dataset", "build_method", "method_config"]

# keys of conf/dataset/<name>.yaml that describe the run, not the loader
DATASET_CONFIG_KEYS = frozenset({"root", "name", "categories", "aux", "domain", "options"})


def method_config(method_cfg: Mapping[str, Any] | Any) -> tuple[str, Any]:
    """Split ``method_cfg`` into the method's name and its validated ``Config`` instance.

    Args:
        method_cfg: the ``method`` config group: ``name`` plus the method's knobs.

    Returns:
        (name, config), config being an instance of the method's ``Config`` dataclass
        (``None`` for a method without one).

    Raises:
        KeyError: no ``name``, or an unknown method (with close matches).
        ValueError: an unknown knob or a value of the wrong type, naming the yaml file.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    container = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else method_cfg
    raw: dict[str, Any] = dict(container)  # type: ignore[arg-type]
    name = raw.pop("name", None)
    if not name:
        raise KeyError("the method config has no 'name'; every conf/method/<name>.yaml starts with `name: <name>`")
    cls = METHODS.get(name)
    schema = getattr(cls, "Config", object)
    if not dataclasses.is_dataclass(schema):
        if raw:
            raise ValueError(f"method {name!r} has no Config dataclass but conf/method/{name}.yaml sets {sorted(raw)}")
        return name, None
    try:
        base = OmegaConf.structured(schema)
        for key in _mapping_fields(schema) & {k for k, v in raw.items() if isinstance(v, Mapping)}:
            base[key] = raw.pop(key)  # a mapping given replaces the default one (`{}` empties it)
        merged = OmegaConf.merge(base, raw)
        return name, OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        fields = ", ".join(f.name for f in dataclasses.fields(schema))
        raise ValueError(
            f"invalid config for method {name!r} (conf/method/{name}.yaml or a method.* override): "
            f"{str(exc).splitlines()[0]}. Known keys: {fields}"
        ) from exc


def _mapping_fields(schema: type) -> set[str]:
    """The names of a config dataclass's fields whose default is a ``dict``."""
    out = set()
    for f in dataclasses.fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, dict):
            out.add(f.name)
    return out


def build_method(method_cfg: Mapping[str, Any] | Any) -> Method:
    """Instantiate the registered method named by ``method_cfg.name`` with the rest as its config.

    Example:
        >>> build_method({"name": "clip"})  # doctest: +SKIP
        <zsad_bench.methods.clip.CLIP object at ...>
    """
    name, config = method_config(method_cfg)
    return METHODS.get(name)(config)


def build_dataset(name: str, options: Mapping[str, Any] | None = None) -> DatasetFamily:
    """Instantiate a registered dataset family with its loader options (``dataset.options``).

    Raises:
        KeyError: an unknown dataset (with close matches).
        TypeError: an option the loader does not take, listing the ones it does.
    """
    cls = DATASETS.get(name)
    opts = {k: v for k, v in (options or {}).items() if k not in DATASET_CONFIG_KEYS}
    params = inspect.signature(cls).parameters
    unknown = sorted(set(opts) - set(params))
    if unknown:
        raise TypeError(f"dataset {name!r} has no option(s) {unknown}; options: {sorted(params) or 'none'}")
    return cls(**opts)
