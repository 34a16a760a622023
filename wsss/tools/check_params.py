"""Command ``check-params``: validate params.yaml (and override files) before any job."""

from __future__ import annotations

import argparse

from wsss.config import load_params

HELP = "validate params.yaml (and override files) and exit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", default="params.yaml")
    # `wsss check-params params.yaml configs/smoke.yaml`, as `wsss merge-params` takes them
    p.add_argument("overrides", nargs="*", help="override files merged on top, in order")
    p.add_argument("--configfile", action="append", default=[], help="override file merged on top")


def valid_line(files: list[str], params: dict) -> str:
    """``params.yaml + <override>...: valid (D datasets x M methods x S seeds)``: what
    `wsss check-params` and `wsss run` print for params that passed validation."""
    grid = params["grid"]
    return (
        f"{' + '.join(map(str, files))}: valid ({len(grid['datasets'])} datasets x "
        f"{len(grid['methods'])} methods x {len(grid['seeds'])} seeds)"
    )


def run(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *args.configfile]
    params = load_params(args.params, *overrides)
    print(valid_line([args.params, *overrides], params))
    return 0
