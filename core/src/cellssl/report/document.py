"""A tiny document model (headings, paragraphs, tables, images, collapsible sections) rendered to
Markdown and to standalone HTML, so the report and the comparison share one layout in both formats."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cellssl.report.results import format_value


@dataclass
class Heading:
    """``#``-heading of ``level`` 1..4."""

    text: str
    level: int = 2


@dataclass
class Paragraph:
    """Plain text (one paragraph)."""

    text: str


@dataclass
class Table:
    """Rows under named columns; cells are formatted with :func:`format_value`."""

    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Image:
    """A picture referenced by a path relative to the report file."""

    path: str
    caption: str = ""


@dataclass
class Details:
    """A collapsible section (``<details>``; GitHub Markdown renders it too)."""

    summary: str
    blocks: list[Any] = field(default_factory=list)


Block = Heading | Paragraph | Table | Image | Details


def table_from_rows(rows: Sequence[dict[str, Any]]) -> Table:
    """A :class:`Table` of dict rows; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(str(k) for k in row if str(k) not in columns)
    return Table(columns, [[row.get(c) for c in columns] for row in rows])


def _md_cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Markdown text of ``blocks``."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
                     "|" + "|".join(" --- " for _ in block.columns) + "|"]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Image):
            out.append(f"![{block.caption or block.path}]({block.path})")
        elif isinstance(block, Details):
            inner = to_markdown(block.blocks).rstrip()
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>\n\n{inner}\n\n</details>")
        else:
            raise TypeError(f"unknown block {block!r}")
    return "\n\n".join(out).rstrip() + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f2f2f2; }
figure { margin: 0.5rem 0 1.5rem; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
details { margin: 0.5rem 0; }
"""


def _html_blocks(blocks: Sequence[Block]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row) + "</tr>"
                for row in block.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            src = html.escape(block.path, quote=True)
            caption = html.escape(block.caption or block.path)
            out.append(f'<figure><img src="{src}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
        elif isinstance(block, Details):
            inner = "\n".join(_html_blocks(block.blocks))
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>\n{inner}\n</details>")
        else:
            raise TypeError(f"unknown block {block!r}")
    return out


def to_html(blocks: Sequence[Block], title: str) -> str:
    """A standalone HTML page of ``blocks`` (no external resources besides the referenced images)."""
    body = "\n".join(_html_blocks(blocks))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>'
            f"\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
