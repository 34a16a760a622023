"""Command ``check-params``: validate params.yaml (and override files) before any job."""

from __future__ import annotations

import argparse

from wsss.config import load_params

HELP = "validate params.yaml (and override files) and exit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--configfile", action="append", default=[], help="override file merged on top")


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, *args.configfile)
    grid = params["grid"]
    print(
        f"{args.params}: valid ({len(grid['datasets'])} datasets x {len(grid['methods'])} methods "
        f"x {len(grid['seeds'])} seeds)"
    )
    return 0
