"""The pipeline's stages, one module per ``wsss`` subcommand (and Snakemake rule).

Each module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
its command is the module name with ``-`` for ``_``. :mod:`wsss.cli` imports only
the module of the command it runs, so a job's imports (and the code inputs its
rule declares, :mod:`wsss.code_deps`) are that stage's import closure.

Rules pass each job its resolved settings as JSON (``--config``), built from
``params.yaml`` by :mod:`wsss.config`, so a job never reads params.yaml itself
and Snakemake sees every setting a job depends on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def json_arg(text: str) -> dict[str, Any]:
    """``--config`` values: a JSON object, given as its text (what the rules pass) or as
    ``@FILE``, a file holding it. Raises ArgumentTypeError naming what is wrong."""
    source = "--config"
    if text.startswith("@"):
        source = f"--config file {text[1:]}"
        try:
            text = Path(text[1:]).read_text()
        except OSError as err:
            raise argparse.ArgumentTypeError(f"{source}: cannot read it ({err})") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(
            f"{source} is not valid JSON: {err} (give the JSON text, or @FILE to read a file)"
        ) from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{source} must be a JSON object")
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every stage takes: log file, CPU threads, progress bars."""
    parser.add_argument("--log", help="also write the log to this file")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_execution(parser: argparse.ArgumentParser) -> None:
    """Options of the stages that build a model: device, DataLoader workers, image cache
    (only those take them: a scoring stage has no device to pick)."""
    # Execution knobs (wsss.runtime.Execution): how a job runs, not what it computes, so the
    # rules pass them outside the job's params and changing them reruns nothing.
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--cache-images", type=int, choices=[0, 1], default=1, help="keep decoded images in memory"
    )
