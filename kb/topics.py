"""Discovered topics: cluster post vectors and keep topic ids stable over nights.

The first run clusters every post (kb.clusters) and labels each cluster from
its most distinctive terms (kb.labels). Later runs only add new posts to the
nearest topic when they are similar enough, so ids, labels and members stay
put. When the corpus has grown by REFIT_GROWTH since the last fit, or on
request, the posts are clustered again and each new cluster is matched to
the old topic with the most similar centroid: a matched topic keeps its id
and label, an unmatched cluster becomes a new topic and an unmatched old
topic is retired.

Rows are always clustered in the order of (content_hash, url), never in
insertion order, so two databases holding the same posts get the same
topics.
"""

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import sqlite_utils

from kb import clusters, config, labels
from kb.errors import ConfigError

logger = logging.getLogger(__name__)

# Refit when the number of posts has grown by this share since the last fit.
REFIT_GROWTH = 0.2
# Minimum cosine similarity between an old and a new centroid for the new
# cluster to keep the old topic's id; below it they are different topics.
# NOTE: chosen by judgement, not measured; the refit in docs/topics.md shows
# how many topics it keeps on the real corpus.
MATCH_MIN_SIMILARITY = 0.85
REPRESENTATIVE_POSTS = 3
TOP_COMPANIES = 5
# Characters of post text used for labels; long posts would otherwise weigh
# far more than summaries.
LABEL_TEXT_CHARS = 4_000


@dataclass
class TopicsReport:
    """Counts from one call of update_topics."""

    mode: str
    posts: int
    assigned: int = 0
    topics: int = 0
    matched: int = 0
    created: int = 0
    retired: int = 0
    silhouette: float | None = None
    message: str = ""

    @property
    def unassigned(self) -> int:
        return self.posts - self.assigned

    def __str__(self) -> str:
        text = (
            f"{self.mode}: {self.topics} topics, {self.assigned} of {self.posts} "
            f"posts assigned ({self.unassigned_share:.0%} unassigned)"
        )
        if self.mode == "fit":
            text += f", {self.matched} kept, {self.created} new, {self.retired} retired"
        return f"{text}. {self.message}" if self.message else text

    @property
    def unassigned_share(self) -> float:
        return self.unassigned / self.posts if self.posts else 0.0


@dataclass
class PostRows:
    """Posts with vectors, in canonical (content_hash, url) order."""

    ids: np.ndarray
    vectors: np.ndarray
    documents: list[str]
    feeds: list[int]


def update_topics(
    db: sqlite_utils.Database, model_name: str | None = None, *, refit: bool = False
) -> TopicsReport:
    """Cluster posts into topics, or add new posts to the existing topics.

    Raises ModelError when the stored vectors were made by another model
    than ``model_name``, or that model cannot be loaded.

    Parameters
    ----------
    db
        An open kb database whose posts have been embedded.
    model_name
        The embedding model whose vectors to cluster; default kb.config's.
    refit
        Cluster all posts again even if the corpus has not grown enough.
    """
    from kb.vectors import load_post_vectors

    post_ids, post_vectors = load_post_vectors(db, model_name)
    return update_topics_from_vectors(
        db, post_ids, post_vectors, model=vector_model(db, model_name), refit=refit
    )


def vector_model(db: sqlite_utils.Database, model_name: str | None) -> str:
    """Return the name of the model whose post vectors are used.

    Without ``model_name`` that is the model that made the stored vectors,
    so the model is not loaded just to learn its name.
    """
    if model_name is None:
        from kb.vectors import stored_model

        stored, _ = stored_model(db)
        return stored or config.model_name()
    from kb.embed import get_embedder

    return get_embedder(model_name).name


def update_topics_from_vectors(
    db: sqlite_utils.Database,
    post_ids: np.ndarray,
    vectors: np.ndarray,
    *,
    model: str,
    refit: bool = False,
    now: str | None = None,
) -> TopicsReport:
    """Update topics from given post vectors; see update_topics.

    Raises ConfigError when ``post_ids`` and ``vectors`` differ in length.

    Parameters
    ----------
    post_ids : ndarray of shape (n,)
        Ids of rows in the posts table.
    vectors : ndarray of shape (n, dim)
        L2-normalised vectors of those posts.
    model : str
        Name of the model that made the vectors, stored with the topics.
    refit : bool, default=False
        Cluster again even if the corpus has not grown enough.
    now : str, optional
        ISO 8601 timestamp to record; default the current UTC time.
    """
    if len(post_ids) != len(vectors):
        raise ConfigError(
            f"Got {len(post_ids)} post ids but {len(vectors)} vectors; "
            "each post needs exactly one vector."
        )
    now = now or datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = load_post_rows(db, post_ids, vectors)
    previous_fit = latest_fit(db, model)
    has_topics = bool(active_topics(db, model))
    if not has_topics or refit or grown_enough(previous_fit, len(rows.ids)):
        report = fit_topics(db, rows, model, now)
    else:
        report = join_topics(db, rows, model, now)
    refresh_topic_stats(db, now)
    from kb.weekly import rebuild_weekly

    rebuild_weekly(db)
    logger.info(
        "topics %s: %d posts, %d topics, %d unassigned",
        report.mode,
        report.posts,
        report.topics,
        report.unassigned,
    )
    return report


def load_post_rows(
    db: sqlite_utils.Database, post_ids: np.ndarray, vectors: np.ndarray
) -> PostRows:
    """Return the posts' ids, vectors, label text and feeds in canonical order."""
    position = {int(post_id): index for index, post_id in enumerate(post_ids)}
    keyed = []
    for row in db.query(
        "SELECT id, feed_id, content_hash, url, title, content_text FROM posts"
    ):
        if row["id"] in position:
            key = (row["content_hash"] or "", row["url"] or "", row["id"])
            text = (row["content_text"] or "")[:LABEL_TEXT_CHARS]
            keyed.append((key, f"{row['title'] or ''}. {text}", row["feed_id"]))
    keyed.sort()
    ids = [key[2] for key, _, _ in keyed]
    dim = vectors.shape[1] if np.ndim(vectors) == 2 else 0
    matrix = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
    return PostRows(
        ids=np.array(ids, dtype=np.int64),
        vectors=clusters.normalise(matrix[[position[i] for i in ids]]),
        documents=[document for _, document, _ in keyed],
        feeds=[feed_id for _, _, feed_id in keyed],
    )


def latest_fit(db: sqlite_utils.Database, model: str) -> dict | None:
    rows = list(
        db.query(
            "SELECT * FROM topic_fits WHERE model = ? ORDER BY id DESC LIMIT 1",
            [model],
        )
    )
    return rows[0] if rows else None


def grown_enough(previous_fit: dict | None, n_posts: int) -> bool:
    """Return True when the corpus grew by REFIT_GROWTH since the last fit."""
    if previous_fit is None:
        return True
    return n_posts >= previous_fit["posts"] * (1 + REFIT_GROWTH) and n_posts > 0


def active_topics(db: sqlite_utils.Database, model: str) -> list[dict]:
    return list(
        db.query(
            "SELECT * FROM topics WHERE status = 'active' AND model = ? ORDER BY id",
            [model],
        )
    )


def centroids_of_topics(topics: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Return the stored centroids (k, dim) and join thresholds (k,)."""
    if not topics:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.float32)
    centroids = np.stack(
        [np.frombuffer(topic["centroid"], dtype=np.float32) for topic in topics]
    )
    thresholds = np.array([topic["threshold"] for topic in topics], dtype=np.float32)
    return centroids, thresholds


def fit_topics(
    db: sqlite_utils.Database, rows: PostRows, model: str, now: str
) -> TopicsReport:
    """Cluster all rows, match clusters to the old topics and store both."""
    clustering = clusters.cluster_vectors(rows.vectors)
    report = TopicsReport(mode="fit", posts=len(rows.ids))
    if clustering.k == 0:
        report.message = (
            f"Too few posts to find topics: {len(rows.ids)} posts with vectors, "
            f"need at least {clusters.min_posts()}. Existing topics are kept."
        )
        if len(rows.ids) == 0:
            report.message += " Run 'kb embed' to embed the stored posts."
        report.mode = "skipped"
        return report
    terms = labels.cluster_terms(
        rows.documents, clustering.labels, clustering.k, sources=rows.feeds
    )
    old_topics = active_topics(db, model)
    old_centroids, _ = centroids_of_topics(old_topics)
    pairs = clusters.match_clusters(
        old_centroids, clustering.centroids, MATCH_MIN_SIMILARITY
    )
    old_by_new = {new: old_topics[old] for old, new, _ in pairs}
    active = db.execute("SELECT count(*) FROM topics WHERE status = 'active'")
    retired = active.fetchone()[0] - len(pairs)
    with db.conn:
        fit_id = (
            db["topic_fits"]
            .insert(
                {
                    "fitted_at": now,
                    "model": model,
                    "posts": len(rows.ids),
                    "topics": clustering.k,
                    "unassigned": int(np.sum(clustering.labels == clusters.UNASSIGNED)),
                    "silhouette": clustering.silhouette,
                    "matched": len(pairs),
                    "created": clustering.k - len(pairs),
                    "retired": retired,
                }
            )
            .last_pk
        )
        topic_ids = store_clusters(
            db, clustering, terms, old_by_new, model, fit_id, now
        )
        # Every post is assigned again below, so an active topic that was not
        # matched (including topics of another model) has no members left.
        db.execute(
            "UPDATE topics SET status = 'retired', size = 0 WHERE status = 'active' "
            f"AND id NOT IN ({', '.join('?' for _ in topic_ids)})",
            topic_ids,
        )
        db.execute("DELETE FROM post_topics")
        write_assignments(
            db, rows.ids, clustering.labels, clustering.scores, topic_ids, now
        )
    report.assigned = int(np.sum(clustering.labels != clusters.UNASSIGNED))
    report.topics = clustering.k
    report.matched = len(pairs)
    report.created = clustering.k - len(pairs)
    report.retired = retired
    report.silhouette = clustering.silhouette
    return report


def store_clusters(
    db: sqlite_utils.Database,
    clustering: clusters.Clustering,
    terms: list[list[tuple[str, float]]],
    old_by_new: dict[int, dict],
    model: str,
    fit_id: int,
    now: str,
) -> list[int]:
    """Write one topics row per cluster and return their ids, by cluster."""
    next_id = (db.execute("SELECT max(id) FROM topics").fetchone()[0] or 0) + 1
    topic_ids = []
    for cluster in range(clustering.k):
        record = {
            "terms": json.dumps([term for term, _ in terms[cluster]]),
            "model": model,
            "centroid": clustering.centroids[cluster].astype(np.float32).tobytes(),
            "threshold": float(clustering.thresholds[cluster]),
            "fit_id": fit_id,
            "status": "active",
            "last_seen": now,
        }
        old = old_by_new.get(cluster)
        if old is not None:
            db["topics"].update(old["id"], record)
            topic_ids.append(old["id"])
            continue
        record.update(
            id=next_id, label=labels.label_from_terms(terms[cluster]), created=now
        )
        db["topics"].insert(record)
        topic_ids.append(next_id)
        next_id += 1
    return topic_ids


def write_assignments(
    db: sqlite_utils.Database,
    post_ids: np.ndarray,
    cluster_labels: np.ndarray,
    scores: np.ndarray,
    topic_ids: list[int],
    now: str,
) -> int:
    """Insert post_topics rows for the assigned posts and return how many."""
    records = [
        {
            "post_id": int(post_id),
            "topic_id": topic_ids[label],
            "score": round(float(score), 6),
            "assigned": now,
        }
        for post_id, label, score in zip(post_ids, cluster_labels, scores, strict=True)
        if label != clusters.UNASSIGNED
    ]
    db["post_topics"].insert_all(records, replace=True)
    return len(records)


def join_topics(
    db: sqlite_utils.Database, rows: PostRows, model: str, now: str
) -> TopicsReport:
    """Add posts without a topic to the nearest topic if similar enough."""
    topics = active_topics(db, model)
    centroids, thresholds = centroids_of_topics(topics)
    assigned = {row["post_id"] for row in db.query("SELECT post_id FROM post_topics")}
    new_rows = np.array([post_id not in assigned for post_id in rows.ids], dtype=bool)
    cluster_labels, scores = clusters.assign_to_centroids(
        rows.vectors[new_rows], centroids, thresholds
    )
    with db.conn:
        joined = write_assignments(
            db,
            rows.ids[new_rows],
            cluster_labels,
            scores,
            [topic["id"] for topic in topics],
            now,
        )
    return TopicsReport(
        mode="join",
        posts=len(rows.ids),
        assigned=len(assigned & set(rows.ids.tolist())) + joined,
        topics=len(topics),
        message=f"{joined} of {int(new_rows.sum())} posts without a topic joined one.",
    )


def refresh_topic_stats(db: sqlite_utils.Database, now: str) -> None:
    """Recompute each active topic's size, companies and representative posts."""
    members: dict[int, list[tuple[float, int, str]]] = {}
    for row in db.query(
        """
        SELECT pt.topic_id, pt.post_id, pt.score,
            coalesce(f.company, f.title, f.slug) AS company
        FROM post_topics pt
        JOIN posts p ON p.id = pt.post_id
        JOIN feeds f ON f.id = p.feed_id
        """
    ):
        members.setdefault(row["topic_id"], []).append(
            (row["score"], row["post_id"], row["company"])
        )
    with db.conn:
        for topic in db.query("SELECT id FROM topics WHERE status = 'active'"):
            topic_members = members.get(topic["id"], [])
            companies = Counter(company for _, _, company in topic_members)
            nearest = sorted(topic_members, key=lambda item: (-item[0], item[1]))
            db["topics"].update(
                topic["id"],
                {
                    "size": len(topic_members),
                    "companies": json.dumps(
                        sorted(companies.items(), key=lambda item: (-item[1], item[0]))[
                            :TOP_COMPANIES
                        ]
                    ),
                    "representative_posts": json.dumps(
                        [post_id for _, post_id, _ in nearest[:REPRESENTATIVE_POSTS]]
                    ),
                    "last_seen": now,
                },
            )


def list_topics(db: sqlite_utils.Database) -> list[dict]:
    """Return the active topics, largest first, with decoded JSON columns.

    Each topic's ``representative_posts`` is a list of dicts of id, title and url.
    """
    topics = []
    for row in db.query(
        "SELECT id, label, terms, size, companies, representative_posts, created, "
        "last_seen FROM topics WHERE status = 'active' ORDER BY size DESC, id"
    ):
        topic = dict(row)
        topic["terms"] = json.loads(topic["terms"])
        topic["companies"] = [tuple(pair) for pair in json.loads(topic["companies"])]
        post_ids = json.loads(topic["representative_posts"])
        titles = {
            post["id"]: post
            for post in db.query(
                "SELECT id, title, url FROM posts WHERE id IN "
                f"({', '.join('?' for _ in post_ids)})",
                post_ids,
            )
        }
        topic["representative_posts"] = [titles[i] for i in post_ids if i in titles]
        topics.append(topic)
    return topics


@dataclass
class Overview:
    """The topics and themes shown by ``kb topics``, with what was updated."""

    topics: list[dict]
    themes: list[dict]
    posts: int
    unassigned: int
    updates: list[str]


def refresh_overview(
    db: sqlite_utils.Database,
    *,
    refit: bool = False,
    themes_path: str | None = None,
) -> Overview:
    """Update what was asked for, or what is missing, and list topics and themes.

    Topics are fitted when ``refit`` is set or none are stored yet; themes
    are reassigned when ``themes_path`` is given or none are assigned yet.
    Raises ConfigError for an invalid themes file.
    """
    from kb import themes

    updates = []
    if refit or db["topics"].count == 0:
        updates.append(f"Topics: {update_topics(db, refit=refit)}")
    if themes_path is not None or db["post_themes"].count == 0:
        updates.append(f"Themes: {themes.assign_themes(db, themes_path)}")
    posts = db.execute("SELECT count(*) FROM posts").fetchone()[0]
    return Overview(
        topics=list_topics(db),
        themes=themes.list_themes(db),
        posts=posts,
        unassigned=posts - db["post_topics"].count,
        updates=updates,
    )
