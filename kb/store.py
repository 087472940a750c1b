"""Write parsed entries into ``posts``: one row per article, edits in place.

Identity follows a fixed order. An entry's guid identifies it when that guid
is unique within the document; otherwise, or when the guid is new, its
canonical link does; an entry with neither is matched on a hash of its title
and date. A publisher that rewrites every guid and link of the same posts
(``/issue-351/`` becoming ``/issue-351``) therefore still matches the stored
rows through the canonical link, and nothing is duplicated.
"""

import logging
from collections import Counter
from dataclasses import dataclass

import sqlite_utils

from kb.parse import ParsedEntry

logger = logging.getLogger(__name__)

# A later snapshot whose text is this much shorter than the stored one is the
# same post cut down to a summary (rolling feeds trim old items), not an edit.
TRUNCATION_RATIO = 0.8
# A second feed carrying the same article replaces the stored text only when
# its text is this much longer, so two feeds never take turns overwriting it.
OTHER_FEED_GAIN = 1.1


@dataclass
class StoreCounts:
    """How many entries of one document were new, updated or unchanged."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0


def store_entries(
    db: sqlite_utils.Database,
    feed_id: int,
    entries: list[ParsedEntry],
    seen_at: str,
) -> StoreCounts:
    """Insert new entries and update edited ones; the caller owns the transaction.

    Parameters
    ----------
    feed_id
        The feed the entries came from.
    entries
        Entries of one document, in feed order.
    seen_at
        UTC ISO 8601 time of this run, stored as ``first_seen`` of new posts and
        as ``updated`` of edited posts whose entry gives no updated date.
    """
    counts = StoreCounts()
    guid_counts = Counter(entry.guid for entry in entries if entry.guid)
    url_counts = Counter(entry.url for entry in entries if entry.url)
    handled: set[int] = set()
    for entry in entries:
        guid = entry.guid if entry.guid and guid_counts[entry.guid] == 1 else None
        # A link shared by several entries (a podcast whose every item links to
        # its homepage) identifies none of them.
        url = entry.url if entry.url and url_counts[entry.url] == 1 else None
        existing = find_post(db, feed_id, guid, url, entry.fingerprint)
        if existing is None:
            post_id = insert_post(db, feed_id, entry, guid, url, seen_at)
            if post_id is not None:
                handled.add(post_id)
                counts.new += 1
            continue
        if existing["id"] in handled:
            # The same article twice in one document: the first one wins.
            continue
        handled.add(existing["id"])
        if update_post(db, feed_id, existing, entry, url, seen_at):
            counts.updated += 1
        else:
            counts.unchanged += 1
    return counts


def find_post(
    db: sqlite_utils.Database,
    feed_id: int,
    guid: str | None,
    url: str | None,
    fingerprint: str,
) -> dict | None:
    """Return the stored post an entry matches, or None."""
    if guid:
        row = first_row(
            db, "select * from posts where feed_id = ? and guid = ?", [feed_id, guid]
        )
        if row:
            return row
    if url:
        row = first_row(db, "select * from posts where url = ?", [url])
        if row:
            return row
    if not guid and not url:
        return first_row(
            db,
            "select * from posts where feed_id = ? and fingerprint = ? and url is null",
            [feed_id, fingerprint],
        )
    return None


def first_row(db: sqlite_utils.Database, sql: str, params: list) -> dict | None:
    rows = list(db.query(sql, params))
    return rows[0] if rows else None


def insert_post(
    db: sqlite_utils.Database,
    feed_id: int,
    entry: ParsedEntry,
    guid: str | None,
    url: str | None,
    seen_at: str,
) -> int | None:
    """Insert a new post and return its id."""
    if url and first_row(db, "select id from posts where url = ?", [url]):
        # The link belongs to another stored post, matched earlier by guid.
        url = None
    row = {
        "feed_id": feed_id,
        "url": url,
        "link": entry.link,
        "guid": guid or entry.guid,
        "fingerprint": entry.fingerprint,
        "title": entry.title,
        "author": entry.author,
        "published": entry.published,
        "updated": entry.updated,
        "first_seen": seen_at,
        "summary": entry.summary,
        "content_html": entry.content_html,
        "content_text": entry.content_text,
        "content_hash": entry.content_hash,
        "word_count": entry.word_count,
    }
    return db["posts"].insert(row).last_pk


def update_post(
    db: sqlite_utils.Database,
    feed_id: int,
    existing: dict,
    entry: ParsedEntry,
    url: str | None,
    seen_at: str,
) -> bool:
    """Apply an edited entry to its stored post; return True when it changed.

    The published date stays; ``updated`` moves to the entry's updated date,
    or to ``seen_at`` when the feed gives none. The FTS index follows through
    the triggers on ``posts``.
    """
    changes = {}
    if existing["published"] is None and entry.published:
        changes["published"] = entry.published
    if (
        url
        and existing["url"] is None
        and not first_row(db, "select id from posts where url = ?", [url])
    ):
        changes["url"] = url
    if entry.content_hash != existing["content_hash"] and is_edit(
        feed_id, existing, entry
    ):
        changes.update(
            {
                "title": entry.title,
                "author": entry.author,
                "summary": entry.summary,
                "content_html": entry.content_html,
                "content_text": entry.content_text,
                "content_hash": entry.content_hash,
                "word_count": entry.word_count,
                "updated": edit_time(entry.updated, existing["updated"], seen_at),
            }
        )
    if not changes:
        return False
    db["posts"].update(existing["id"], changes)
    return "content_hash" in changes


def is_edit(feed_id: int, existing: dict, entry: ParsedEntry) -> bool:
    """Decide whether a changed entry replaces the stored text."""
    stored_length = len(existing["content_text"] or "")
    new_length = len(entry.content_text)
    same_title = (entry.title or "") == (existing["title"] or "")
    if existing["feed_id"] != feed_id:
        return new_length > stored_length * OTHER_FEED_GAIN
    if same_title and new_length < stored_length * TRUNCATION_RATIO:
        return False
    return True


def edit_time(
    entry_updated: str | None, stored_updated: str | None, seen_at: str
) -> str:
    """Return the new ``updated`` of an edited post: the feed's date if it moved."""
    if entry_updated and (stored_updated is None or entry_updated > stored_updated):
        return entry_updated
    return seen_at
