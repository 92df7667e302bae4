"""One registry per pluggable concept: strategies, objectives, arrival models, length models, executors.

Every name is defined once, where its implementation lives: an implementation registers itself
(``@OBJECTIVES.register("min_gpus")`` in ``optplace/solver/objectives.py``), and everything that
lists or checks names — the spec schema (``optplace schema``), spec validation (``optplace check``),
the CLI's ``--strategy`` / ``--strategies``, the docs — asks the registry.

Why the registries live here, in the lowest layer, while the implementations live higher up: the
spec layer validates ``objective:``, ``solver.strategy`` and ``workload.arrivals.kind`` but may not
import the solver or the twin (``tests/test_layers.py``). So each registry knows its built-in
implementations by *module name* (:data:`BUILTIN_PLUGINS`) and imports them with ``importlib`` on
its first lookup — the usual plug-in (entry-point) pattern: a name, not an import, so the layers
stay acyclic and a spec check still knows every built-in name. Further modules are loaded the same
way from the ``OPTPLACE_PLUGINS`` environment variable (comma-separated module names), so a user's
own objective or arrival model in one file works from the command line too; code that imports a
plug-in module directly (tests) registers it by that import alone. Worker processes forked by the
local executor inherit the registries; a Ray worker starts afresh and finds plug-ins through
``OPTPLACE_PLUGINS`` (and needs their modules importable, as it unpickles their spec objects).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Environment variable naming extra plug-in modules (comma-separated), loaded with the built-ins.
PLUGINS_ENV = "OPTPLACE_PLUGINS"


class UnknownName(ValueError):
    """A name no implementation registered; the message lists the registered ones."""


class Registry(Generic[T]):
    """Names → implementations of one concept, filled by the implementations' modules.

    ``concept`` names the concept in messages ("objective"); ``plugins`` are the modules that
    register the built-in implementations, imported on the first lookup. Names keep registration
    order (the order the CLI and the docs list them in).
    """

    def __init__(self, concept: str, plugins: tuple[str, ...]) -> None:
        self.concept = concept
        self.plugins = plugins
        self._items: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, name: str, item: T | None = None) -> Any:
        """Register ``item`` under ``name``; without ``item``, a decorator registering what it decorates:
        a function as is, a class as one instance, with its ``name`` attribute set to ``name`` (the one
        place the name is written). Registering a taken name is an error."""
        if item is not None:
            self._add(name, item)
            return item

        def deco(obj: Any) -> Any:
            if isinstance(obj, type):
                setattr(obj, "name", name)  # noqa: B010 (mypy: `type` has no attribute `name`)
                self._add(name, obj())
            else:
                self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, item: T) -> None:
        with self._lock:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.concept} {name!r} is already registered")
            self._items[name] = item

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a temporary implementation)."""
        with self._lock:
            self._items.pop(name, None)

    def load(self) -> None:
        """Import the built-in plug-in modules and those named by ``OPTPLACE_PLUGINS`` (once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: a plug-in module may look names up while it is imported
            extra = tuple(m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip())
            for module in (*self.plugins, *extra):
                importlib.import_module(module)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        self.load()
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        self.load()
        return isinstance(name, str) and name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> tuple[tuple[str, T], ...]:
        self.load()
        return tuple(self._items.items())

    def get(self, name: str) -> T:
        """The implementation registered as ``name``; :class:`UnknownName` lists the valid ones."""
        self.load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownName(self.unknown(name)) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def unknown(self, name: object) -> str:
        """The one-line message for a name nobody registered."""
        return f"unknown {self.concept} {name!r} (registered: {', '.join(self.names())})"

    def check(self, name: Any) -> Any:
        """``name`` when registered, else :class:`UnknownName` (a pydantic field validator)."""
        if name not in self:
            raise UnknownName(self.unknown(name))
        return name

    def where(self, pred: Callable[[T], bool]) -> tuple[str, ...]:
        """Names whose implementation satisfies ``pred``."""
        return tuple(n for n, item in self.items() if pred(item))


#: The modules that register each concept's built-in implementations (imported on first lookup).
BUILTIN_PLUGINS: dict[str, tuple[str, ...]] = {
    "strategy": ("optplace.solver.strategies",),
    "objective": ("optplace.solver.objectives",),
    "arrival model": ("optplace.twin.arrivals",),
    "length model": ("optplace.twin.lengths", "optplace.twin.arrivals"),  # trace lengths: by the trace reader
    "executor": ("optplace.infra.executors",),
}

STRATEGIES: Registry[Any] = Registry("strategy", BUILTIN_PLUGINS["strategy"])
OBJECTIVES: Registry[Any] = Registry("objective", BUILTIN_PLUGINS["objective"])
ARRIVALS: Registry[Any] = Registry("arrival model", BUILTIN_PLUGINS["arrival model"])
LENGTHS: Registry[Any] = Registry("length model", BUILTIN_PLUGINS["length model"])
EXECUTORS: Registry[Any] = Registry("executor", BUILTIN_PLUGINS["executor"])
