"""One error type for mistakes a user can fix, and the CLI wrapper that prints them without a traceback."""
import functools
import os
import sys


class UserError(Exception):
    """Bad input the user can fix: the message names what is wrong and how to fix it."""


def cli_main(main):
    """Wrap a command-line `main(argv)`: a UserError prints one paragraph and exits 2.

    Set NPU_MODELS_DEBUG=1 to see the full traceback instead.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            if os.environ.get("NPU_MODELS_DEBUG"):
                raise
            print(f"error: {err}\n(set NPU_MODELS_DEBUG=1 for the traceback)", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
            sys.exit(130)

    return wrapper
