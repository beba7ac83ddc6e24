"""What every entry point does with an expected failure: one line `error: ...` on stderr and exit 2.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(cli.run(main))

A `UserError` (ConfigError, InputError, ...) becomes `error: <message>`; `--debug` on the command line or
STG_DEBUG=1 re-raises it with its traceback. Anything else is a bug and keeps its traceback. Ctrl-C exits 130
without one.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from common.errors import UserError


def debug_wanted(argv: Sequence[str] | None = None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("STG_DEBUG", "") not in ("", "0")


def fail(message: str) -> int:
    """Print one error line (never more: a multi-line message is folded) and return exit status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    return 2


def run(main: Callable[..., int | None], argv: Sequence[str] | None = None) -> int:
    try:
        code = main(argv) if argv is not None else main()
    except UserError as e:
        if debug_wanted(argv):
            raise
        return fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
