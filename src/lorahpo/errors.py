"""The one way a ``lorahpo`` command fails: one line on stderr, ``lorahpo: error: <message>``.

Every command raises :class:`UserError` (or a subclass, such as the config's ``ConfigError``)
for a mistake the user can fix; :func:`lorahpo.cli.main` prints it with :func:`print_error` and
exits with :data:`EXIT_USAGE`; the command line's parser reports a bad argument the same way.
Nothing is written before the input has been checked, so a refused command leaves no
half-written output.
"""

from __future__ import annotations

import sys

#: Exit code of a mistake in the input (argparse's own code for a bad argument).
EXIT_USAGE = 2

#: Exit code of a run that started and failed (the input was fine).
EXIT_FAILURE = 1


class UserError(Exception):
    """A mistake the user can fix (an argument, a config, a folder, a missing extra), in one line."""


def print_error(message: str) -> None:
    """Print ``lorahpo: error: <message>`` on stderr, the form of every command's error."""
    print(f"lorahpo: error: {message}", file=sys.stderr)
