"""report.html: one self-contained page, no network (plots inlined as base64 PNG).

Every string placed in the page goes through html.escape. A content-security policy
forbids loading anything from outside the file. A small inline script records on <body>
how many images decoded (`data-loaded`), so a headless browser can check the page.
"""

from __future__ import annotations

import base64
from html import escape

from potstill.evaluation.report.docs import docs_page
from potstill.evaluation.report.format import (
    details,
    headline,
    metrics_note,
    metrics_table,
    subtitle,
    title,
)
from potstill.evaluation.report.plots import Plot
from potstill.evaluation.report.retention import TextTable, retention_tables
from potstill.evaluation.report.schema import Report

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2rem auto; padding: 0 1rem; color: #1a1a1a;
       line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
.subtitle { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1.2rem 0; }
.card { flex: 1 1 200px; border: 1px solid #ddd; border-radius: 8px; padding: 0.8rem 1rem;
        background: #fafafa; }
.card .label { font-size: 0.8rem; text-transform: uppercase; color: #666;
               letter-spacing: 0.03em; }
.card .value { font-size: 1.5rem; font-weight: 600; margin: 0.2rem 0; }
.card .sentence { font-size: 0.85rem; color: #333; margin: 0; }
table { border-collapse: collapse; margin: 0.8rem 0; }
th, td { padding: 0.35rem 0.8rem; border-bottom: 1px solid #e3e3e3; }
th { background: #f3f3f3; text-align: right; }
td { text-align: right; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
table.kv td { text-align: left; }
table th.text, table td.text { text-align: left; }
table.kv td:first-child { color: #555; font-weight: 600; }
.note { color: #555; font-size: 0.9rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { flex: 1 1 420px; margin: 0.5rem 0; }
figure.wide { flex-basis: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
.sections { display: flex; flex-wrap: wrap; gap: 2rem; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var decoded = 0;
  document.querySelectorAll("img").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { decoded += 1; }
  });
  document.body.setAttribute("data-loaded", String(decoded));
});
"""


def render_html(report: Report, plots: list[Plot]) -> str:
    """report.html as text: the headline as cards, the metrics table, the student's
    retention tables, the plots inlined as <img> in order, then the data, recipe and run
    tables."""
    page_title = title(report)
    header, rows = metrics_table(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page_title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        f'<body data-images="{len(plots)}" data-loaded="0">',
        f"<h1>{escape(page_title)}</h1>",
        f'<p class="subtitle">{escape(subtitle(report))}</p>',
        _cards(headline(report)),
        "<h2>Models</h2>",
        _table(header, rows, css_id="metrics"),
        f'<p class="note">{escape(metrics_note(report))}</p>',
        _docs_link(report),
        *map(_text_table, retention_tables(report)),
    ]
    if plots:
        parts += ["<h2>Plots</h2>", '<div class="plots">', *map(_figure, plots), "</div>"]
    sections = [_details(section, pairs) for section, pairs in details(report) if pairs]
    if sections:
        parts += ['<div class="sections">', *sections, "</div>"]
    parts += [f"<script>{SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _docs_link(report: Report) -> str:
    """A link to the docs page of the report's kind: a navigation the reader chooses; the
    page itself still loads nothing from outside (the CSP)."""
    url = escape(docs_page(report.kind))
    return (
        f'<p class="note" id="docs">What each number means, and how to change the run: '
        f'<a href="{url}" rel="noreferrer">{url}</a></p>'
    )


def _cards(findings: list[tuple[str, str, str]]) -> str:
    if not findings:
        return ""
    cards = [
        '<div class="card">'
        f'<div class="label">{escape(label)}</div>'
        f'<div class="value">{escape(value)}</div>'
        f'<p class="sentence">{escape(sentence)}</p>'
        "</div>"
        for label, value, sentence in findings
    ]
    return '<div class="cards">' + "".join(cards) + "</div>"


def _table(header: list[str], rows: list[list[str]], css_id: str) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return (
        f'<table id="{escape(css_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _text_table(table: TextTable) -> str:
    """A retention table under its heading, word columns aligned left, then its note."""

    def cells(tag: str, row: list[str]) -> str:
        return "".join(
            f'<{tag} class="text">{escape(cell)}</{tag}>'
            if i < table.text_columns
            else f"<{tag}>{escape(cell)}</{tag}>"
            for i, cell in enumerate(row)
        )

    head = cells("th", table.header)
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in table.rows)
    css_id = table.title.lower().replace(" ", "-")
    return (
        f"<h2>{escape(table.title)}</h2>"
        f'<table id="{escape(css_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        f'<p class="note">{escape(table.note)}</p>'
    )


def _details(section: str, pairs: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><td>{escape(key)}</td><td>{escape(value)}</td></tr>" for key, value in pairs
    )
    table = f'<table class="kv"><tbody>{body}</tbody></table>'
    return f"<section><h2>{escape(section)}</h2>{table}</section>"


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure id="{escape(plot.name)}" class="{"wide" if plot.wide else "half"}">'
        f'<img src="data:image/png;base64,{data}" alt="{escape(plot.alt)}">'
        f"<figcaption>{escape(plot.caption)}</figcaption>"
        "</figure>"
    )
