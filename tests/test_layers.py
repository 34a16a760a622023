"""The package's layering: import-linter's contracts (pyproject.toml) hold, and there is no
import cycle between files or between subpackages."""

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in edges.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("wsss")


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_cycle_between_files(graph):
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []


def test_no_cycle_between_subpackages(graph):
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if top(imported) != top(module):
                edges.setdefault(top(module), set()).add(top(imported))
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# ------------------------------------------------------------ stage modules

# Callers outside the CLI allowed to import a stage module: none.
STAGE_IMPORT_EXCEPTIONS: set[tuple[str, str]] = set()


def _stage_modules() -> set[str]:
    return {
        f"wsss.stages.{p.stem}"
        for p in (REPO / "wsss" / "stages").glob("*.py")
        if p.stem != "__init__"
    }


def _contract(name_start: str) -> dict:
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    return next(c for c in contracts if c["name"].startswith(name_start))


def _drift(listed: list[str], actual: set[str]) -> dict[str, list[str]]:
    """What a hand-written module list misses and what it names that does not exist."""
    return {
        "missing": sorted(actual - set(listed)),
        "not a module": sorted(set(listed) - actual),
        "repeated": sorted({m for m in listed if listed.count(m) > 1}),
    }


def test_independence_contract_lists_every_stage_module():
    listed = _contract("stages are independent")["modules"]
    assert _drift(listed, _stage_modules()) == {"missing": [], "not a module": [], "repeated": []}


def test_the_drift_check_finds_a_list_broken_on_purpose():
    listed = _contract("stages are independent")["modules"]
    actual = _stage_modules()
    assert _drift(listed[1:], actual)["missing"] == [listed[0]]
    assert _drift([*listed, "wsss.stages.nope"], actual)["not a module"] == ["wsss.stages.nope"]
    assert _drift([*listed, listed[0]], actual)["repeated"] == [listed[0]]


def _stage_importers(imports: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, stage module) pairs where the importer is neither the CLI nor a stage."""
    stages = _stage_modules()
    return sorted(
        (source, target)
        for source, targets in imports.items()
        for target in targets
        if target in stages
        and source != "wsss.cli"
        and not source.startswith("wsss.stages")
        and not any(
            (source == s or source.startswith(s + ".")) and target == t
            for s, t in STAGE_IMPORT_EXCEPTIONS
        )
    )


def test_only_the_cli_imports_a_stage_module(graph):
    """Stages are adapters: the package and the benchmarks import the library modules below
    them (a stage runs through ``wsss.cli``; tests of a stage's own glue may import it)."""
    import re

    imports = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    pattern = re.compile(r"^\s*(?:from|import)\s+(wsss\.stages\.\w+)", re.M)
    for path in (REPO / "benchmarks").glob("*.py"):
        imports[f"benchmarks/{path.name}"] = set(pattern.findall(path.read_text()))
    assert _stage_importers(imports) == []
    # and the check sees one
    assert _stage_importers({"wsss.tools.x": {"wsss.stages.cams"}}) == [
        ("wsss.tools.x", "wsss.stages.cams")
    ]
