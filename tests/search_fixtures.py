"""Small databases of feeds and posts for the embedding and search tests."""

import hashlib

from kb.db import open_db

FEEDS = [
    # (slug, company)
    ("acme-eng", "Acme"),
    ("globex-blog", "Globex"),
    ("initech-tech", "Initech"),
]

POSTS = [
    # (feed slug, title, published, text)
    (
        "acme-eng",
        "Scaling Postgres with logical replication",
        "2021-03-04T10:00:00+00:00",
        "We moved our primary database to logical replication so that read "
        "replicas could serve analytics without locking the writer.",
    ),
    (
        "acme-eng",
        "Our on-call handbook",
        "2022-07-19T08:30:00+00:00",
        "Pager duty rotations, incident commanders and the postmortem template "
        "we use after every outage.",
    ),
    (
        "globex-blog",
        "Rust in the proxy",
        "2023-01-12T12:00:00+00:00",
        "Rewriting the HTML rewriter of our proxy in Rust removed a class of "
        "memory safety bugs; the C++ version parsed attributes by hand.",
    ),
    (
        "globex-blog",
        "Flaky tests and where they come from",
        "2023-05-02T09:00:00+00:00",
        "Large tests that use more memory fail at random more often, and a "
        "retry hides the cause. Flaky tests cost engineers trust in CI.",
    ),
    (
        "initech-tech",
        "Feature flags at scale",
        "2024-02-20T15:45:00+00:00",
        "Feature flags let us ship dark and roll out to one percent of users "
        "first. Postgres stores the flag rules.",
    ),
    (
        "initech-tech",
        "A zip file that contains itself",
        "2024-11-30T23:10:00+00:00",
        "A quine archive: unzipping the file yields the same zip file again, "
        "built from DEFLATE stored blocks and copy instructions.",
    ),
    ("initech-tech", "", "2024-12-01T00:00:00+00:00", ""),
]


def add_feed(db, slug: str, company: str) -> int:
    return db["feeds"].insert(
        {
            "slug": slug,
            "title": f"{company} blog",
            "company": company,
            "url": f"https://{slug}.example/feed.xml",
            "added_at": "2024-01-01T00:00:00+00:00",
        }
    ).last_pk


def add_post(db, feed_id: int, title: str, published: str | None, text: str) -> int:
    """Insert one post with only the columns every schema version requires."""
    number = db["posts"].count + 1
    return db["posts"].insert(
        {
            "feed_id": feed_id,
            "url": f"https://blog.example/posts/{number}",
            "link": f"https://blog.example/posts/{number}/",
            "fingerprint": f"fp-{number}",
            "title": title,
            "published": published,
            "first_seen": "2024-12-01T00:00:00+00:00",
            "content_text": text,
            "content_hash": hashlib.sha256(text.encode()).hexdigest(),
            "word_count": len(text.split()),
        }
    ).last_pk


def make_db(path, posts=POSTS):
    """Create a database at ``path`` holding ``FEEDS`` and ``posts``."""
    db = open_db(path)
    feed_ids = {slug: add_feed(db, slug, company) for slug, company in FEEDS}
    for slug, title, published, text in posts:
        add_post(db, feed_ids[slug], title, published, text)
    return db


def post_id_by_title(db, title: str) -> int:
    return db.execute("SELECT id FROM posts WHERE title = ?", [title]).fetchone()[0]
