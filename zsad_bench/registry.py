"""Registries for methods, datasets and backbones.

One small generic :class:`Registry` and three instances. Entries are registered with a
decorator under an explicit name, carry a card (a frozen dataclass) and record the
``module:qualname`` they came from. Discovery is lazy: the first lookup imports every
module of the first-party plugin package once, then the third-party plugins declared as
entry points (groups ``zsad_bench.methods``, ``zsad_bench.datasets``,
``zsad_bench.backbones``).
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from zsad_bench.types import BackboneCard, DatasetCard, MethodCard

__all__ = [
    "BACKBONES",
    "DATASETS",
    "METHODS",
    "Entry",
    "Registry",
    "register_backbone",
    "register_dataset",
    "register_method",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with its card and origin."""

    name: str
    obj: T
    card: Any
    origin: str  # "module:qualname"

    @property
    def module(self) -> str:
        """The module that registered the object."""
        return self.origin.split(":", 1)[0]


def _origin(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


@dataclass
class Registry(Generic[T]):
    """A strict name → object registry with lazy plugin discovery.

    Args:
        kind: what is registered ("method", "dataset", "backbone"), used in messages.
        card_type: the frozen dataclass that describes each entry.
        package: the first-party plugin package imported on first lookup.
        group: the entry-point group of third-party plugins.
    """

    kind: str
    card_type: type
    package: str | None = None
    group: str | None = None
    _entries: dict[str, Entry[T]] = field(default_factory=dict)
    _discovered: bool = False

    def register(self, name: str, **card: Any) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``.

        Raises:
            ValueError: if another object is already registered under ``name``.
            TypeError: if a card field is unknown.
        """
        if not name or name != name.strip() or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use lowercase letters, digits and '_'")

        def deco(obj: T) -> T:
            self.add(name, obj, **card)
            return obj

        return deco

    def add(self, name: str, obj: T, **card: Any) -> None:
        """Register ``obj`` under ``name`` (the non-decorator form)."""
        known = {f.name for f in fields(self.card_type)}
        unknown = sorted(set(card) - known)
        if unknown:
            raise TypeError(f"unknown {self.kind} card field(s) {unknown}; known: {sorted(known)}")
        origin = _origin(obj)
        old = self._entries.get(name)
        if old is not None and old.origin != origin:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice: by {old.origin} and by {origin}. Rename one of them."
            )
        self._entries[name] = Entry(name, obj, self.card_type(name=name, **card), origin)

    def discover(self) -> None:
        """Import the plugin package's modules and the entry points, once."""
        if self._discovered:
            return
        self._discovered = True
        if self.package:
            pkg = importlib.import_module(self.package)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        if self.group:
            for ep in entry_points(group=self.group):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party plugin must not break the others
                    logger.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)

    def entry(self, name: str) -> Entry[T]:
        """Return the entry registered under ``name``.

        Raises:
            KeyError: naming the close matches and all available names.
        """
        self.discover()
        if name in self._entries:
            return self._entries[name]
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(sorted(self._entries))}")

    def get(self, name: str) -> T:
        """Return the object registered under ``name``."""
        return self.entry(name).obj

    def card(self, name: str) -> Any:
        """Return the card of ``name``."""
        return self.entry(name).card

    def list(self, filter: str = "*", exclude: str | None = None, **card_filters: Any) -> list[str]:
        """Sorted names matching a wildcard pattern and card field values.

        Example:
            >>> METHODS.list("*clip*")  # doctest: +SKIP
            ['adaclip', 'anoclip', 'winclip']
        """
        self.discover()
        out = []
        for name, entry in self._entries.items():
            if not fnmatch.fnmatch(name, filter) or (exclude and fnmatch.fnmatch(name, exclude)):
                continue
            if all(getattr(entry.card, k) == v for k, v in card_filters.items()):
                out.append(name)
        return sorted(out)

    def entries(self) -> builtins.list[Entry[T]]:  # ``list`` here is the method above
        """All entries, sorted by name."""
        return [self.entry(n) for n in self.list()]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and interactive sessions)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def __repr__(self) -> str:
        self.discover()
        rows = [f"{e.name:<24} {e.origin}" for e in self.entries()]
        return f"Registry[{self.kind}] ({len(rows)} entries)\n" + "\n".join(rows)


METHODS: Registry[Any] = Registry("method", MethodCard, "zsad_bench.methods", "zsad_bench.methods")
DATASETS: Registry[Any] = Registry("dataset", DatasetCard, "zsad_bench.datasets", "zsad_bench.datasets")
BACKBONES: Registry[Any] = Registry("backbone", BackboneCard, "zsad_bench.backbones", "zsad_bench.backbones")


def register_method(name: str, **card: Any) -> Callable[[T], T]:
    """Register a :class:`~zsad_bench.types.Method` subclass; ``card`` fills its MethodCard."""
    return METHODS.register(name, **card)


def register_dataset(name: str, **card: Any) -> Callable[[T], T]:
    """Register a :class:`~zsad_bench.types.DatasetFamily` subclass."""
    return DATASETS.register(name, **card)


def register_backbone(name: str, **card: Any) -> Callable[[T], T]:
    """Register a backbone builder."""
    return BACKBONES.register(name, **card)
