"""Open the knowledge base: one SQLite file in WAL mode, migrated on open."""

import logging
import os
import sqlite3 as stdlib_sqlite3
import time
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
    try:
        if not path.exists():
            check_folders(path)
            if not create:
                raise DatabaseError(
                    f"Database not found: {path}\n"
                    f"Run 'kb ingest --db {path}' to create it."
                )
            create_db_file(path)
        db = sqlite_utils.Database(path)
        configure(db)
        migrate(db)
    except SQLITE_ERRORS as error:
        raise database_error(path, error) from error
    except OSError as error:
        raise DatabaseError(f"Cannot open database {path}: {error}") from error
    return db


def create_db_file(path: Path) -> None:
    """Create an empty database file and its missing folders.

    Raises DatabaseError, naming the path and the reason, when a folder or
    the file cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatabaseError(
            f"Cannot create database {path}: the folder {path.parent} cannot be "
            f"created ({error.strerror}).\n"
            "Choose a --db path in a folder where you can create files."
        ) from error
    try:
        path.touch()
    except OSError as error:
        raise DatabaseError(
            f"Cannot create database {path}: the folder {path.parent} does not "
            f"accept new files ({error.strerror}).\n"
            "Choose a --db path in a folder where you can create files."
        ) from error


def check_folders(path: Path) -> None:
    """Raise DatabaseError when the nearest existing parent of ``path`` is a file."""
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise DatabaseError(
                    f"Cannot open database {path}: {ancestor} is a file, "
                    "not a folder.\nChoose a --db path inside a folder."
                )
            return


def configure(db: sqlite_utils.Database) -> None:
    """Set WAL mode, a busy timeout and foreign keys on a connection."""
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = switch_to_wal(db)
    if mode != "wal":
        logger.warning("journal_mode is %s, not wal, for %s", mode, db.conn)
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")


def switch_to_wal(db: sqlite_utils.Database) -> str:
    """Set WAL mode and return the journal mode, retrying while the file is locked.

    When several processes open a new file at once, they race to switch it
    to WAL, and SQLite can report "database is locked" at once instead of
    waiting for the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except SQLITE_ERRORS as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
