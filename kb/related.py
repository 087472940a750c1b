"""Keep the related_posts table: each post's nearest posts by post vector.

Posts from other companies are preferred: a neighbour from the same company
ranks as if its similarity were ``SAME_COMPANY_PENALTY`` lower, so a post's
list is not just the rest of its own blog. ``score`` stores the plain cosine
similarity.
"""

import logging

import numpy as np

from kb.vectors import load_post_vectors

logger = logging.getLogger(__name__)

RELATED_LIMIT = 10
SAME_COMPANY_PENALTY = 0.1
BLOCK_ROWS = 1024


def refresh_related(db, changed_ids: list[int]) -> int:
    """Recompute the related posts of ``changed_ids`` and of their neighbours.

    The neighbours are the posts that listed a changed post before and the
    posts a changed post lists now, so both sides of a new or dropped link
    are updated. Returns how many posts got a new list.
    """
    if not changed_ids:
        return 0
    ids, matrix = load_post_vectors(db)
    position = {int(post_id): row for row, post_id in enumerate(ids)}
    changed = set(changed_ids)
    placeholders = ", ".join("?" * len(changed))
    listed_before = {
        row[0]
        for row in db.execute(
            f"SELECT DISTINCT post_id FROM related_posts "
            f"WHERE related_id IN ({placeholders})",
            list(changed),
        )
    }
    companies = post_companies(db, ids)
    first = [pid for pid in changed if pid in position]
    lists = nearest_lists(first, ids, matrix, companies, position)
    listed_now = {related for entries in lists.values() for related, _ in entries}
    second = [
        pid for pid in (listed_before | listed_now) - set(first) if pid in position
    ]
    lists.update(nearest_lists(second, ids, matrix, companies, position))
    write_lists(db, changed | set(lists), lists)
    logger.info("refreshed related posts of %d posts", len(lists))
    return len(lists)


def post_companies(db, ids: np.ndarray) -> np.ndarray:
    """Return, for each post id, its feed's company (else its slug), lowercased."""
    rows = dict(
        db.execute(
            "SELECT posts.id, lower(coalesce(nullif(feeds.company, ''), feeds.slug)) "
            "FROM posts JOIN feeds ON feeds.id = posts.feed_id"
        )
    )
    return np.array([rows.get(int(post_id), "") for post_id in ids], dtype=object)


def nearest_lists(targets, ids, matrix, companies, position) -> dict[int, list]:
    """Return ``{post_id: [(related_id, score), ...]}`` for each target post."""
    lists = {}
    for start in range(0, len(targets), BLOCK_ROWS):
        block = targets[start : start + BLOCK_ROWS]
        rows = np.array([position[pid] for pid in block])
        similarity = matrix[rows] @ matrix.T
        for offset, row in enumerate(rows):
            scores = similarity[offset]
            adjusted = scores - SAME_COMPANY_PENALTY * (companies == companies[row])
            adjusted[row] = -np.inf
            count = min(RELATED_LIMIT, len(ids) - 1)
            if count <= 0:
                lists[int(ids[row])] = []
                continue
            top = np.argpartition(-adjusted, count - 1)[:count]
            top = top[np.argsort(-adjusted[top], kind="stable")]
            lists[int(ids[row])] = [(int(ids[i]), float(scores[i])) for i in top]
    return lists


def write_lists(db, post_ids: set[int], lists: dict[int, list]) -> None:
    with db.conn:
        for post_id in post_ids:
            db.execute("DELETE FROM related_posts WHERE post_id = ?", [post_id])
        db.conn.executemany(
            "INSERT INTO related_posts (post_id, related_id, score, rank) "
            "VALUES (?, ?, ?, ?)",
            [
                (post_id, related_id, score, rank)
                for post_id, entries in lists.items()
                for rank, (related_id, score) in enumerate(entries, start=1)
            ],
        )
