"""What every command-line tool of ours shares: the main wrapper that prints a UserError as one paragraph
without a traceback, and notes printed once for the job however many ranks run it."""
import functools
import os
import sys
import warnings

from npu_models import parallel
from npu_models.errors import UserError


def cli_main(main):
    """Wrap a command-line `main(argv)`: a UserError prints one paragraph, options spelled as flags, and
    exits 2; a warning prints as one line (show_warning). Under torchrun, rank 0 alone prints warnings and errors
    (parallel.report_error).

    Set NPU_MODELS_DEBUG=1 to see the full traceback instead (on every rank).
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                if not parallel.is_main_process():  # every rank runs the same code: rank 0 speaks for all
                    warnings.simplefilter("ignore")
                return main(argv)
        except UserError as err:
            if os.environ.get("NPU_MODELS_DEBUG"):
                raise
            parallel.report_error(f"error: {err.command_line_message()}\n(set NPU_MODELS_DEBUG=1 for the traceback)")
            sys.exit(2)
        except KeyboardInterrupt:
            if parallel.is_main_process():
                print("interrupted; rerun the same command to resume where it stopped", file=sys.stderr)
            sys.exit(130)

    return wrapper


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warning: ...` on one line, options spelled as flags, without Python's file, line and source line: a
    command-line user acts on the message, not on where in our code it was raised."""
    text = message.command_line_message() if hasattr(message, "command_line_message") else str(message)
    print(f"warning: {text}", file=sys.stderr if file is None else file, flush=True)


def note(message: str) -> None:
    """A one-line remark on how the command runs (`note: ...` on stderr), printed by rank 0 alone under torchrun."""
    if parallel.is_main_process():
        print(f"note: {message}", file=sys.stderr, flush=True)
