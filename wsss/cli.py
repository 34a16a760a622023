"""The ``wsss`` command: one subcommand per pipeline stage, called by the Snakemake rules.

Each subcommand is a module of :mod:`wsss.stages` (DAG stages) or :mod:`wsss.tools`
(commands that read ``params.yaml`` themselves); its name is the module's with ``-``
for ``_``. Only the module of the command being run is imported, so a job imports
exactly its stage's code (see :mod:`wsss.code_deps`); ``wsss --help`` reads each
command's ``HELP`` from its source and imports none of them (a model stage imports
torch and timm, seconds of start-up).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import pkgutil
import sys

COMMAND_PACKAGES = ("wsss.stages", "wsss.tools")
# How to get a real --config for a command: the workflow builds each job's from params.yaml
# (wsss.config) and prints it in the job's command line.
CONFIG_EPILOG = """\
--config example: the workflow builds each job's JSON from params.yaml and prints
it with the job's command line; to rerun one job by hand, take it from there:
  snakemake -n -p --forcerun <rule> <one of its outputs>   # shows `wsss {command} --config '{{...}}' ...`
  wsss {command} --config @job.json ...                     # the same JSON, read from a file
"""


def commands() -> dict[str, str]:
    """``{command: module}`` for every stage and tool, found without importing them."""
    found = {}
    for package in COMMAND_PACKAGES:
        path = importlib.util.find_spec(package).submodule_search_locations
        for info in pkgutil.iter_modules(path):
            found[info.name.replace("_", "-")] = f"{package}.{info.name}"
    return dict(sorted(found.items()))


def command_help(module_name: str) -> str:
    """A command module's ``HELP`` string, read from its source without importing it.
    ValueError when the module has no literal ``HELP``."""
    spec = importlib.util.find_spec(module_name)
    tree = ast.parse(open(spec.origin).read(), spec.origin)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise ValueError(f"{spec.origin}: a wsss command module must define HELP = '...'")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Only the module of ``only`` (the command being run) is
    imported; the others are listed with their help, read from their source."""
    parser = argparse.ArgumentParser(prog="wsss", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, module_name in commands().items():
        if command != only:
            sub.add_parser(command, help=command_help(module_name))  # listed, not imported
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            command,
            help=module.HELP,
            description=module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        if any("--config" in a.option_strings for a in p._actions):
            p.epilog = CONFIG_EPILOG.format(command=command)
        p.set_defaults(func=module.run)
    return parser


def worker_message(err: BaseException) -> str:
    """The message of ``err``; for an error torch re-raised from a DataLoader worker (its
    text is "Caught ValueError in DataLoader worker process 0." and the worker's whole
    traceback), the worker's own message, which names the file, with the worker named."""
    text = str(err)
    head, sep, rest = text.partition("\nOriginal Traceback (most recent call last):\n")
    prefix = f"{type(err).__name__}: "
    if not sep or not head.startswith("Caught "):
        return text
    # The worker's traceback: indented frame lines, then the exception's (maybe multi-line)
    # message; with a chained exception, the last one raised comes last.
    lines = rest.split("\n")
    starts = [
        i
        for i, line in enumerate(lines)
        if line.startswith(prefix) and i > 0 and lines[i - 1].startswith(" ")
    ]
    if not starts:
        return text
    own = "\n".join(lines[starts[-1] :])[len(prefix) :].rstrip("\n")
    where = head.removeprefix(f"Caught {type(err).__name__} ").rstrip(".")
    return f"{own} ({where})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    known = commands()
    only = argv[0] if argv and argv[0] in known else None
    args = build_parser(only).parse_args(argv)
    from wsss.io import NoSpaceError
    from wsss.runtime import set_execution, set_threads, setup_logging

    setup_logging(getattr(args, "log", None))
    set_threads(getattr(args, "threads", None))
    if hasattr(args, "device"):
        set_execution(args.device, args.workers, bool(args.cache_images))
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, PermissionError, NoSpaceError) as err:
        # Bad input (a missing file, a malformed value, a folder that cannot be written, a
        # full disk) gets its message, not a traceback; WSSS_DEBUG=1 shows the traceback
        # too. Bugs still raise.
        if os.environ.get("WSSS_DEBUG"):
            raise
        message = worker_message(err)
        print(f"wsss {args.command}: error: {message}", file=sys.stderr)
        if getattr(args, "log", None):
            with open(args.log, "a") as f:
                f.write(f"error: {message}\n")
        return 1
    finally:
        # Interpreter shutdown runs garbage collections over every object torch and timm
        # created at import, about 1 s of CPU per job (measured: `import torch, timm`
        # alone, 3.7 s -> 2.6 s); frozen objects are skipped. Files are still closed and
        # buffers flushed at exit as usual, and every output is already written.
        import gc

        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
