"""Exceptions raised by kb.

Every error that kb raises on purpose derives from KbError, so a caller can
catch one class::

    KbError
    ├── ConfigError          invalid setting, path or option value
    ├── DatabaseError        database file missing, locked, read-only or full
    │   └── IngestLocked     another ingest holds the lock
    ├── FeedError            one feed could not be fetched or parsed
    │   ├── FetchError       network failure, timeout or bad HTTP status
    │   └── ParseError       the bytes are not a feed
    ├── ModelError           embedding model missing or incompatible
    └── SearchError          a query that cannot run
"""


class KbError(Exception):
    """Base class for every error kb raises on purpose."""


class ConfigError(KbError):
    """An invalid setting, path or option value."""


class DatabaseError(KbError):
    """The database file is missing, locked, read-only or out of space."""


class IngestLocked(DatabaseError):
    """Another ingest is already writing to the same database."""


class FeedError(KbError):
    """One feed could not be fetched or parsed."""


class FetchError(FeedError):
    """A feed could not be fetched: network failure, timeout or bad HTTP status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ParseError(FeedError):
    """The fetched bytes are not a feed that anything could be recovered from."""


class ModelError(KbError):
    """The embedding model is missing, or its vectors do not match the stored ones."""


class SearchError(KbError):
    """A search that cannot run, such as an unknown mode or an invalid date."""
