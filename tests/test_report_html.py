"""results/table.md as an HTML page for the Snakemake report."""

import pytest

from wsss.report.html import markdown_to_html, write_table_html

TABLE = """# Results

CAM mIoU (%) with **bold** and `code`,
continued on a second line.

| dataset | method | CAM mIoU |
|---|---|---|
| synthetic | A <b> & B | 30.1 ± 2.2 |
| synthetic | short row |

## Per run
"""


def test_markdown_table_becomes_an_html_table():
    page = markdown_to_html(TABLE)
    assert page.startswith("<!DOCTYPE html>")
    assert "<h1>Results</h1>" in page and "<h2>Per run</h2>" in page
    assert "<p>CAM mIoU (%) with <strong>bold</strong> and <code>code</code>, continued" in page
    assert "<tr><th>dataset</th><th>method</th><th>CAM mIoU</th></tr>" in page
    assert "<td>A &lt;b&gt; &amp; B</td><td>30.1 ± 2.2</td>" in page  # escaped, not raw HTML
    assert "<td>short row</td><td></td></tr>" in page  # short rows padded
    assert page.count("<tr>") == 3 and "|" not in page.split("<body>")[1]


def test_a_pipe_line_without_separator_stays_text():
    page = markdown_to_html("| not | a table |\nplain")
    assert "<table>" not in page and "| not | a table | plain" in page


def test_missing_table_is_named(tmp_path):
    missing = tmp_path / "table.md"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        write_table_html(missing, tmp_path / "table.html")
    missing.write_text(TABLE)
    write_table_html(missing, tmp_path / "table.html")
    assert "<table>" in (tmp_path / "table.html").read_text()
