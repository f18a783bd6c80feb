"""User errors: one line on stderr, exit code 2, never a traceback."""
import functools
import sys


class UserError(Exception):
    """Something the user can fix (missing file, bad value); the message says what to run."""


def cli_main(main):
    """Wrap an entry script's main(): a UserError ends the process with one line and exit 2.
    Called without argv (from the command line), the process may restart itself (utils/pace.py)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        if argv is None:  # the process runs this script from its command line
            from utils.pace import allow_restart
            allow_restart()
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: run the same command again to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper
