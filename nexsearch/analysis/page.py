"""One self-contained HTML page: inline CSS, images embedded as base64 PNG, scripts inline (plotly.js once,
from analysis/interactive.py), no network."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from nexsearch.rundir import write_atomic

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
nav a { margin-right: 1em; } .note { color: #8a4b00; } footer { margin-top: 3em; color: #777; font-size: 0.85em; }
"""


class Page:
    """Sections, headings, text, tables and PNG images, written as one HTML file."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.sections: list[tuple[str, str]] = []
        self.footnotes: list[str] = []
        self.head: list[str] = []  # inline scripts for <head> (plotly.js, once)

    def section(self, title: str, anchor: str) -> None:
        self.sections.append((anchor, title))
        self.parts.append(f'<h2 id="{html.escape(anchor)}">{html.escape(title)}</h2>')

    def heading(self, title: str, level: int = 3) -> None:
        self.parts.append(f"<h{level}>{html.escape(title)}</h{level}>")

    def text(self, text: str, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")

    def html(self, markup: str) -> None:
        """Markup built (and escaped) elsewhere: an interactive figure, a table with <details> cells."""
        self.parts.append(markup)

    def footnote(self, text: str) -> None:
        self.footnotes.append(text)

    def table(self, df: pd.DataFrame, table_id: str, index: bool = False, header: bool = True) -> None:
        self.parts.append(df.to_html(table_id=table_id, index=index, header=header, border=0, na_rep="-",
                                     float_format=format_number, escape=True))

    def image(self, png: bytes, alt: str) -> None:
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')

    def render(self) -> str:
        nav = " ".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in self.sections)
        notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in self.footnotes)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>{''.join(self.head)}</head><body>"
                f"<h1>{html.escape(self.title)}</h1><nav>{nav}</nav>{''.join(self.parts)}"
                f"<footer>{notes}<p>Written by nexsearch analyze, {stamp}.</p></footer></body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write under a temporary name, then rename: a reader never sees half a page."""
        path = Path(path)
        write_atomic(path, lambda tmp: tmp.write_text(self.render(), encoding="utf-8"))
        return path


def format_number(x: Any) -> str:
    return f"{x:.4g}"
