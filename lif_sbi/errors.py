"""The exceptions the command-line tools turn into one line and an exit code."""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user (a file, an argument, a run folder): one line, exit code 2."""
