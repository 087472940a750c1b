"""Small synthetic corpora for the topic and theme tests.

Each synthetic topic is a random direction with its own vocabulary; its
posts are noisy copies of the direction whose titles use that vocabulary,
so both the clustering and the labels have a known ground truth.
"""

import hashlib

import numpy as np

TOPIC_WORDS = {
    "kubernetes": "kubernetes pods scheduler cluster autoscaling",
    "rust": "rust borrow checker memory safety ownership",
    "postgres": "postgres vacuum index replication query planner",
    "gpu": "gpu training cuda kernels accelerator",
    "outage": "outage incident postmortem root cause recovery",
}


def required_defaults(db, table: str) -> dict:
    """Return a value for each NOT NULL column of ``table`` without a default."""
    values = {}
    for column in db.execute(f"PRAGMA table_info({table})").fetchall():
        _, name, column_type, notnull, default, primary_key = column
        if notnull and default is None and not primary_key:
            values[name] = 0 if "INT" in column_type.upper() else f"{name}-value"
    return values


def add_feed(db, slug: str, company: str | None = None) -> int:
    record = required_defaults(db, "feeds")
    record.update(
        slug=slug,
        url=f"https://{slug}.example/feed.xml",
        company=company,
        added_at="2026-01-01T00:00:00+00:00",
    )
    return db["feeds"].insert(record).last_pk


def add_post(
    db,
    feed_id: int,
    url: str,
    title: str,
    text: str = "",
    published: str | None = "2026-03-02T10:00:00+00:00",
) -> int:
    record = required_defaults(db, "posts")
    record.update(
        feed_id=feed_id,
        url=url,
        link=url,
        title=title,
        content_text=text,
        published=published,
        first_seen="2026-03-02T00:00:00+00:00",
        fingerprint=hashlib.sha256(url.encode()).hexdigest(),
        content_hash=hashlib.sha256(f"{title}\n{text}".encode()).hexdigest(),
    )
    return db["posts"].insert(record).last_pk


def synthetic_corpus(
    topics: list[str], per_topic: int, dim: int = 32, seed: int = 0, noise: float = 0.3
) -> list[dict]:
    """Return posts as dicts of url, title, text, topic and vector."""
    rng = np.random.default_rng(seed)
    directions = {}
    for name in topics:
        # Each topic's direction depends only on its name, so corpora built
        # with different seeds or sizes share topics.
        topic_rng = np.random.default_rng(
            int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        )
        direction = topic_rng.normal(size=dim)
        directions[name] = direction / np.linalg.norm(direction)
    posts = []
    for name in topics:
        words = TOPIC_WORDS[name].split()
        for index in range(per_topic):
            vector = directions[name] + noise * rng.normal(size=dim) / np.sqrt(dim)
            picked = rng.choice(words, size=3, replace=False)
            posts.append(
                {
                    "url": f"https://blog.example/{name}/{seed}-{index}",
                    "title": f"{name} {' '.join(picked)} note {seed}-{index}",
                    "text": f"{TOPIC_WORDS[name]} {' '.join(picked)}",
                    "topic": name,
                    "vector": (vector / np.linalg.norm(vector)).astype(np.float32),
                }
            )
    return posts


def store_corpus(db, posts: list[dict], company: str = "Example") -> tuple:
    """Insert posts under one feed; return (post ids, vectors) in that order."""
    feed = db["feeds"].rows_where("slug = ?", ["example"])
    existing = list(feed)
    feed_id = existing[0]["id"] if existing else add_feed(db, "example", company)
    ids = [
        add_post(db, feed_id, post["url"], post["title"], post["text"])
        for post in posts
    ]
    vectors = (
        np.stack([post["vector"] for post in posts]) if posts else np.zeros((0, 32))
    )
    return np.array(ids), vectors.astype(np.float32)
