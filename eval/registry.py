"""One registry pattern for the evaluation's methods and metrics.

Each entry (a ``Method`` subclass, a ``Metric``) has a ``name`` and registers itself, at import,
in the registry of its kind; the registry imports the modules that define entries on first use,
so importing it stays cheap (their heavy imports happen inside functions anyway).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

from lipsync.common import LipsyncError


class Registry(Mapping):
    """Name -> entry, in registration order; ``kind`` names the entries in messages ("method")."""

    def __init__(self, kind: str, package: str, modules: tuple[str, ...]):
        self.kind, self.package, self.modules = kind, package, modules
        self._entries: dict = {}
        self._loaded = False

    def register(self, entry):
        """Add ``entry`` (usable as a decorator); a missing or repeated name is a programming error."""
        name = getattr(entry, "name", "")
        if not name:
            raise ValueError(f"{entry!r} has no name")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self.modules:
                importlib.import_module(f"{self.package}.{mod}")
            # the order of ``modules``, whichever of them another import loaded first
            rank = {f"{self.package}.{m}": i for i, m in enumerate(self.modules)}
            order = sorted(enumerate(self._entries.items()),
                           key=lambda e: (rank.get(_defined_in(e[1][1]), len(rank)), e[0]))
            self._entries = dict(item for _, item in order)

    def __getitem__(self, name: str):
        self._load()
        return self._entries[name]

    def __iter__(self):
        self._load()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def pick(self, names: list[str] | None = None) -> list:
        """The entries called ``names`` (None: all), each once; unknown names are one ``LipsyncError``."""
        self._load()
        if names is None:
            return list(self._entries.values())
        unknown = [n for n in names if n not in self._entries]
        if unknown:
            raise LipsyncError(f"unknown {self.kind} {', '.join(map(repr, unknown))}; choose from {', '.join(self._entries)}.")
        return [self._entries[n] for n in dict.fromkeys(names)]


def _defined_in(entry) -> str:
    """The module that defines an entry: a class's own, or that of a record's ``compute``."""
    if isinstance(entry, type):
        return entry.__module__
    return getattr(getattr(entry, "compute", None), "__module__", "")
