"""The package's prose names code that exists: every ``wsss.<module>[.<name>]`` in a
docstring or comment resolves, and every ``wsss <command> --option`` it quotes is an
option of that command."""

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"\bwsss(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
# Placeholders in prose that explains import mechanics (wsss/code_deps.py).
EXAMPLES = {"wsss.a", "wsss.a.b"}
COMMAND_OPTION = re.compile(r"``wsss ([a-z][a-z-]*) (--[a-z][a-z-]*)")


def _sources():
    return sorted((REPO / "wsss").rglob("*.py"))


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_dotted_names_in_prose_resolve():
    missing = {}
    for path in _sources():
        for name in set(DOTTED.findall(path.read_text())):
            if name not in EXAMPLES and not _resolves(name):
                missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not missing, f"prose names code that does not exist: {missing}"


def test_quoted_command_options_exist():
    from wsss.cli import build_parser

    wrong = []
    for path in _sources():
        for command, option in COMMAND_OPTION.findall(path.read_text()):
            parser = build_parser(command)
            sub = next(a for a in parser._actions if a.dest == "command").choices[command]
            if option not in sub._option_string_actions:
                wrong.append(f"{path.relative_to(REPO)}: wsss {command} {option}")
    assert not wrong, f"prose quotes options the commands do not take: {wrong}"
