"""One error base for the whole package.

A KetchError's message is what the user sees (one line, no traceback) and its
``exit_code`` is the process exit status. The scheme, documented in the README:

  0  ok
  1  completed with warnings (e.g. an unreadable file was skipped)
  2  failed
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNINGS = 1
EXIT_FAILED = 2


class KetchError(Exception):
    """ketch failed."""

    exit_code = EXIT_FAILED


class UsageError(KetchError):
    """Bad command-line input."""


class NotARepository(KetchError):
    """The directory is not a ketch/bup/git repository."""


class ObjectNotFound(KetchError):
    """An object id is not in the repository."""


class RefNotFound(KetchError):
    """A ref, branch or path does not exist."""


class CorruptObject(KetchError):
    """An object or pack failed its checksum or could not be decoded."""


class RefConflict(KetchError):
    """A ref moved under us: compare-and-swap failed."""
