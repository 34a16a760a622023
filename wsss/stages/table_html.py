"""Stage ``table-html``: results/table.md as an HTML page for the HTML report."""

from __future__ import annotations

import argparse

from wsss.report.html import write_table_html
from wsss.stages import add_common

HELP = "results/table.md as an HTML page (for the HTML report)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    write_table_html(args.table, args.out)
    return 0
