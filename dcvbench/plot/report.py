"""``report.html``: the summary tables and every figure in one self-contained file to open or send.

Figures are inline PNGs (``data:`` URIs) and the style sheet is inline, so the file refers to nothing
beside it; its only links are to its own sections.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from dcvbench.plot.summary import INTRO, SummaryTable

STYLE_SHEET = """
body { font: 14px/1.45 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #555; margin: 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
figure img { width: 24rem; max-width: 100%; }
figcaption { color: #555; font-size: 12px; }
"""


def _anchor(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-") or "section"


def html_report(
    tables: Sequence[SummaryTable], figures: Mapping[str, Sequence[tuple[str, bytes]]], source: str
) -> str:
    """The report of the runs under ``source``: a contents list, then per table its note, the table
    and its group's figures (``figures``: group → (what it shows, PNG bytes))."""
    sections, contents = [], []
    for table in tables:
        anchor = _anchor(table.title)
        contents.append(f'<li><a href="#{anchor}">{html.escape(table.title)}</a></li>')
        parts = [f'<section id="{anchor}">', f"<h2>{html.escape(table.title)}</h2>"]
        if table.note:
            parts.append(f'<p class="note">{html.escape(table.note)}</p>')
        parts.append(table.frame.to_html(index=False, border=0, escape=True))
        images = [
            f'<figure><img alt="{html.escape(label)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}"><figcaption>{html.escape(label)}</figcaption></figure>'
            for label, png in figures.get(table.group, ())
        ]
        if images:
            parts.append('<div class="figures">' + "".join(images) + "</div>")
        sections.append("\n".join([*parts, "</section>"]))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>dcvbench report: {html.escape(source)}</title>",
            f"<style>{STYLE_SHEET}</style></head><body>",
            "<h1>dcvbench report</h1>",
            f"<p>Runs under <code>{html.escape(source)}</code>. {html.escape(INTRO)}</p>",
            "<ul>" + "".join(contents) + "</ul>",
            *sections,
            "</body></html>",
            "",
        ]
    )
