"""The one error type that means "the user's input or environment is wrong", not "the code is wrong".

Every error the project raises on purpose (a bad flag, a malformed data line, a missing file, a download that
failed, a run folder that does not match) is a `UserError` or a subclass. Each command catches `UserError` and
prints it as one `error: ...` line with exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """Bad input or an unusable environment, explained in one line that says what was expected."""


class FieldError(UserError, ValueError):
    """A setting outside its range, naming the setting's field: `lr 0.0: expected a finite number > 0`.

    A command that reads the setting from a flag names the flag instead (`app.cli` maps fields to flags).
    """

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__(f"{field} {value}: expected {expected}")
        self.field, self.value, self.expected = field, value, expected


def require(ok: bool, field: str, value: object, expected: str) -> None:
    """Raise `FieldError(field, value, expected)` unless `ok`."""
    if not ok:
        raise FieldError(field, value, expected)


def exits_on_user_error(main: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command's `main`: a `UserError` becomes one `error: ...` line on stderr and exit code 1.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            raise SystemExit(f"error: {e}") from None

    return wrapper
