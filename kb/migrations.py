"""Numbered, append-only schema migrations.

Each migration is a function that takes a sqlite_utils.Database and runs
inside one transaction. Applied migrations are recorded in the
``kb_migrations`` table, so running them again does nothing. Never edit a
migration that has shipped: append a new one.
"""

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import sqlite_utils
from sqlite_utils.utils import sqlite3

MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = []


def migration(number: int):
    """Register a function as migration ``number``."""

    def register(function):
        MIGRATIONS.append((number, function.__name__, function))
        MIGRATIONS.sort(key=lambda item: item[0])
        return function

    return register


def applied_migrations(db: sqlite_utils.Database) -> set[int]:
    """Return the numbers of the migrations already applied to ``db``."""
    if "kb_migrations" not in db.table_names():
        return set()
    return {row["id"] for row in db["kb_migrations"].rows}


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every pending migration in order and return their names.

    Each migration and its ``kb_migrations`` row commit together, under a
    write lock, so a process killed halfway leaves the migration unapplied,
    and two processes opening a new database at once apply it only once.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS kb_migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    names = []
    for number, name, function in MIGRATIONS:
        if number in applied_migrations(db):
            continue
        with write_transaction(db):
            # Another process may have applied it while this one waited.
            if number in applied_migrations(db):
                continue
            with scripts_in_transaction(db):
                function(db)
            db.execute(
                "INSERT INTO kb_migrations (id, name, applied_at) VALUES (?, ?, ?)",
                [number, name, datetime.now(timezone.utc).isoformat()],
            )
        names.append(name)
    return names


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """Hold SQLite's write lock from the start, commit on success, else roll back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.conn.rollback()
        raise
    db.conn.commit()


@contextmanager
def scripts_in_transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """Make ``db.executescript`` run its statements inside the open transaction.

    The sqlite3 module's executescript() commits first and then runs each
    statement on its own, so a migration written with it (or with
    sqlite-utils' enable_fts, which calls it) would be applied in pieces.
    """
    db.executescript = functools.partial(execute_statements, db)
    try:
        yield
    finally:
        del db.executescript


def execute_statements(db: sqlite_utils.Database, script: str) -> None:
    """Execute the statements of ``script`` one by one, without committing."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        # A ";" inside a string, a comment or a trigger body does not end
        # the statement, and complete_statement() tells those cases apart.
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                db.execute(pending)
            pending = ""
    if pending.strip(" \t\r\n;"):
        db.execute(pending)  # an unfinished statement: SQLite reports the error


@migration(1)
def m001_feeds_posts_runs(db: sqlite_utils.Database) -> None:
    """Create feeds, posts, the posts FTS5 index and the run and fetch logs."""
    db.executescript(
        """
        CREATE TABLE feeds (
            id INTEGER PRIMARY KEY,
            slug TEXT NOT NULL UNIQUE,
            title TEXT,
            company TEXT,
            url TEXT NOT NULL UNIQUE,
            homepage TEXT,
            category TEXT,
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'disabled', 'retired')),
            etag TEXT,
            last_modified TEXT,
            last_fetched_at TEXT,
            last_success_at TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_fetch_after TEXT,
            added_at TEXT NOT NULL
        );
        CREATE TABLE posts (
            id INTEGER PRIMARY KEY,
            feed_id INTEGER NOT NULL REFERENCES feeds(id),
            url TEXT UNIQUE,
            link TEXT,
            guid TEXT,
            fingerprint TEXT NOT NULL,
            title TEXT,
            author TEXT,
            published TEXT,
            updated TEXT,
            first_seen TEXT NOT NULL,
            summary TEXT,
            content_html TEXT,
            content_text TEXT,
            content_hash TEXT NOT NULL,
            word_count INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX posts_feed_guid ON posts (feed_id, guid);
        CREATE INDEX posts_fingerprint ON posts (fingerprint);
        CREATE INDEX posts_published ON posts (published);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            mode TEXT NOT NULL,
            label TEXT,
            status TEXT NOT NULL DEFAULT 'running',
            feeds_total INTEGER NOT NULL DEFAULT 0,
            feeds_ok INTEGER NOT NULL DEFAULT 0,
            feeds_failed INTEGER NOT NULL DEFAULT 0,
            posts_new INTEGER NOT NULL DEFAULT 0,
            posts_updated INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE fetches (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            feed_id INTEGER REFERENCES feeds(id),
            source TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            http_status INTEGER,
            outcome TEXT NOT NULL,
            posts_new INTEGER NOT NULL DEFAULT 0,
            posts_updated INTEGER NOT NULL DEFAULT 0,
            posts_unchanged INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER,
            body_sha256 TEXT,
            elapsed_ms INTEGER,
            error TEXT,
            warning TEXT
        );
        CREATE INDEX fetches_feed ON fetches (feed_id, started_at);
        CREATE INDEX fetches_body ON fetches (feed_id, body_sha256);
        """
    )
    # External-content FTS5 table kept in step by triggers, so a post and its
    # index row are written in the same transaction.
    db["posts"].enable_fts(
        ["title", "content_text"], tokenize="porter", create_triggers=True
    )


@migration(3)
def m003_topics_themes(db: sqlite_utils.Database) -> None:
    """Create topics, themes, their post assignments and the weekly counts."""
    db.executescript(
        """
        CREATE TABLE topic_fits (
            id INTEGER PRIMARY KEY,
            fitted_at TEXT NOT NULL,
            model TEXT NOT NULL,
            posts INTEGER NOT NULL,
            topics INTEGER NOT NULL,
            unassigned INTEGER NOT NULL,
            silhouette REAL,
            matched INTEGER NOT NULL DEFAULT 0,
            created INTEGER NOT NULL DEFAULT 0,
            retired INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE topics (
            id INTEGER PRIMARY KEY,
            label TEXT NOT NULL,
            terms TEXT NOT NULL,
            size INTEGER NOT NULL DEFAULT 0,
            companies TEXT NOT NULL DEFAULT '[]',
            representative_posts TEXT NOT NULL DEFAULT '[]',
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'retired')),
            model TEXT NOT NULL,
            centroid BLOB NOT NULL,
            threshold REAL NOT NULL,
            fit_id INTEGER REFERENCES topic_fits(id),
            created TEXT NOT NULL,
            last_seen TEXT NOT NULL
        );
        CREATE TABLE post_topics (
            post_id INTEGER PRIMARY KEY REFERENCES posts(id) ON DELETE CASCADE,
            topic_id INTEGER NOT NULL REFERENCES topics(id),
            score REAL NOT NULL,
            assigned TEXT NOT NULL
        );
        CREATE INDEX post_topics_topic ON post_topics (topic_id, score);
        CREATE TABLE themes (
            name TEXT PRIMARY KEY,
            description TEXT NOT NULL,
            keywords TEXT NOT NULL DEFAULT '[]',
            source TEXT,
            threshold REAL,
            posts INTEGER NOT NULL DEFAULT 0,
            updated TEXT NOT NULL
        );
        CREATE TABLE post_themes (
            post_id INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
            theme TEXT NOT NULL REFERENCES themes(name) ON DELETE CASCADE,
            score REAL NOT NULL,
            PRIMARY KEY (post_id, theme)
        );
        CREATE INDEX post_themes_theme ON post_themes (theme, score);
        CREATE TABLE weekly (
            week TEXT NOT NULL,
            company TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('topic', 'theme')),
            key TEXT NOT NULL,
            label TEXT NOT NULL,
            posts INTEGER NOT NULL,
            PRIMARY KEY (week, company, kind, key)
        );
        """
    )


@migration(2)
def m002_vectors(db: sqlite_utils.Database) -> None:
    """Create the vector store, its k-means clusters and the related-posts table."""
    db.executescript(
        """
        CREATE TABLE post_embeddings (
            post_id INTEGER PRIMARY KEY REFERENCES posts(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            text_hash TEXT NOT NULL,
            chunks INTEGER NOT NULL,
            embedded_at TEXT NOT NULL
        );
        -- One row per post vector (chunk IS NULL) and per chunk vector, as
        -- little-endian float32 blobs. Ids are never reused, so a vec0 index
        -- can catch up by inserting every id above the last one it saw.
        CREATE TABLE vectors (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            post_id INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
            chunk INTEGER,
            model TEXT NOT NULL,
            cluster INTEGER NOT NULL DEFAULT 0,
            vector BLOB NOT NULL
        );
        CREATE INDEX vectors_post ON vectors (post_id);
        CREATE INDEX vectors_cluster ON vectors (cluster);
        CREATE TABLE vector_clusters (
            id INTEGER PRIMARY KEY,
            centroid BLOB NOT NULL
        );
        CREATE TABLE vector_deletions (id INTEGER PRIMARY KEY);
        CREATE TABLE vector_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL DEFAULT 0,
            clusters_version INTEGER NOT NULL DEFAULT 0,
            trained_on INTEGER NOT NULL DEFAULT 0,
            vec_dim INTEGER,
            vec_synced_id INTEGER NOT NULL DEFAULT 0,
            vec_clusters_version INTEGER
        );
        INSERT INTO vector_state (id) VALUES (1);
        -- generation changes with every write, so a process that holds the
        -- vectors in memory knows when to load them again.
        CREATE TRIGGER vectors_inserted AFTER INSERT ON vectors BEGIN
            UPDATE vector_state SET generation = generation + 1 WHERE id = 1;
        END;
        CREATE TRIGGER vectors_deleted AFTER DELETE ON vectors BEGIN
            UPDATE vector_state SET generation = generation + 1 WHERE id = 1;
            INSERT OR IGNORE INTO vector_deletions (id) VALUES (old.id);
        END;
        CREATE TABLE related_posts (
            post_id INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
            related_id INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
            score REAL NOT NULL,
            rank INTEGER NOT NULL,
            PRIMARY KEY (post_id, rank)
        );
        CREATE INDEX related_posts_related ON related_posts (related_id);
        """
    )


@migration(4)
def m004_posts_view(db: sqlite_utils.Database) -> None:
    """Create posts_view: each post with its company, year, month, topic and themes.

    Datasette facets on columns, so the view turns the joins an analyst would
    write into plain columns. ``themes`` is a JSON array, for an array facet.
    """
    db.execute(
        """
        CREATE VIEW posts_view AS
        SELECT
            posts.id,
            posts.title,
            coalesce(
                nullif(trim(feeds.company), ''),
                nullif(trim(feeds.title), ''),
                feeds.slug
            ) AS company,
            feeds.slug AS feed,
            substr(posts.published, 1, 4) AS year,
            substr(posts.published, 1, 7) AS month,
            posts.published,
            topics.label AS topic,
            (
                SELECT json_group_array(post_themes.theme)
                FROM post_themes
                WHERE post_themes.post_id = posts.id
            ) AS themes,
            posts.author,
            posts.word_count,
            posts.summary,
            posts.url
        FROM posts
        JOIN feeds ON feeds.id = posts.feed_id
        LEFT JOIN post_topics ON post_topics.post_id = posts.id
        LEFT JOIN topics ON topics.id = post_topics.topic_id
        """
    )


@migration(5)
def m005_posts_feed_published(db: sqlite_utils.Database) -> None:
    """Index posts by feed and date for the company and year facets and feed_health.

    Both read only these columns, so the index covers them and they skip the
    post rows, which hold the full text.
    """
    # kb serve created this index itself before the migration existed.
    db.execute(
        "CREATE INDEX IF NOT EXISTS posts_feed_published ON posts (feed_id, published)"
    )
