"""The course's sonnet layout, written and parsed in one place: a header, then per sonnet its number on a line,
a blank line, its lines (the training file, the prompts, the true sonnets and generated-sonnets files)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

# Written into every converted sonnet file; kept word for word so that re-fetched files stay byte-identical.
SONNET_HEADER = ("Sonnets", "by William Shakespeare", "Project Gutenberg eBook #1041",
                 "https://www.gutenberg.org/ebooks/1041",
                 "Converted to the course layout by minigpt2.data (Gutenberg text, not the Folger edition)",
                 "Roman-numeral headings replaced by numbers; curly quotes made straight",
                 "Public domain in the USA", "", "", "", "")


def sonnet_file(blocks: Sequence[tuple[int, Sequence[str]]], trailer: str) -> bytes:
    """The course layout: an 11-line header, then `number`, a blank line, the lines, a blank line between
    sonnets; CRLF line ends. `trailer` is what follows the last line (the course files differ here)."""
    lines = list(SONNET_HEADER)
    for k, (number, body) in enumerate(blocks):
        lines += [str(number), "", *body] + ([""] if k < len(blocks) - 1 else [])
    return ("\r\n".join(lines) + trailer).encode("utf-8")


@dataclass(frozen=True)
class Sonnet:
    """A numbered sonnet (or prompt) and its lines, as printed."""

    number: int
    lines: tuple[str, ...]
    line: int = field(default=0, compare=False)  # where its number stands in the file (1-based)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


_NUMBER_LINE = re.compile(r"^\s*(\d+)\s*$")


def is_number_line(line: str) -> bool:
    """True for a line holding only a sonnet's number, which starts a sonnet in the course layout."""
    return _NUMBER_LINE.match(line) is not None


def parse_sonnets(text: str) -> list[Sonnet]:
    """The sonnets of a file in the course layout (what `sonnet_file` writes, and the generated-sonnets files):
    a header, then per sonnet its number on a line, a blank line, its lines. Empty when no number line is found.

    Anything before the first number line is the header. Blank lines between sonnets are dropped; line ends
    (CRLF or LF) and trailing spaces are normalised; a couplet's leading indentation is kept.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sonnets: list[Sonnet] = []
    number: int | None = None
    body: list[str] = []
    start = 0
    for n, raw in enumerate(lines, start=1):
        m = _NUMBER_LINE.match(raw)
        if m:
            if number is not None:
                sonnets.append(Sonnet(number, tuple(body), start))
            number, body, start = int(m.group(1)), [], n
        elif number is not None and raw.strip():
            body.append(raw.rstrip())
    if number is not None:
        sonnets.append(Sonnet(number, tuple(body), start))
    return sonnets
