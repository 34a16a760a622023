"""The results table as a small HTML page, for Snakemake's HTML report.

The report shows images and HTML inline but only offers other files as
downloads, so ``results/table.md`` is converted. The converter knows the
markdown that :mod:`wsss.report.table` writes (headings, paragraphs, pipe
tables, ``**bold**`` and ``code`` spans) and nothing more; anything else passes
through as escaped paragraph text, never dropped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from wsss.io import write_text

STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; }
th { background: #eee; }
tr:nth-child(even) td { background: #f8f8f8; }
"""

_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


def _inline(text: str) -> str:
    escaped = html.escape(text.strip(), quote=False)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [cell.strip() for cell in line.split("|")]


def markdown_to_html(markdown: str, title: str = "Results") -> str:
    """A standalone HTML page of ``markdown`` (see the module docstring for what is understood)."""
    body: list[str] = []
    paragraph: list[str] = []
    lines = markdown.splitlines()

    def flush() -> None:
        if paragraph:
            body.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif (
            stripped.startswith("|")
            and i + 1 < len(lines)
            and _SEPARATOR.match(lines[i + 1].strip())
        ):
            flush()
            header = _cells(stripped)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in header)
            rendered = [f"<tr>{head}</tr>"]
            for row in rows:
                row = row + [""] * (len(header) - len(row))
                rendered.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            body.append("<table>\n" + "\n".join(rendered) + "\n</table>")
            continue
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_table_html(markdown_path: str | Path, out: str | Path) -> None:
    path = Path(markdown_path)
    if not path.is_file():
        raise FileNotFoundError(f"results table {path} does not exist; run the table stage first")
    write_text(out, markdown_to_html(path.read_text(), title=path.stem))
