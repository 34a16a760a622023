"""Build-by-name registries (methods, CAM refiners, backbones, datasets).

Modelled on timm's model registry: each implementation registers itself with a
decorator at import time; asking for an unknown name fails with the list of
known names.

A registry can also be *lazy*: :func:`scan_plugins` finds, without importing
anything, which module of a package registers which name (a class decorated with
the registry's decorator and a literal ``name = "..."``), and :meth:`Registry.get`
imports that one module on first use. A job then imports only the plug-ins it
runs, so the code a job depends on (and the Snakemake code inputs derived from
its imports, :mod:`wsss.code_deps`) is exactly what it executes.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@cache
def scan_plugins(package: str, decorator: str) -> dict[str, str]:
    """``{registered name: module}`` for the classes of ``package``'s modules that carry
    ``@decorator`` and a literal class attribute ``name``; read from the source files,
    nothing is imported. Raises ValueError when a name is registered twice."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package} is not a package")
    found: dict[str, str] = {}
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            module = f"{package}.{path.stem}"
            for node in ast.parse(path.read_text(), str(path)).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
                if decorator not in decorators:
                    continue
                name = _literal_name(node)
                if name is None:
                    raise ValueError(
                        f"{path}: class {node.name} is registered with @{decorator} but has no "
                        'literal `name = "..."` attribute'
                    )
                if found.setdefault(name, module) != module:
                    raise ValueError(f"{name!r} is registered in {found[name]} and {module}")
    return found


def _literal_name(node: ast.ClassDef) -> str | None:
    for statement in node.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign):
            targets, value = [statement.target], statement.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "name" for t in targets):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    return None


class Registry(Generic[T]):
    """Name -> implementation. With ``plugins`` (a callable giving ``{name: module}``),
    names that are not registered yet are imported from their module on first use."""

    def __init__(self, kind: str, plugins: Callable[[], dict[str, str]] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._plugins = plugins

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def module_of(self, name: str) -> str | None:
        """The module that registers ``name`` (lazy registries), or None."""
        return self._plugins().get(name) if self._plugins else None

    def get(self, name: str) -> T:
        if name not in self._entries and (module := self.module_of(name)):
            importlib.import_module(module)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries or (isinstance(name, str) and bool(self.module_of(name)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._plugins() if self._plugins else {}))
