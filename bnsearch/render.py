"""Render a report's blocks, ``(kind, content)`` with kind h1/h2/h3/p/ul/table/img, as Markdown
and as one self-contained HTML page (figures embedded, so it works inside MLflow's artifact viewer)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd


def to_markdown(blocks: list, out: Path) -> str:
    parts = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + content)
        elif kind == "p":
            parts.append(content)
        elif kind == "ul":
            parts.append("\n".join(f"- {item}" for item in content))
        elif kind == "table":
            parts.append(markdown_table(content))
        elif kind == "img":
            parts.append(f"![{content.stem}]({content.relative_to(out).as_posix()})")
    return "\n\n".join(parts) + "\n"


def markdown_table(frame: pd.DataFrame) -> str:
    cells = lambda row: "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"  # noqa: E731
    return "\n".join([cells(frame.columns), cells(["---"] * len(frame.columns)), *(cells(r) for r in frame.itertuples(index=False))])


def to_html(blocks: list, out: Path, title: str) -> str:
    def inline(text: str) -> str:  # the two bits of Markdown the prose uses: **bold** and `code`
        text = html.escape(text)
        for mark, tag in (("**", "b"), ("`", "code")):
            pieces = text.split(mark)
            text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
        return text

    parts = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{inline(content)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in content) + "</ul>")
        elif kind == "table":
            parts.append(content.to_html(index=False, border=0, escape=True))
        elif kind == "img":  # embedded, so the page works inside MLflow's artifact viewer
            data = base64.b64encode(content.read_bytes()).decode()
            parts.append(f'<img alt="{content.stem}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:.9em;margin:1em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}"
             "img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)} report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
