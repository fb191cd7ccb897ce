"""One place that turns a user's mistake into one line and exit status 2."""
from __future__ import annotations

import sys
import traceback
from typing import Callable, Sequence


class UserError(Exception):
    """A mistake the user can fix (bad flag value, missing file, broken image).

    The message is one line that names the problem and, where possible, the fix.
    Scripts print it without a traceback and exit with status 2.
    """


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main``; print a UserError as one line (traceback with ``--debug``).

    Returns the process exit status: 0 on success, 2 for a user mistake,
    130 when interrupted with Ctrl-C.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(args) or 0)
    except UserError as exc:
        if "--debug" in args:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
