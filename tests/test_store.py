from datetime import datetime, timezone

import pytest

from kb.parse import parse_feed
from kb.store import store_entries

NIGHT_1 = "2026-05-01T00:00:00+00:00"
NIGHT_2 = "2026-05-02T00:00:00+00:00"


def rss(*items: str) -> bytes:
    body = "".join(items)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>T</title><link>https://blog.example</link>
{body}</channel></rss>""".encode()


def item(guid, link, title="A post", text="Some text about caching.", date=None):
    guid_xml = f"<guid>{guid}</guid>" if guid else ""
    link_xml = f"<link>{link}</link>" if link else ""
    date_xml = f"<pubDate>{date}</pubDate>" if date else ""
    return f"<item><title>{title}</title>{link_xml}{guid_xml}{date_xml}<description>{text}</description></item>"


@pytest.fixture
def feed_id(fresh_db):
    now = datetime.now(timezone.utc).isoformat()
    return (
        fresh_db["feeds"]
        .insert(
            {"slug": "example", "url": "https://blog.example/feed", "added_at": now}
        )
        .last_pk
    )


def store(db, feed_id, document, seen_at=NIGHT_1):
    entries = parse_feed(document, name="test.xml").entries
    with db.conn:
        return store_entries(db, feed_id, entries, seen_at)


def test_new_posts_are_inserted(fresh_db, feed_id):
    counts = store(
        fresh_db,
        feed_id,
        rss(item("g1", "https://blog.example/a"), item("g2", "https://blog.example/b")),
    )
    assert (counts.new, counts.updated, counts.unchanged) == (2, 0, 0)
    assert fresh_db["posts"].count == 2


def test_same_document_twice_changes_nothing(fresh_db, feed_id):
    document = rss(item("g1", "https://blog.example/a"))
    store(fresh_db, feed_id, document)
    counts = store(fresh_db, feed_id, document, NIGHT_2)
    assert (counts.new, counts.updated, counts.unchanged) == (0, 0, 1)


def test_rewritten_guids_and_links_do_not_duplicate(fresh_db, feed_id):
    store(
        fresh_db,
        feed_id,
        rss(item("https://blog.example/issue-1/", "https://blog.example/issue-1/")),
    )
    counts = store(
        fresh_db,
        feed_id,
        rss(item("https://blog.example/issue-1", "https://blog.example/issue-1")),
        NIGHT_2,
    )
    assert counts.new == 0
    assert fresh_db["posts"].count == 1


def test_tracking_parameters_do_not_duplicate(fresh_db, feed_id):
    store(fresh_db, feed_id, rss(item(None, "https://blog.example/a?utm_source=rss")))
    counts = store(
        fresh_db, feed_id, rss(item(None, "https://blog.example/a/")), NIGHT_2
    )
    assert counts.new == 0
    assert fresh_db["posts"].count == 1


def test_duplicate_guid_falls_back_to_link(fresh_db, feed_id):
    counts = store(
        fresh_db,
        feed_id,
        rss(
            item("same", "https://blog.example/a"),
            item("same", "https://blog.example/b"),
        ),
    )
    assert counts.new == 2
    guids = [row["guid"] for row in fresh_db["posts"].rows]
    assert guids == ["same", "same"]


def test_entry_without_guid_or_link_uses_title_and_date(fresh_db, feed_id):
    document = rss(
        item(None, None, title="Lonely", date="Tue, 03 Jun 2025 10:00:00 GMT")
    )
    store(fresh_db, feed_id, document)
    counts = store(fresh_db, feed_id, document, NIGHT_2)
    assert counts.unchanged == 1
    assert fresh_db["posts"].count == 1


def test_edit_updates_in_place_and_keeps_published(fresh_db, feed_id):
    date = "Tue, 03 Jun 2025 10:00:00 GMT"
    store(
        fresh_db,
        feed_id,
        rss(item("g1", "https://blog.example/a", text="Old words here.", date=date)),
    )
    counts = store(
        fresh_db,
        feed_id,
        rss(
            item(
                "g1",
                "https://blog.example/a",
                text="New words about sharding here.",
                date=date,
            )
        ),
        NIGHT_2,
    )
    assert counts.updated == 1
    post = next(fresh_db["posts"].rows)
    assert post["published"] == "2025-06-03T10:00:00+00:00"
    assert post["updated"] == NIGHT_2
    assert post["first_seen"] == NIGHT_1
    hits = fresh_db.execute(
        "select rowid from posts_fts where posts_fts match 'sharding'"
    ).fetchall()
    assert hits == [(post["id"],)]
    stale = fresh_db.execute(
        "select rowid from posts_fts where posts_fts match 'old'"
    ).fetchall()
    assert stale == []


def test_truncated_later_copy_keeps_the_full_text(fresh_db, feed_id):
    full = "Long article. " * 100
    store(fresh_db, feed_id, rss(item("g1", "https://blog.example/a", text=full)))
    counts = store(
        fresh_db,
        feed_id,
        rss(item("g1", "https://blog.example/a", text="Long article.")),
        NIGHT_2,
    )
    assert counts.unchanged == 1
    assert len(next(fresh_db["posts"].rows)["content_text"]) > 1000


def test_shared_link_identifies_no_entry(fresh_db, feed_id):
    # A podcast feed whose every item links to the show's homepage.
    document = rss(
        item("ep1", "https://show.example/"), item("ep2", "https://show.example/")
    )
    counts = store(fresh_db, feed_id, document)
    assert counts.new == 2
    assert [row["url"] for row in fresh_db["posts"].rows] == [None, None]


def test_same_post_in_two_feeds_is_stored_once(fresh_db, feed_id):
    other = (
        fresh_db["feeds"]
        .insert(
            {
                "slug": "mirror",
                "url": "https://mirror.example/feed",
                "added_at": NIGHT_1,
            }
        )
        .last_pk
    )
    store(fresh_db, feed_id, rss(item("g1", "https://blog.example/a")))
    counts = store(
        fresh_db,
        other,
        rss(item("mirror-1", "https://blog.example/a?source=rss")),
        NIGHT_2,
    )
    assert counts.new == 0
    assert fresh_db["posts"].count == 1
    assert next(fresh_db["posts"].rows)["feed_id"] == feed_id
