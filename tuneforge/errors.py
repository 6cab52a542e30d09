"""Errors meant for people, not tracebacks.

A `UserError` is raised for anything the user can fix (a missing file, a bad row, an unknown model).
The CLI prints its one-line message and exits with code 2; nothing else in tuneforge catches it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, code: str | None = None):
        self.path = path
        self.line = line
        self.code = code
        self.bare_message = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
