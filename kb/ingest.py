"""The nightly run: fetch or replay every feed and store its posts.

Two entry points share the same per-feed step. ``ingest_feeds`` fetches every
due feed over HTTP(S). ``ingest_paths`` replays saved feed files, URLs and
folders laid out as ``<source>/<YYYY-MM-DD>.xml``, one run per date in date
order, as if each date were a nightly run.

Each feed is written in one transaction: its posts, their FTS rows (through
triggers), its fetch log row and its state. Killing a run at any moment
therefore leaves whole feeds or nothing, and a rerun picks up where it stopped.
"""

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import sqlite_utils

from kb import feeds as feed_sources
from kb.db import SQLITE_ERRORS, check_folders, database_error
from kb.errors import ConfigError, DatabaseError, FeedError, IngestLocked
from kb.parse import ParsedFeed, parse_feed
from kb.store import StoreCounts, store_entries

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:T\d{2,6})?\.[A-Za-z0-9]+$")
MAX_FILE_BYTES = 50 * 1024 * 1024


@dataclass
class FeedOutcome:
    """The result of one feed in a run: counts, error and parser warnings."""

    name: str
    source: str
    outcome: str  # new, updated, unchanged, not_modified or failed
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    def line(self) -> str:
        """Return the one-line summary printed for this feed."""
        if self.failed:
            return f"{self.name}: failed: {self.error}"
        if self.outcome == "not_modified":
            return f"{self.name}: not modified (304)"
        text = f"{self.name}: {self.new} new, {self.updated} updated, {self.unchanged} unchanged"
        if self.warnings:
            text += f" ({len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''})"
        return text


@dataclass
class IngestReport:
    """The outcomes of one ingest command, over one or more runs."""

    outcomes: list[FeedOutcome] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)
    # True when each outcome is one replayed snapshot file, so a feed can have
    # several outcomes.
    is_replay: bool = False

    @property
    def failed(self) -> int:
        return sum(outcome.failed for outcome in self.outcomes)

    @property
    def new(self) -> int:
        return sum(outcome.new for outcome in self.outcomes)

    @property
    def updated(self) -> int:
        return sum(outcome.updated for outcome in self.outcomes)

    @property
    def unchanged(self) -> int:
        return sum(outcome.unchanged for outcome in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when every feed was handled, 1 when some failed, 2 when all failed."""
        if not self.outcomes or not self.failed:
            return 0
        return 2 if self.failed == len(self.outcomes) else 1

    def total_line(self) -> str:
        """Return the summary line of feeds, replayed snapshot files and posts."""
        feeds = len({outcome.name for outcome in self.outcomes})
        text = f"Total: {feeds} feed{'s' if feeds != 1 else ''}"
        if self.is_replay:
            files = len(self.outcomes)
            text += f" from {files} snapshot file{'s' if files != 1 else ''}"
        text += (
            f", {self.failed} failed; "
            f"{self.new} new, {self.updated} updated, {self.unchanged} unchanged posts"
        )
        if not self.new and not self.updated:
            text += "; nothing changed"
        return text


@dataclass
class Snapshot:
    """One saved feed document to replay: a file or a URL."""

    slug: str
    location: str
    date: str | None = None

    @property
    def feed_url(self) -> str:
        """The URL recorded for the source: the folder of dated snapshots, else itself."""
        if is_url(self.location):
            return self.location
        path = Path(self.location).resolve()
        return (path.parent if self.date else path).as_uri()


OnFeed = Callable[[FeedOutcome], None]
OnStart = Callable[[int], None]


@contextmanager
def ingest_lock(db_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock so that two ingests never write the same database.

    The lock is an advisory ``flock`` on ``<db>.lock``; the kernel drops it
    when the process dies, so a killed ingest never leaves a stale lock.
    """
    lock_path = Path(f"{db_path}.lock")
    check_folders(Path(db_path))
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as error:
        raise DatabaseError(
            f"Cannot create the lock file {lock_path}: {error.strerror}\n"
            "Check the permissions of its folder, where kb also writes the "
            "database and its -wal and -shm files."
        ) from error
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IngestLocked(
                f"Another kb ingest is running on {db_path} (lock file {lock_path}).\n"
                "Wait for it to finish; only one ingest may write at a time."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ingest_feeds(
    db: sqlite_utils.Database,
    *,
    settings=None,
    on_start: OnStart | None = None,
    on_feed: OnFeed | None = None,
    now: datetime | None = None,
) -> IngestReport:
    """Fetch every due feed over HTTP(S) and store its posts.

    Feeds whose back-off has not expired are left for a later run. One failing
    feed never stops the others; its error is recorded on the feed and in the
    fetch log.
    """
    from kb.fetch import FeedRequest, fetch_all

    now = now or datetime.now(timezone.utc)
    feed_sources.ensure_sources(db)
    due = feed_sources.due_feeds(db, now)
    if on_start:
        on_start(len(due))
    report = IngestReport()
    run_id = start_run(db, "fetch", label=None, feeds_total=len(due))
    report.run_ids.append(run_id)
    by_id = {feed["id"]: feed for feed in due}
    requests = [
        FeedRequest(
            feed_id=feed["id"],
            url=feed["url"],
            etag=feed["etag"],
            last_modified=feed["last_modified"],
        )
        for feed in due
    ]

    def store_result(result) -> None:
        feed = by_id[result.request.feed_id]
        outcome = store_fetch_result(db, run_id, feed, result)
        report.outcomes.append(outcome)
        if on_feed:
            on_feed(outcome)

    fetch_all(requests, settings=settings, on_result=store_result)
    finish_run(db, run_id, report)
    return report


def store_fetch_result(
    db: sqlite_utils.Database, run_id: int, feed: dict, result
) -> FeedOutcome:
    """Record one fetch and store its posts, all in one transaction."""
    now = datetime.now(timezone.utc)
    seen_at = now.isoformat(timespec="seconds")
    name = feed["slug"]
    outcome = FeedOutcome(name=name, source=result.request.url, outcome="failed")
    parsed: ParsedFeed | None = None
    body_sha256 = (
        hashlib.sha256(result.body).hexdigest() if result.body is not None else None
    )
    already_stored = stored_body_entries(db, feed["id"], body_sha256)
    if already_stored is not None and result.error is None:
        result.not_modified = True
    elif result.error is None and not result.not_modified and result.body is not None:
        try:
            parsed = parse_feed(
                result.body,
                name=result.final_url,
                base_url=result.final_url,
                content_type=result.content_type,
            )
        except FeedError as error:
            outcome.error = str(error)
    elif result.error:
        outcome.error = result.error
    try:
        with db.conn:
            # Bytes that do not parse count as a failure, and their validators
            # are not stored, so the next run fetches them again.
            parse_error = outcome.error if result.error is None else None
            feed_sources.record_fetch_outcome(db, feed, result, now, error=parse_error)
            if result.not_modified:
                outcome.outcome = "not_modified"
            elif parsed is not None:
                counts = store_entries(db, feed["id"], parsed.entries, seen_at)
                apply_counts(outcome, counts, parsed)
                fill_feed_details(db, feed, parsed)
            log_fetch(
                db,
                run_id,
                feed["id"],
                outcome,
                result=result,
                started=seen_at,
                body_sha256=body_sha256,
            )
    except SQLITE_ERRORS as error:
        raise database_error(Path(db_file(db)), error) from error
    for warning in outcome.warnings:
        logger.warning("%s", warning)
    return outcome


def ingest_paths(
    db: sqlite_utils.Database,
    paths: list[str],
    *,
    on_start: OnStart | None = None,
    on_feed: OnFeed | None = None,
) -> IngestReport:
    """Replay saved feed files, folders and URLs, one run per snapshot date.

    Raises ConfigError, before anything is written, when a path does not exist.
    """
    nights = plan_replay(paths)
    feed_sources.ensure_sources(db)
    if on_start:
        on_start(sum(len(snapshots) for _, snapshots in nights))
    report = IngestReport(is_replay=True)
    for label, snapshots in nights:
        run_id = start_run(db, "replay", label=label, feeds_total=len(snapshots))
        night = IngestReport(run_ids=[run_id])
        for snapshot in snapshots:
            outcome = replay_snapshot(db, run_id, snapshot)
            night.outcomes.append(outcome)
            if on_feed:
                on_feed(outcome)
        finish_run(db, run_id, night)
        report.run_ids.append(run_id)
        report.outcomes.extend(night.outcomes)
    return report


def plan_replay(paths: list[str]) -> list[tuple[str, list[Snapshot]]]:
    """Group the snapshots under ``paths`` into runs, in date order.

    Files named by date (``2026-05-08.xml``) are snapshots of the source named
    by their folder. Any other file is a source of its own, named after its
    folder and file name, and all of them replay in one run labelled "files"
    ahead of the dated runs.
    """
    missing = [path for path in paths if not is_url(path) and not Path(path).exists()]
    if missing:
        raise ConfigError(f"--from path not found: {', '.join(missing)}")
    undated: list[Snapshot] = []
    dated: dict[str, list[Snapshot]] = {}
    for path in paths:
        for snapshot in snapshots_under(path):
            if snapshot.date:
                dated.setdefault(snapshot.date, []).append(snapshot)
            else:
                undated.append(snapshot)
    nights = [("files", undated)] if undated else []
    for night_date in sorted(dated):
        nights.append(
            (night_date, sorted(dated[night_date], key=lambda snapshot: snapshot.slug))
        )
    return nights


def snapshots_under(path: str) -> Iterator[Snapshot]:
    if is_url(path):
        yield Snapshot(slug=slug_for_url(path), location=path)
        return
    root = Path(path)
    if root.is_file():
        yield snapshot_for_file(root)
        return
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_file():
            yield snapshot_for_file(child)
        elif child.is_dir():
            for grandchild in sorted(child.iterdir()):
                if grandchild.is_file() and not grandchild.name.startswith("."):
                    yield snapshot_for_file(grandchild)


def snapshot_for_file(path: Path) -> Snapshot:
    match = SNAPSHOT_NAME.match(path.name)
    if match and is_valid_date(match[1]):
        return Snapshot(
            slug=feed_sources.slugify(path.parent.name),
            location=str(path),
            date=match[1],
        )
    return Snapshot(
        slug=feed_sources.slugify(f"{path.parent.name}-{path.stem}"), location=str(path)
    )


def replay_snapshot(
    db: sqlite_utils.Database, run_id: int, snapshot: Snapshot
) -> FeedOutcome:
    """Store the posts of one saved document as one feed's nightly fetch."""
    now = datetime.now(timezone.utc)
    stamp = now.isoformat(timespec="seconds")
    seen_at = f"{snapshot.date}T00:00:00+00:00" if snapshot.date else stamp
    outcome = FeedOutcome(
        name=snapshot.slug, source=snapshot.location, outcome="failed"
    )
    data = body_sha256 = None
    try:
        data, base_url, content_type = read_snapshot(snapshot)
        body_sha256 = hashlib.sha256(data).hexdigest()
    except (FeedError, OSError) as error:
        outcome.error = describe_error(snapshot, error)
    try:
        with db.conn:
            feed = feed_sources.feed_for_slug(db, snapshot.slug, url=snapshot.feed_url)
            already_stored = stored_body_entries(db, feed["id"], body_sha256)
            if already_stored is not None:
                outcome.outcome = "unchanged"
                outcome.unchanged = already_stored
                mark_succeeded(db, feed, now)
            elif data is not None:
                try:
                    parsed = parse_feed(
                        data,
                        name=snapshot.location,
                        base_url=base_url,
                        content_type=content_type,
                    )
                except FeedError as error:
                    outcome.error = describe_error(snapshot, error)
                    mark_failed(db, feed, outcome.error, now)
                else:
                    counts = store_entries(db, feed["id"], parsed.entries, seen_at)
                    apply_counts(outcome, counts, parsed)
                    fill_feed_details(db, feed, parsed)
                    mark_succeeded(db, feed, now)
            else:
                mark_failed(db, feed, outcome.error, now)
            log_fetch(
                db,
                run_id,
                feed["id"],
                outcome,
                result=None,
                started=stamp,
                body_sha256=body_sha256,
            )
    except SQLITE_ERRORS as error:
        raise database_error(Path(db_file(db)), error) from error
    for warning in outcome.warnings:
        logger.warning("%s", warning)
    return outcome


def describe_error(snapshot: Snapshot, error: Exception) -> str:
    """Return an error message that names the snapshot exactly once."""
    message = str(error)
    if snapshot.location in message:
        return message
    return f"{snapshot.location}: {message}"


def read_snapshot(snapshot: Snapshot) -> tuple[bytes, str | None, str | None]:
    """Return the bytes of a snapshot, its base URL and its content type."""
    if is_url(snapshot.location):
        from kb.fetch import FeedRequest, fetch_all

        result = fetch_all(
            [
                FeedRequest(
                    feed_id=None, url=snapshot.location, etag=None, last_modified=None
                )
            ]
        )[0]
        if result.error:
            raise FeedError(result.error)
        return result.body or b"", result.final_url, result.content_type
    path = Path(snapshot.location)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise FeedError(
            f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte limit for a feed"
        )
    return path.read_bytes(), None, None


def apply_counts(outcome: FeedOutcome, counts: StoreCounts, parsed: ParsedFeed) -> None:
    outcome.new, outcome.updated, outcome.unchanged = (
        counts.new,
        counts.updated,
        counts.unchanged,
    )
    outcome.warnings = parsed.warnings
    if counts.new:
        outcome.outcome = "new"
    elif counts.updated:
        outcome.outcome = "updated"
    else:
        outcome.outcome = "unchanged"


def fill_feed_details(
    db: sqlite_utils.Database, feed: dict, parsed: ParsedFeed
) -> None:
    """Fill a feed's title and homepage from the document when they are empty."""
    changes = {}
    if not feed.get("title") and parsed.title:
        changes["title"] = parsed.title
    if not feed.get("homepage") and parsed.homepage and is_url(parsed.homepage):
        changes["homepage"] = parsed.homepage
    if changes:
        db["feeds"].update(feed["id"], changes)


def mark_succeeded(db: sqlite_utils.Database, feed: dict, now: datetime) -> None:
    stamp = now.isoformat(timespec="seconds")
    db["feeds"].update(
        feed["id"],
        {
            "last_fetched_at": stamp,
            "last_success_at": stamp,
            "consecutive_failures": 0,
            "last_error": None,
            "next_fetch_after": None,
        },
    )


def mark_failed(
    db: sqlite_utils.Database, feed: dict, error: str | None, now: datetime
) -> None:
    from kb.fetch import next_attempt_after

    failures = (db["feeds"].get(feed["id"])["consecutive_failures"] or 0) + 1
    db["feeds"].update(
        feed["id"],
        {
            "last_fetched_at": now.isoformat(timespec="seconds"),
            "consecutive_failures": failures,
            "last_error": error,
            "etag": None,
            "last_modified": None,
            "next_fetch_after": next_attempt_after(failures, None, now).isoformat(
                timespec="seconds"
            ),
        },
    )


def stored_body_entries(
    db: sqlite_utils.Database, feed_id: int, body_sha256: str | None
) -> int | None:
    """Return the entry count when this feed already stored these exact bytes.

    Parsing the same bytes again would change nothing, so a nightly run over
    an unchanged feed skips the parse, like a 304 for servers without ETags.
    """
    if body_sha256 is None:
        return None
    row = db.execute(
        "select posts_new + posts_updated + posts_unchanged from fetches "
        "where feed_id = ? and body_sha256 = ? and outcome != 'failed' "
        "order by id desc limit 1",
        [feed_id, body_sha256],
    ).fetchone()
    return row[0] if row else None


def log_fetch(
    db: sqlite_utils.Database,
    run_id: int,
    feed_id: int | None,
    outcome: FeedOutcome,
    *,
    result,
    started: str,
    body_sha256: str | None = None,
) -> None:
    db["fetches"].insert(
        {
            "run_id": run_id,
            "feed_id": feed_id,
            "source": outcome.source,
            "started_at": started,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "http_status": getattr(result, "status", None),
            "outcome": outcome.outcome,
            "posts_new": outcome.new,
            "posts_updated": outcome.updated,
            "posts_unchanged": outcome.unchanged,
            "bytes": getattr(result, "bytes", None),
            "body_sha256": body_sha256,
            "elapsed_ms": getattr(result, "elapsed_ms", None),
            "error": outcome.error,
            "warning": "\n".join(outcome.warnings) or None,
        }
    )


def start_run(
    db: sqlite_utils.Database, mode: str, *, label: str | None, feeds_total: int
) -> int:
    """Insert a run row, first closing runs that a killed ingest left open."""
    with db.conn:
        # The caller holds the ingest lock, so any run still marked running
        # belongs to a process that died.
        db.execute("update runs set status = 'aborted' where status = 'running'")
        return (
            db["runs"]
            .insert(
                {
                    "started_at": datetime.now(timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    "mode": mode,
                    "label": label,
                    "status": "running",
                    "feeds_total": feeds_total,
                }
            )
            .last_pk
        )


def finish_run(db: sqlite_utils.Database, run_id: int, report: IngestReport) -> None:
    status = {0: "ok", 1: "partial", 2: "failed"}[report.exit_code]
    with db.conn:
        db["runs"].update(
            run_id,
            {
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "status": status,
                "feeds_ok": len(report.outcomes) - report.failed,
                "feeds_failed": report.failed,
                "posts_new": report.new,
                "posts_updated": report.updated,
            },
        )


def refresh_derived(
    db: sqlite_utils.Database,
    *,
    model_name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """Embed new and edited posts, then update topics and themes.

    Yields one message per step for the caller to print. The posts are already
    committed, so a failure here (a missing model, say) loses nothing that was
    ingested.

    Parameters
    ----------
    model_name
        The embedding model, as for kb.embed.get_embedder.
    progress
        Called with the number of posts embedded after each batch.
    """
    from kb.embed import embed_posts
    from kb.themes import assign_themes
    from kb.topics import update_topics

    stats = embed_posts(db, model_name, progress=progress)
    yield (
        f"Embeddings ({stats.model}): {stats.posts_embedded} posts embedded "
        f"in {stats.chunks_embedded} chunks, {stats.posts_unchanged} unchanged, "
        f"{stats.posts_without_text} without text"
    )
    yield f"Topics: {update_topics(db, model_name)}"
    yield f"Themes: {assign_themes(db, model_name=model_name)}"


def is_valid_date(text: str) -> bool:
    """Tell whether a snapshot file name contains a real date (not 2024-13-45)."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def slug_for_url(url: str) -> str:
    return feed_sources.slugify(re.sub(r"^https?://", "", url))


def db_file(db: sqlite_utils.Database) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] if row else "database"
