"""The code a job runs, derived from the package's own imports (the Snakemake rules'
code inputs).

Snakemake does not see edits to imported modules by itself (workflow-notes 3.3b), so
each rule lists source files as inputs. Hand-written lists drift from the real
imports; here they are computed when the DAG is built:

1. every ``import``/``from ... import`` in every module of ``wsss`` (module level and
   inside functions, since a function's import runs when it is called), read with
   :mod:`ast`, nothing imported;
2. the closure from ``wsss.cli`` and the command's module (:mod:`wsss.stages`);
3. plug-ins the code imports by name at run time: the dataset kind's module
   (:data:`wsss.data.kinds.DATASET_KINDS`) when ``wsss.data.datasets`` is reached,
   the training methods and refiners the job builds (their registries,
   :func:`wsss.registry.scan_plugins`) when ``wsss.methods.base`` is reached.

Importing ``wsss.a.b`` imports the packages ``wsss`` and ``wsss.a`` first, so their
``__init__`` files are part of the closure. ``tests/test_code_deps.py`` runs each
command and checks that the modules it really imported are exactly these.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PACKAGE = "wsss"
ROOT = Path(__file__).resolve().parent


@cache
def _modules() -> dict[str, Path]:
    """``{module name: source file}`` for every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _modules()[module].name == "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports_of(module: str) -> frozenset[str]:
    """The package modules ``module`` imports anywhere in its source (with parent packages)."""
    modules = _modules()
    tree = ast.parse(modules[module].read_text(), str(modules[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules:
                found.update(_with_parents(name))
    found.discard(module)
    return frozenset(found)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(roots: Iterable[str]) -> set[str]:
    """Every package module reachable from ``roots`` (included) by imports."""
    modules = _modules()
    todo = [m for root in roots for m in _with_parents(root)]
    unknown = [m for m in todo if m not in modules]
    if unknown:
        raise ValueError(f"not a module of {PACKAGE}: {unknown[0]}")
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports_of(module) - seen)
    return seen


def command_modules(
    command: str,
    dataset_kind: str | None = None,
    methods: Iterable[str] = (),
    refiners: Iterable[str] = (),
) -> set[str]:
    """The modules the ``wsss <command>`` job imports, for a dataset of ``dataset_kind``
    that builds the training ``methods`` and CAM ``refiners`` named."""
    from wsss.cli import COMMAND_PACKAGES, commands

    known = commands()
    if command not in known:
        raise ValueError(f"unknown wsss command {command!r}; known: {', '.join(known)}")
    # wsss.cli finds its commands with find_spec, which imports each command package's
    # __init__ without an import statement the static closure could see.
    roots = {f"{PACKAGE}.cli", known[command], *COMMAND_PACKAGES}
    modules = closure(roots)
    for _ in range(3):  # a plug-in may reach another registry
        extra = set()
        if dataset_kind is not None and f"{PACKAGE}.data.datasets" in modules:
            from wsss.data.kinds import DATASET_KINDS

            if module := DATASET_KINDS.module_of(dataset_kind):
                extra.add(module)
        if f"{PACKAGE}.methods.base" in modules:
            from wsss.methods.base import CAM_REFINERS, TRAINING_METHODS

            for registry, names in ((TRAINING_METHODS, methods), (CAM_REFINERS, refiners)):
                for name in names:
                    if module := registry.module_of(name):
                        extra.add(module)
        if extra <= modules:
            break
        modules = closure(modules | extra)
    return modules


@cache
def package_data(module: str) -> tuple[str, ...]:
    """Files of the package a module reads, from its literal ``PACKAGE_DATA`` patterns
    (globs relative to the package folder)."""
    tree = ast.parse(_modules()[module].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PACKAGE_DATA" for t in node.targets
        ):
            patterns = ast.literal_eval(node.value)
            return tuple(str(p) for pattern in patterns for p in sorted(ROOT.glob(pattern)))
    return ()


def code_inputs(
    command: str,
    dataset_kind: str | None = None,
    methods: Iterable[str] = (),
    refiners: Iterable[str] = (),
    relative_to: Path = ROOT.parent,
) -> list[str]:
    """Source files (and the package data they read) of :func:`command_modules`, relative to
    the project root, sorted."""
    modules = _modules()
    files = set()
    for module in command_modules(command, dataset_kind, methods, refiners):
        files.add(modules[module])
        files.update(Path(p) for p in package_data(module))
    return sorted(str(f.relative_to(relative_to)) for f in files)
