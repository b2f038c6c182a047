"""The two errors every reader raises, each with a one-line message."""


class SourceError(FileNotFoundError):
    """A dataset source is missing or not in the layout expected (message: one line)."""


class BadImageError(ValueError):
    """One image file cannot be used; the message is the reason (recorded, then skipped)."""
