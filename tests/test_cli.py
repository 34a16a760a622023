"""The ``wsss`` command: start-up imports only what the command uses. A command that
builds no model imports neither torch nor timm (seconds of start-up per job), and only
the commands that build a model take --device/--workers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.cli import build_parser, command_help, commands

REPO = Path(__file__).resolve().parents[1]
# Commands that build a model and so import torch and timm. Every other command must not.
MODEL_COMMANDS = {
    "affinity-transfer",
    "attention-diagnostics",
    "cams",
    "entropy-weights",
    "evaluate-decoder",
    "pretrain",
    "segment",
    "train",
    "tune-refiner",
}
# pretrain builds a model on the CPU only and takes no device (wsss.stages.pretrain);
# affinity-transfer (wsss.tools) reads trained models on the CPU and takes no device either.
DEVICE_COMMANDS = MODEL_COMMANDS - {"pretrain", "affinity-transfer"}
HEAVY = ("torch", "timm", "torchvision")


def _imports_after(code: str) -> dict:
    """Which of HEAVY a fresh interpreter has imported after running ``code``."""
    probe = code + (
        f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_top_level_help_imports_no_command():
    code = (
        "import contextlib, io\n"
        "from wsss.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'evaluate-decoder' in out.getvalue(), out.getvalue()\n"
    )
    assert _imports_after(code) == {m: False for m in HEAVY}


def test_top_level_help_lists_each_command_with_its_help():
    text = build_parser().format_help()
    for command, module in commands().items():
        assert command in text
        # the first words of its HELP (argparse wraps the rest)
        assert " ".join(command_help(module).split()[:2]) in " ".join(text.split()), command


@pytest.mark.parametrize("command", sorted(set(commands()) - MODEL_COMMANDS))
def test_a_command_without_a_model_imports_no_torch(command):
    """The command's parser and its module, as `wsss <command> ...` loads them before it
    runs (what the run itself imports is checked per rule in test_code_deps)."""
    code = f"from wsss.cli import build_parser\nbuild_parser({command!r})\n"
    assert _imports_after(code) == {m: False for m in HEAVY}


def test_only_model_commands_take_a_device():
    with_device = set()
    for command in commands():
        sub = build_parser(command)._subparsers._group_actions[0].choices[command]
        options = {o for a in sub._actions for o in a.option_strings}
        if "--device" in options:
            assert {"--workers", "--cache-images"} <= options, command
            with_device.add(command)
        else:
            assert not {"--workers", "--cache-images"} & options, command
    assert with_device == DEVICE_COMMANDS


def test_a_module_without_help_is_an_error(tmp_path, monkeypatch):
    package = tmp_path / "fakecmds"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nohelp.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"nohelp\.py.*HELP"):
        command_help("fakecmds.nohelp")
