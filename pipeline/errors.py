"""The errors a user can cause and fix: a bad recipe, option or output folder, a busy port.

The command line prints such an error as one line and exits with status 2; anything else that
escapes is a bug and keeps its traceback. Each module's own error class derives from
``UserError`` (and from the built-in class it was before, so existing ``except`` clauses hold).
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in what the user asked for, explained in the message."""
