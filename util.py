"""What every script shares at its edges: user-facing errors and the command-line wrapper that
prints them as one line, and the log with its terminal-safe output. Imports nothing heavy."""
import argparse
import contextlib
import functools
import logging
import os
import sys

log = logging.getLogger("npr")


class UserError(Exception):
    """A problem the user can fix (bad flag, missing folder, bad checkpoint).

    Scripts print it as one line and exit with status 2 instead of a traceback.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the script kept and how to go on; ``run_cli`` prints it as one line."""


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to an option's help, unless the help says what the default is or the
    default is None (unset: the help says what happens then)."""

    def _get_help_string(self, action):
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flags, bad values) are a ``UserError``: the scripts print
    it as one line and exit with status 2, without the usage dump."""

    def __init__(self, description):
        super().__init__(description=description, formatter_class=DefaultsFormatter)

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def run_cli(main, argv=None):
    """Run ``main(argv)`` as a script. A ``UserError`` is one readable line and exit code 2;
    Ctrl-C is one line (``Interrupted`` says what was kept) and 130; a reader that stops reading
    (``predict.py ... | head``) ends the script quietly with 141, as it ends ``cat``; a character
    the terminal cannot encode (a photo's name in an ASCII console) is printed escaped."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # not a text stream (a test's capture)
            stream.reconfigure(errors="backslashreplace")
    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
    except UserError as e:
        print(f"error: {terminal_safe(one_line(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(terminal_safe(f"interrupted{': ' + str(e) if str(e) else ''}"), file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        sys.exit(141)
    sys.exit(code or 0)


def one_line(err):
    """The user-facing line of an error; a DataLoader worker re-raises it wrapped in a traceback."""
    text = str(err).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text


# C0 and C1 control characters and DEL: a file name may carry a terminal's escape sequences.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


@functools.cache
def _control_table(keep):
    return {c: e for c, e in _CONTROL.items() if chr(c) not in keep}


def terminal_safe(text, keep="\n\t"):
    """``text`` with control characters shown as escapes (``\\x1b``), so that a file name holding
    escape sequences is printed, not obeyed by the terminal; the characters in ``keep`` stay."""
    return text.translate(_control_table(keep))


def printable(name):
    """A file name as text can show it (a terminal, a table, a CSV): bytes that are not UTF-8
    (kept by Python as surrogates) become U+FFFD instead of raising, and control characters (a
    newline, a terminal's escape sequence) are shown escaped, on the name's one line."""
    return terminal_safe(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), keep="")


class TerminalSafeFormatter(logging.Formatter):
    def format(self, record):
        return terminal_safe(super().format(record))


def setup_logging(log_file=None, rank=0):
    """Log to stdout (rank 0 only) and, when given, to ``log_file``."""
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if rank != 0:
        log.addHandler(logging.NullHandler())
        return log
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(TerminalSafeFormatter("%(message)s"))
    log.addHandler(out)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        fh.setFormatter(TerminalSafeFormatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    return log
