"""report.md as one self-contained HTML page, through markdown-it-py (CommonMark with tables) and
a jinja2 template: figures are inlined as base64 PNGs, so the page needs no other file and no
network; numeric table columns are right-aligned."""

from __future__ import annotations

import base64
import re

import jinja2
from markdown_it import MarkdownIt
from markupsafe import escape

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 max-width:64em;margin:2em auto;padding:0 1.5em}
h1{font-size:1.7em;margin:.2em 0 .6em}h2{font-size:1.3em;margin:1.6em 0 .5em;
 border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}
th.num,td.num{text-align:right}
.figures{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
figure{flex:0 1 calc(50% - .5em);min-width:20em;margin:0}figure.wide{flex-basis:100%}
img{width:100%;height:auto;border:1px solid #eee}code{background:#f2f2f2;padding:0 .2em}
"""

PAGE = jinja2.Environment(autoescape=True).from_string(
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
    "<title>{{ title }}</title><style>{{ style | safe }}</style></head>\n<body>\n"
    "{{ body | safe }}\n</body></html>\n")

_NUMBER = re.compile(r"[+\-−]?\d[\d.,]*( ± [\d.]+| \((no spread|one value)\))?|–|-")


def _numeric_columns(tokens, start: int) -> None:
    """Mark the cells of the table opening at tokens[start] whose column holds only numbers."""
    end = next(i for i in range(start, len(tokens)) if tokens[i].type == "table_close")
    rows, row = [], []
    for i in range(start, end):
        t = tokens[i]
        if t.type in ("th_open", "td_open"):
            row.append((i, tokens[i + 1].content.strip(), t.type == "th_open"))
        elif t.type == "tr_close":
            rows.append(row)
            row = []
    body = [r for r in rows if r and not r[0][2]]
    width = max((len(r) for r in rows), default=0)
    for col in range(width):
        if body and all(col < len(r) and _NUMBER.fullmatch(r[col][1]) for r in body):
            for r in rows:
                if col < len(r):
                    tokens[r[col][0]].attrSet("class", "num")


def _figures(tokens, images: dict[str, bytes]) -> None:
    """Paragraphs of images only become a row of <figure>s, each PNG inlined."""
    for i, t in enumerate(tokens):
        if t.type != "paragraph_open" or tokens[i + 1].type != "inline":
            continue
        children = tokens[i + 1].children or []
        if children and all(c.type in ("image", "softbreak") for c in children):
            t.tag = tokens[i + 2].tag = "div"
            t.attrSet("class", "figures")
            for c in children:
                if c.type == "image":
                    src = c.attrGet("src") or ""
                    png = images.get(src)
                    c.meta["wide"] = bool(png) and png[:8] == b"\x89PNG\r\n\x1a\n" and \
                        int.from_bytes(png[16:20], "big") > 800
                    c.meta["missing"] = png is None
                    if png is not None:
                        c.attrSet("src", "data:image/png;base64,"
                                  + base64.b64encode(png).decode("ascii"))


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    default_image = md.renderer.rules["image"]

    def image(renderer, tokens, idx, options, env):
        t = tokens[idx]
        if "wide" not in t.meta:
            return default_image(tokens, idx, options, env)
        if t.meta["missing"]:
            alt = escape(t.content)
            return f"<p>[figure {alt}: {escape(t.attrGet('src'))} missing]</p>"
        tag = '<figure class="wide">' if t.meta["wide"] else "<figure>"
        return f"{tag}{default_image(tokens, idx, options, env)}</figure>"

    def softbreak(renderer, tokens, idx, options, env):
        return "" if "wide" in (tokens[idx - 1].meta if idx else {}) else "<br>\n"

    md.add_render_rule("image", image)
    md.add_render_rule("softbreak", softbreak)
    return md


def markdown_html(text: str, title: str, images: dict[str, bytes]) -> str:
    """The report's markdown as one HTML page; each image named in `images` is inlined."""
    md = _parser()
    tokens = md.parse(text)
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            _numeric_columns(tokens, i)
    _figures(tokens, images)
    body = md.renderer.render(tokens, md.options, {})
    return PAGE.render(title=title, style=STYLE, body=body)
