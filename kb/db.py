"""Open the knowledge base: one SQLite file in WAL mode, migrated on open."""

import logging
import os
import sqlite3 as stdlib_sqlite3
from pathlib import Path

import sqlite_utils
from sqlite_utils.utils import sqlite3

from kb import config
from kb.errors import DatabaseError
from kb.migrations import migrate

logger = logging.getLogger(__name__)

# sqlite-utils imports pysqlite3 when it is installed, else the standard
# library module. Catch errors from whichever one is in use.
SQLITE_ERRORS = (sqlite3.Error, stdlib_sqlite3.Error)
BUSY_TIMEOUT_MS = 30_000


def open_db(
    path: str | os.PathLike | None = None, *, create: bool = True
) -> sqlite_utils.Database:
    """Open the database at ``path`` (default: $KB_DB or data/kb.db) and migrate it.

    Raises DatabaseError when the file cannot be created, opened or written,
    naming the path and the reason.
    """
    path = config.db_path(path)
    if not create and not path.exists():
        raise DatabaseError(
            f"Database not found: {path}\nRun 'kb ingest --db {path}' to create it."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite_utils.Database(path)
        configure(db)
        migrate(db)
    except SQLITE_ERRORS as error:
        raise database_error(path, error) from error
    except OSError as error:
        raise DatabaseError(f"Cannot open database {path}: {error}") from error
    return db


def configure(db: sqlite_utils.Database) -> None:
    """Set WAL mode, a busy timeout and foreign keys on a connection."""
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        logger.warning("journal_mode is %s, not wal, for %s", mode, db.conn)
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")


def database_error(path: Path, error: Exception) -> DatabaseError:
    """Translate a sqlite3 error into a DatabaseError that says what to do."""
    message = str(error)
    if "readonly" in message or "read-only" in message:
        hint = "Check the permissions of the file and of its folder."
    elif "disk is full" in message or "disk I/O" in message:
        hint = "Free some disk space and run the command again; stored posts are kept."
    elif "locked" in message:
        hint = "Another process holds a write lock; try again when it finishes."
    elif "not a database" in message or "malformed" in message:
        hint = "The file is not a kb database, or it is damaged."
    else:
        hint = ""
    text = f"Database error in {path}: {message}"
    return DatabaseError(f"{text}\n{hint}" if hint else text)
