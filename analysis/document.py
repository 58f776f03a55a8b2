"""A tiny document model (headings, paragraphs, lists, tables, images, code) rendered to Markdown and HTML."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .results_io import fmt_num


@dataclass
class Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, df: pd.DataFrame, max_rows: int | None = None, index: bool = False) -> None:
        if df is None or not len(df):
            self.p("_(empty)_")
            return
        d = df.reset_index() if index else df
        more = 0
        if max_rows is not None and len(d) > max_rows:
            more = len(d) - max_rows
            d = d.head(max_rows)
        self.blocks.append(("table", d))
        if more:
            self.p(f"_… {more} more rows (see the CSV)._")

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # ---- rendering
    @staticmethod
    def _cells(d: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
        head = [str(c) for c in d.columns]
        rows = [[fmt_num(v) for v in r] for r in d.itertuples(index=False, name=None)]
        return head, rows

    def markdown(self) -> str:
        out: list[str] = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append("#" * x[0] + " " + x[1])
            elif kind == "p":
                out.append(x)
            elif kind == "ul":
                out.append("\n".join(f"- {i}" for i in x))
            elif kind == "code":
                out.append("```\n" + x.replace("```", "'''") + "\n```")
            elif kind == "img":
                out.append(f"![{x[1]}]({x[0]})")
            elif kind == "table":
                head, rows = self._cells(x)
                esc = lambda s: s.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
                out.append("\n".join(lines))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{e(title)}</title><style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
            "th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:6px;overflow-x:auto}</style>"
            "</head><body>",
        ]
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"<h{x[0]}>{e(x[1])}</h{x[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline_html(x)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in x) + "</ul>")
            elif kind == "code":
                out.append(f"<pre>{e(x)}</pre>")
            elif kind == "img":
                out.append(f"<p><a href='{e(x[0])}'><img src='{e(x[0])}' alt='{e(x[1])}'></a></p>")
            elif kind == "table":
                head, rows = self._cells(x)
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                           + "</table>")  # fmt: skip
        out.append("</body></html>")
        return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then render the little inline Markdown the report uses: **bold**, _italic_, `code`, [a](b)."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
    s = re.sub(r"\[(.+?)\]\((.+?)\)", r"<a href='\2'>\1</a>", s)
    s = re.sub(r"(^|\s)_(.+?)_($|\s)", r"\1<i>\2</i>\3", s)
    return s
