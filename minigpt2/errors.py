"""The one error type that means "the user's input or environment is wrong", not "the code is wrong".

Every error the project raises on purpose (a bad flag, a malformed data line, a missing file, a download that
failed, a run folder that does not match) is a `UserError` or a subclass. Each command catches `UserError` and
prints it as one `error: ...` line with exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unusable environment, explained in one line that says what was expected."""
