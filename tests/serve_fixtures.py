"""A small knowledge base for the Datasette tests: three companies, a hostile post.

The hostile post carries script in its title, summary and body, so the tests
can check that no page runs it.
"""

from datetime import datetime, timezone

from kb.db import open_db
from kb.embed import embed_posts

NOW = "2026-08-21T06:00:00+00:00"
# The deterministic test embedding model of kb.embed.
MODEL = "hash:64"

FEEDS = [
    {
        "id": 1,
        "slug": "acme-engineering",
        "title": "Acme Engineering",
        "company": "Acme",
        "url": "https://acme.example/feed.xml",
        "status": "active",
        "consecutive_failures": 0,
        "last_fetched_at": NOW,
        "last_success_at": NOW,
    },
    {
        "id": 2,
        "slug": "globex-tech",
        "title": "Globex Tech Blog",
        "company": "Globex",
        "url": "https://globex.example/rss",
        "status": "active",
        "consecutive_failures": 3,
        "last_error": "HTTP 503 from https://globex.example/rss",
        "last_fetched_at": NOW,
        "last_success_at": "2026-08-17T06:00:00+00:00",
    },
    {
        "id": 3,
        "slug": "initech-blog",
        "title": "Initech Blog",
        "company": "Initech",
        "url": "https://initech.example/atom.xml",
        "status": "active",
        "consecutive_failures": 0,
        "last_fetched_at": NOW,
        "last_success_at": NOW,
    },
    {
        "id": 5,
        "slug": "umbrella-research",
        "title": "Umbrella Research",
        "company": "Umbrella",
        "url": "https://umbrella.example/feed.xml",
        "status": "active",
        "consecutive_failures": 0,
        "last_fetched_at": NOW,
        "last_success_at": NOW,
    },
    {
        "id": 4,
        "slug": "hooli-retired",
        "title": "Hooli XYZ",
        "company": "Hooli",
        "url": "https://hooli.example/feed",
        "status": "retired",
        "consecutive_failures": 12,
        "last_error": "HTTP 410 Gone",
        "last_fetched_at": NOW,
        "last_success_at": "2025-01-02T06:00:00+00:00",
    },
]

HOSTILE_TITLE = '<script>window.kbPwned = "title"</script>Hostile <b>post</b>'
HOSTILE_SUMMARY = (
    '<img src="x" onerror="window.kbPwned = \'summary\'"> quarterly failover drill'
)
HOSTILE_HTML = (
    "<p>Failover drill notes.</p>"
    '<script>window.kbPwned = "body"</script>'
    '<img src="x" onerror="window.kbPwned = \'img\'">'
    "<a href=\"javascript:window.kbPwned='link'\">javascript link</a>"
    "<svg onload=\"window.kbPwned = 'svg'\"></svg>"
    "<iframe src=\"javascript:window.kbPwned = 'iframe'\"></iframe>"
    '<p style="color:red" onclick="window.kbPwned = \'click\'">styled text</p>'
)

POSTS = [
    {
        "id": 1,
        "feed_id": 1,
        "url": "https://acme.example/blog/multi-az-failover",
        "title": "How we run multi-AZ failover for Postgres",
        "author": "Ada",
        "published": "2026-08-20T09:00:00+00:00",
        "summary": "Acme moved its Postgres clusters to a multi-AZ setup with "
        "automated failover and practised it weekly.",
        "content_html": "<p>We run Postgres in three availability zones.</p>"
        "<p>Failover is automated and <em>tested</em> every week.</p>"
        '<p><a href="https://acme.example/blog/drills">Our drills</a></p>',
        "content_text": "We run Postgres in three availability zones. Failover is "
        "automated and tested every week. Our drills",
    },
    {
        "id": 2,
        "feed_id": 2,
        "url": "https://globex.example/posts/kafka-consumer-lag",
        "title": "Taming Kafka consumer lag",
        "author": "Grace",
        "published": "2026-08-20T15:30:00+00:00",
        "summary": "Globex cut Kafka consumer lag with better partitioning.",
        "content_html": "<p>Consumer lag grew with traffic.</p>",
        "content_text": "Consumer lag grew with traffic. Partitioning by tenant "
        "fixed the hot partitions in Kafka.",
    },
    {
        "id": 3,
        "feed_id": 3,
        "url": "https://initech.example/2026/database-failover-testing",
        "title": "Testing database failover in production",
        "author": None,
        "published": "2026-08-19T12:00:00+00:00",
        "summary": "Initech injects failures into its database tier.",
        "content_html": None,
        "content_text": "Initech injects failures into its database tier to test "
        "failover.\n\nChaos experiments run every Tuesday.",
    },
    {
        "id": 4,
        "feed_id": 1,
        "url": "https://acme.example/blog/hostile",
        "title": HOSTILE_TITLE,
        "author": '<script>window.kbPwned = "author"</script>',
        "published": "2026-08-18T08:00:00+00:00",
        "summary": HOSTILE_SUMMARY,
        "content_html": HOSTILE_HTML,
        "content_text": "Failover drill notes. javascript link styled text",
    },
    {
        "id": 5,
        "feed_id": 2,
        "url": "https://globex.example/posts/observability-budget",
        "title": "An observability budget for every team",
        "author": "Linus",
        "published": "2026-08-12T10:00:00+00:00",
        "summary": "Globex gives every team a budget for metrics and traces.",
        "content_html": "<p>Metrics cost money.</p>",
        "content_text": "Metrics cost money. Every team gets a budget for "
        "observability data.",
    },
    {
        "id": 6,
        "feed_id": 4,
        "url": "https://hooli.example/old-news",
        "title": "Hooli compression research",
        "author": None,
        "published": "2024-12-01T00:00:00+00:00",
        "summary": "A middle-out compression result.",
        "content_html": None,
        "content_text": "A middle-out compression result.",
    },
    {
        "id": 7,
        "feed_id": 5,
        "url": "https://umbrella.example/2026/03/vaccine-pipeline",
        "title": "Our data pipeline for lab results",
        "author": None,
        "published": "2026-03-02T10:00:00+00:00",
        "summary": "Umbrella rebuilt its lab results pipeline on Kafka.",
        "content_html": None,
        "content_text": "Umbrella rebuilt its lab results pipeline on Kafka "
        "streams and Postgres.",
    },
]

TOPICS = [
    {"id": 1, "label": "failover · postgres · drills", "terms": ["failover"]},
    {"id": 2, "label": "kafka · lag · partitions", "terms": ["kafka"]},
]
POST_TOPICS = [(1, 1, 0.91), (3, 1, 0.84), (4, 1, 0.55), (2, 2, 0.88), (5, 2, 0.41)]
THEMES = [
    {"name": "resilience", "description": "Keeping systems up when parts fail"},
    {"name": "data-streaming", "description": "Moving events between systems"},
]
POST_THEMES = [
    (1, "resilience", 0.8),
    (3, "resilience", 0.7),
    (2, "data-streaming", 0.9),
]
RELATED = [(1, 3, 0.83, 1), (1, 4, 0.61, 2), (1, 2, 0.20, 3), (3, 1, 0.83, 1)]


def build_kb(path) -> None:
    """Create a kb database at ``path`` holding the rows above."""
    db = open_db(path)
    try:
        fill(db)
    finally:
        db.close()


def fill(db) -> None:
    added = "2026-01-01T00:00:00+00:00"
    db["feeds"].insert_all([{**feed, "added_at": added} for feed in FEEDS])
    for post in POSTS:
        row = {
            **post,
            "link": post["url"],
            "guid": post["url"],
            "fingerprint": f"fp{post['id']}",
            "first_seen": post["published"],
            "content_hash": f"hash{post['id']}",
            "word_count": len(post["content_text"].split()),
        }
        db["posts"].insert(row)
    embed_posts(db, MODEL)
    fill_topics(db)
    fill_related(db)


def fill_topics(db) -> None:
    now = datetime(2026, 8, 21, tzinfo=timezone.utc).isoformat()
    for topic in TOPICS:
        db["topics"].insert(
            {
                "id": topic["id"],
                "label": topic["label"],
                "terms": topic["terms"],
                "size": sum(1 for row in POST_TOPICS if row[1] == topic["id"]),
                "model": MODEL,
                "centroid": b"\x00" * 16,
                "threshold": 0.3,
                "created": now,
                "last_seen": now,
            }
        )
    for post_id, topic_id, score in POST_TOPICS:
        db["post_topics"].insert(
            {"post_id": post_id, "topic_id": topic_id, "score": score, "assigned": now}
        )
    for theme in THEMES:
        db["themes"].insert({**theme, "updated": now})
    for post_id, theme, score in POST_THEMES:
        db["post_themes"].insert({"post_id": post_id, "theme": theme, "score": score})


def fill_related(db) -> None:
    """Replace the computed related posts with fixed ones, so tests can name them."""
    db.execute("delete from related_posts")
    db["related_posts"].insert_all(
        [
            {"post_id": post_id, "related_id": related_id, "score": score, "rank": rank}
            for post_id, related_id, score, rank in RELATED
        ]
    )
