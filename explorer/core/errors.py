"""User-facing errors.

Every problem a user can cause or fix (bad input, missing weights, a library that is not
indexed) is raised as an ``ExplorerError`` whose message is one clear line. The CLI prints
that line and exits non-zero; the GUI shows it in the window. Anything else is a bug.
"""


class ExplorerError(Exception):
    """A problem the user can understand and act on; ``str(err)`` is the whole message."""


class ModelUnavailable(ExplorerError):
    """A model backend cannot be loaded (missing weights or package); the message says what to get."""


class BadImage(ExplorerError):
    """An input file cannot be decoded as an image (corrupt, truncated, too large, not an image)."""


class BadQuery(ExplorerError):
    """A query cannot be run (empty text, missing file, library not indexed...)."""


class BadGroundTruth(ExplorerError):
    """Ground truth is malformed; the message names the offending line or entry."""


class Cancelled(ExplorerError):
    """Long work was cancelled by the user; what was done so far is kept."""


class LibraryCorrupt(ExplorerError):
    """The library database is damaged (a failed integrity check, an empty or foreign file); nothing is changed."""
