"""One error type for mistakes a user can fix, and how its message names an option.

A message names the option at fault with `arg("tp", 2)`: a Python caller reads `tp=2` (the argument of
the function it called), a command-line user reads `--tp 2` (npu_models.cli.cli_main renders every message
so), from the same message. Library code never writes a command-line flag itself. This module knows nothing
of ranks or processes: it sits below everything that raises a UserError.
"""
import re
from pathlib import Path

# Python arguments whose command-line option is not spelled `--name-with-dashes`.
CLI_FLAGS = {"name_or_path": "--model", "config_file": "--config", "vocab_file": "--vocab"}

# arg() leaves a marker in the message, rendered when the message is shown: name, then the value's Python
# and command-line spellings (control characters, which no path or name holds).
_START, _FIELD, _END = "\x02", "\x1f", "\x03"
_MARKER = re.compile(f"{_START}([^{_END}]*){_END}")
_NO_VALUE = object()


def arg(name: str, value=_NO_VALUE) -> str:
    """The argument `name` (set to `value`) inside a UserError message: `name=value` for Python callers,
    `--name value` on the command line (`--name` alone for a switch, value True); without a value, `name=...`
    and `--name`."""
    if value is _NO_VALUE:
        return f"{_START}{name}{_END}"
    shown = "" if value is True else str(value)  # a switch is given without a value at the command line
    return f"{_START}{name}{_FIELD}{value!r}{_FIELD}{shown}{_END}"


def cli_flag(name: str) -> str:
    return CLI_FLAGS.get(name, "--" + name.replace("_", "-"))


def render(message: str, command_line: bool) -> str:
    """The message with every arg() spelled for a Python caller or for the command line."""
    def spell(match):
        name, *value = match.group(1).split(_FIELD)
        if command_line:
            return cli_flag(name) + (f" {value[1]}" if value and value[1] else "")
        return f"{name}={value[0] if value else '...'}"
    return _MARKER.sub(spell, message)


class UserError(Exception):
    """Bad input the user can fix: the message names what is wrong and how to fix it (options by arg())."""

    def __str__(self):
        return render(super().__str__(), command_line=False)

    def command_line_message(self) -> str:
        """The message as the command-line tools show it: options as their flags."""
        return render(super().__str__(), command_line=True)



class UserFacingWarning(UserWarning):
    """A warning for the user, whose message may name arguments with arg(): rendered as a UserError's is (the
    command-line tools print it as one line, options as flags: npu_models.cli)."""

    def __str__(self):
        return render(super().__str__(), command_line=False)

    def command_line_message(self) -> str:
        return render(super().__str__(), command_line=True)


def check_paths_exist(paths: dict[str, object]) -> None:
    """Every path given (argument name -> path, or None where not given) exists; the missing ones are reported
    together, before any work, so that a user with two wrong paths fixes both in one go."""
    missing = [arg(name, value) for name, value in paths.items() if value is not None and not Path(value).exists()]
    if len(missing) == 1:
        raise UserError(f"{missing[0]} does not exist; check the path.")
    if missing:
        raise UserError(f"these paths do not exist: {'; '.join(missing)}. Check each (a typo, a relative path from "
                        "another directory, a file not yet downloaded).")
