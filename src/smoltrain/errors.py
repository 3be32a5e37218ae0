"""Errors that mean the user asked for something that cannot work.

The CLI prints these as one line (no traceback) and exits with status 2. Each message names the
problem and, where there is one, the fix.
"""


class SmoltrainError(Exception):
    """A user-facing error: bad path, malformed input, unknown config key, wrong vocabulary, ..."""


class ConfigError(SmoltrainError):
    """A config key or value that does not fit the schema."""


class DataError(SmoltrainError):
    """A dataset or input file that is missing or malformed."""


class OutputError(SmoltrainError, OSError):
    """An output that cannot be written: a file where a directory should be, a read-only or full file
    system, a name too long, no permission. The message names the path, the reason and the fix.

    Still an ``OSError`` to code that handles those; one line, not a traceback, to the CLI."""
