"""Weekly counts of posts per topic and per theme for each company.

The ``weekly`` table is derived data, rebuilt in full after topics or themes
change, so a chart reads one small table instead of joining four.
"""

import logging
from collections import Counter
from datetime import datetime

import sqlite_utils

logger = logging.getLogger(__name__)

WEEKLY_SQL = """
SELECT p.published, coalesce(f.company, f.title, f.slug) AS company,
    'topic' AS kind, CAST(t.id AS TEXT) AS key, t.label AS label
FROM post_topics pt
JOIN topics t ON t.id = pt.topic_id
JOIN posts p ON p.id = pt.post_id
JOIN feeds f ON f.id = p.feed_id
WHERE p.published IS NOT NULL
UNION ALL
SELECT p.published, coalesce(f.company, f.title, f.slug),
    'theme', pt.theme, pt.theme
FROM post_themes pt
JOIN posts p ON p.id = pt.post_id
JOIN feeds f ON f.id = p.feed_id
WHERE p.published IS NOT NULL
"""


def iso_week(timestamp: str) -> str | None:
    """Return the ISO week of an ISO 8601 timestamp, such as "2026-W08".

    Returns None when the timestamp cannot be parsed.
    """
    try:
        year, week, _ = datetime.fromisoformat(timestamp).isocalendar()
    except ValueError:
        return None
    return f"{year}-W{week:02d}"


def rebuild_weekly(db: sqlite_utils.Database) -> int:
    """Replace the weekly table's rows from the current assignments.

    Posts without a published date are left out. Returns the number of rows
    written.
    """
    counts: Counter = Counter()
    for published, company, kind, key, label in db.execute(WEEKLY_SQL).fetchall():
        week = iso_week(published)
        if week is None:
            logger.debug("skipping unparseable published date %r", published)
            continue
        counts[(week, company, kind, key, label)] += 1
    records = [
        {
            "week": week,
            "company": company,
            "kind": kind,
            "key": key,
            "label": label,
            "posts": posts,
        }
        for (week, company, kind, key, label), posts in sorted(counts.items())
    ]
    with db.conn:
        db.execute("DELETE FROM weekly")
        db["weekly"].insert_all(records)
    return len(records)
