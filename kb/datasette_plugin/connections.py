"""Read-only connections on which the plugin runs kb's search.

Datasette's own connections load sqlite-vec, so that Datasette can read the
vec0 table that kb embed adds to the file. The plugin searches on
connections of its own, opened read-only, that never load the extension, so
kb.vectors uses its numpy backend there. Once its copy of the vectors is in
memory, a scan of it is faster than a vec0 query at every size measured,
and a server loads it once at start-up."""

import threading
from pathlib import Path

import sqlite_utils
from sqlite_utils.utils import sqlite3

_local = threading.local()


class NoExtensionConnection:
    """A SQLite connection seen without ``enable_load_extension``."""

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, name):
        if name == "enable_load_extension":
            raise AttributeError(name)
        return getattr(self._conn, name)


def search_db(path: str) -> sqlite_utils.Database:
    """Return the calling thread's read-only database on the file at ``path``.

    Each thread keeps one connection per file for its whole life, so a search
    does not pay for opening one.
    """
    databases = _local.__dict__.setdefault("databases", {})
    db = databases.get(path)
    if db is None:
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        conn.execute("PRAGMA query_only = 1")
        db = sqlite_utils.Database(
            NoExtensionConnection(conn), recursive_triggers=False, execute_plugins=False
        )
        databases[path] = db
    return db
