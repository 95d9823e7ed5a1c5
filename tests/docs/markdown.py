"""Reading the project's Markdown the way GitHub renders it: headings and their anchors,
links, sections and tables. Only what the doc tests need, outside fenced code blocks."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [label](target) and ![alt](target); the label may hold `code` but no nested brackets.
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lower-cased, punctuation dropped
    (letters, digits, `-` and `_` of any script stay), each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its label
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML renders as nothing
    text = text.replace("`", "").replace("*", "")
    text = "".join(ch for ch in text.strip().lower() if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


@dataclass(frozen=True)
class Heading:
    line: int
    level: int
    text: str
    anchor: str


def headings(text: str) -> list[Heading]:
    """Every heading with its anchor; a repeated anchor gets -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    found = []
    for number, line in prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.append(
            Heading(number, len(match.group(1)), match.group(2), slug if count == 0 else f"{slug}-{count}")
        )
    return found


def anchors(text: str) -> set[str]:
    """Every `#fragment` a link into this page may name."""
    names = {h.anchor for h in headings(text)}
    names.update(m.group(1) for _, line in prose_lines(text) for m in _HTML_ANCHOR.finditer(line))
    return names


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link and image outside code."""
    found = []
    for number, line in prose_lines(text):
        blanked = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        found.extend((number, m.group(1)) for m in _LINK.finditer(blanked))
    return found


def section(text: str, anchor: str) -> str:
    """The body of the heading whose anchor is `anchor`, down to the next heading of the same
    or a higher level (sub-sections included)."""
    lines = text.splitlines()
    marks = headings(text)
    for k, heading in enumerate(marks):
        if heading.anchor == anchor:
            end = next((h.line - 1 for h in marks[k + 1 :] if h.level <= heading.level), len(lines))
            return "\n".join(lines[heading.line : end])
    raise LookupError(f"no heading with the anchor #{anchor}")


def _cells(row: str) -> list[str]:
    """A table row's cells; a `|` inside a code span or escaped as `\\|` is no separator."""
    cells, current, in_code = [], "", False
    body = row.strip().removeprefix("|").removesuffix("|")
    k = 0
    while k < len(body):
        ch = body[k]
        if ch == "\\" and body[k + 1 : k + 2] == "|":
            current += "|"
            k += 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += ch
        k += 1
    cells.append(current.strip())
    return cells


def tables(text: str) -> list[list[list[str]]]:
    """Every table: its header row, then its body rows, each a list of cells."""
    found: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for _, line in [*prose_lines(text), (0, "")]:
        if line.lstrip().startswith("|"):
            rows.append(_cells(line))
            continue
        if len(rows) >= 2 and all(re.fullmatch(r":?-{3,}:?", c) for c in rows[1]):
            found.append([rows[0], *rows[2:]])
        rows = []
    return found


def code_spans(text: str) -> list[str]:
    return [m.group(2).strip() for m in _CODE_SPAN.finditer(text)]
