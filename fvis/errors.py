"""User-facing errors: a mistake in the user's input, reported in one line with exit code 2."""

from __future__ import annotations

YamlPath = tuple[str | int, ...]


class UserError(Exception):
    """A mistake the user can fix (bad file, bad value, missing weights): no traceback, exit 2."""

    exit_code = 2


class SpecError(UserError):
    """A user error tied to a place in the config, so it can be reported with file and line."""

    def __init__(self, loc: YamlPath, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class Interrupted(UserError):
    """Work stopped by Ctrl-C (or SIGTERM) after saving its checkpoint (a pass over data, a
    prior's training): exit 130, as a shell reports an interrupted command."""

    exit_code = 130
