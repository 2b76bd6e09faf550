"""The project's one JSONL reader (hub sources, synthetic sonnets)."""

from __future__ import annotations

import json


class JsonLineError(ValueError):
    """A line of a JSONL text that is not JSON; callers turn it into their own error naming the file."""

    def __init__(self, lineno: int, msg: str, cut_off: bool) -> None:
        super().__init__(f"line {lineno}: {msg}")
        self.lineno, self.msg = lineno, msg
        self.cut_off = cut_off  # the last line, with no newline after it: what an interrupted writer leaves


def parse_jsonl(text: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSONL text, in order.

    A line that is not JSON raises `JsonLineError` with its number and the parser's message.
    """
    lines = text.split("\n")
    values = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise JsonLineError(lineno, e.msg, cut_off=lineno == len(lines)) from None
    return values
