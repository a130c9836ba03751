"""The report's document model (``Doc``: markdown or one self-contained HTML page) and cell formatting."""
from __future__ import annotations

import base64
import html as html_lib
import math
import re

import numpy as np
import pandas as pd

# ============================================================================= formatting

def _g(v, digits: int = 4) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _key_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def _num(v, digits: int = 2, signed: bool = False) -> str:
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _ci(interval, scale: float = 100.0, digits: int = 2, signed: bool = False) -> str:
    """'est [low, high]' of a stats.Interval times scale; the estimate alone without an interval; '—' without one."""
    if interval is None or pd.isna(interval.estimate):
        return "—"
    text = _num(scale * interval.estimate, digits, signed)
    if interval.has_ci:
        text += f" [{_num(scale * interval.low, digits, signed)}, {_num(scale * interval.high, digits, signed)}]"
    return text


def _pct(mean, ci=None) -> str:
    """Mean accuracy in % with its 95 % interval (when it has one)."""
    if mean is None or pd.isna(mean):
        return "—"
    text = f"{100 * mean:.2f}"
    if ci is not None and ci.has_ci:
        text += f" [{100 * ci.low:.2f}, {100 * ci.high:.2f}]"
    return text


def _p(p: float, n: int) -> str:
    """A p-value with the number of pairs behind it."""
    if n == 0:
        return "— (no pairs)"
    if p is None or pd.isna(p):
        return f"— (n={n})"
    return (f"{p:.2g}" if p < 0.01 else f"{p:.3f}".rstrip("0").rstrip(".") if p < 1 else "1") + f" (n={n})"


def _count(v) -> str:
    if v is None or pd.isna(v):
        return "—"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _failures_text(failures: dict) -> str:
    return ", ".join(f"{n} {s}" for s, n in failures.items())


def _bold(text: str) -> str:
    return f"**{text}**"


def _setting_title(cols, setting) -> str:
    return ", ".join(f"{c[len('setting.'):]} = {v}" for c, v in zip(cols, setting))


# ============================================================================= document model

class Doc:
    """A list of blocks rendered to markdown or to one self-contained HTML page."""

    def __init__(self):
        self.blocks = []
        self.n_sections = 0

    def section(self, title):
        """A numbered level-2 heading (tables that are absent take no number)."""
        self.n_sections += 1
        self.h(2, f"{self.n_sections}. {title}")

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def table(self, headers, rows):
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def ul(self, items):
        if items:
            self.blocks.append(("ul", list(items)))

    def img(self, rel, alt, data: bytes):
        self.blocks.append(("img", rel, alt, data))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(cell(c) for c in b[1]) + " |", "|" + "|".join("---" for _ in b[1]) + "|"]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    @staticmethod
    def _inline(text: str) -> str:
        t = html_lib.escape(str(text))
        t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

    def html(self, title: str) -> str:
        inl = self._inline
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{inl(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{inl(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{inl(c)}</th>" for c in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{inl(c)}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{inl(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "img":
                data = base64.b64encode(b[3]).decode("ascii")
                body.append(f'<figure><img alt="{html_lib.escape(b[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{inl(b[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
                 "text-align:left}th{background:#eee}img{max-width:100%}code{background:#f4f4f4}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html_lib.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
