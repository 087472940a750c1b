"""Feed health: which feeds work, which fail, which have gone quiet."""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlite_utils

# A feed that has failed this many runs in a row is shown as failing.
FAILING_AFTER = 3
# A feed whose newest post is older than this is shown as silent.
SILENT_AFTER = timedelta(days=90)

HEALTH_SQL = """
select
    feeds.id, feeds.slug, feeds.company, feeds.title, feeds.url, feeds.status,
    feeds.last_success_at, feeds.last_fetched_at, feeds.consecutive_failures,
    feeds.last_error, feeds.next_fetch_after,
    count(posts.id) as posts,
    max(posts.published) as newest_post
from feeds left join posts on posts.feed_id = feeds.id
group by feeds.id
order by feeds.slug
"""


@dataclass
class FeedHealth:
    """One feed's row in ``kb status``."""

    slug: str
    company: str | None
    status: str
    health: str  # ok, failing, dead, silent, new or disabled
    posts: int
    newest_post: str | None
    last_success_at: str | None
    consecutive_failures: int
    last_error: str | None


def feed_health(
    db: sqlite_utils.Database, now: datetime | None = None
) -> list[FeedHealth]:
    """Return the health of every feed, worst first within the usual slug order."""
    now = now or datetime.now(timezone.utc)
    rows = []
    for row in db.query(HEALTH_SQL):
        rows.append(
            FeedHealth(
                slug=row["slug"],
                company=row["company"],
                status=row["status"],
                health=classify(row, now),
                posts=row["posts"],
                newest_post=row["newest_post"],
                last_success_at=row["last_success_at"],
                consecutive_failures=row["consecutive_failures"],
                last_error=row["last_error"],
            )
        )
    return rows


def classify(row: dict, now: datetime) -> str:
    """Name the state of a feed row from its status, failures and newest post."""
    if row["status"] == "retired":
        return "dead"
    if row["status"] == "disabled":
        return "disabled"
    if row["consecutive_failures"] >= FAILING_AFTER:
        return "failing"
    if row["last_fetched_at"] is None:
        return "new"
    newest = row["newest_post"]
    if newest is None or datetime.fromisoformat(newest) < now - SILENT_AFTER:
        return "silent"
    return "ok"
