"""The one exception type for expected failures (bad input, bad config, refused operations).

Every entry point turns a `UserError` into one line `error: <message>` on stderr and exit status 2
(common/cli.py); anything else is a bug and keeps its traceback. Messages follow
`<what> [<file/key>]: <problem>` so a user can find the offending input without reading code.
"""
from __future__ import annotations


class UserError(Exception):
    """An expected failure a user can fix; its message is shown as it is."""


def where(what: str, key: str | None = None) -> str:
    """`what [key]` for the head of an error message."""
    return f"{what} [{key}]" if key else what
