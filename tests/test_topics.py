import json

import numpy as np
import pytest
from topic_fixtures import (
    TOPIC_WORDS,
    add_feed,
    add_post,
    store_corpus,
    synthetic_corpus,
)

from kb import clusters, labels, topics
from kb.db import open_db
from kb.errors import ConfigError
from kb.weekly import iso_week, rebuild_weekly

FOUR = ["kubernetes", "rust", "postgres", "gpu"]
NOW = "2026-03-03T00:00:00+00:00"


def topic_members(db) -> dict[str, set[str]]:
    """Map each topic label to the urls of its posts."""
    members: dict[str, set[str]] = {}
    for row in db.query(
        "SELECT t.label, p.url FROM post_topics pt JOIN topics t ON t.id = pt.topic_id "
        "JOIN posts p ON p.id = pt.post_id"
    ):
        members.setdefault(row["label"], set()).add(row["url"])
    return members


def fit(db, posts, **kwargs):
    ids, vectors = store_corpus(db, posts)
    return topics.update_topics_from_vectors(
        db, ids, vectors, model="synthetic", now=NOW, **kwargs
    )


# Clustering on plain arrays


def test_cluster_vectors_finds_planted_clusters():
    posts = synthetic_corpus(FOUR, per_topic=30)
    vectors = np.stack([post["vector"] for post in posts])
    clustering = clusters.cluster_vectors(vectors)
    assert clustering.k == 4
    truth = [post["topic"] for post in posts]
    for label in range(4):
        planted = {truth[i] for i in np.flatnonzero(clustering.labels == label)}
        assert len(planted) == 1
    assert clustering.unassigned_share < 0.1


def test_cluster_vectors_same_input_same_result():
    vectors = np.stack([post["vector"] for post in synthetic_corpus(FOUR, 20)])
    first = clusters.cluster_vectors(vectors)
    second = clusters.cluster_vectors(vectors.copy())
    assert np.array_equal(first.labels, second.labels)
    assert np.allclose(first.centroids, second.centroids)


def test_cluster_vectors_leaves_far_post_unassigned():
    posts = synthetic_corpus(FOUR, per_topic=30)
    vectors = np.stack([post["vector"] for post in posts])
    stray = np.random.default_rng(7).normal(size=(1, vectors.shape[1]))
    vectors = np.vstack([vectors, clusters.normalise(stray)])
    clustering = clusters.cluster_vectors(vectors)
    assert clustering.labels[-1] == clusters.UNASSIGNED


@pytest.mark.parametrize("n", [0, 1, 3, 5])
def test_cluster_vectors_tiny_input_gives_no_clusters(n):
    vectors = np.stack([post["vector"] for post in synthetic_corpus(FOUR, 2)])[:n]
    clustering = clusters.cluster_vectors(vectors.reshape(n, 32))
    assert clustering.k == 0
    assert len(clustering.labels) == n
    assert all(clustering.labels == clusters.UNASSIGNED)


def test_candidate_counts_follow_corpus_size():
    small = clusters.candidate_counts(100, min_size=3, max_topics=60)
    large = clusters.candidate_counts(10_000, min_size=3, max_topics=60)
    assert min(small) >= 2
    assert max(small) <= 15
    assert max(large) == 60
    assert min(large) > max(small) / 2


def test_match_clusters_pairs_permuted_centroids():
    rng = np.random.default_rng(1)
    old = clusters.normalise(rng.normal(size=(5, 16)))
    new = clusters.normalise(old[[3, 0, 4, 1, 2]] + 0.05 * rng.normal(size=(5, 16)))
    pairs = clusters.match_clusters(old, new, min_similarity=0.9)
    assert [(o, n) for o, n, _ in pairs] == [(3, 0), (0, 1), (4, 2), (1, 3), (2, 4)]


def test_match_clusters_rejects_dissimilar_pair():
    rng = np.random.default_rng(2)
    old = clusters.normalise(rng.normal(size=(2, 64)))
    new = clusters.normalise(np.vstack([old[0], rng.normal(size=64)]))
    pairs = clusters.match_clusters(old, new, min_similarity=0.85)
    assert [(o, n) for o, n, _ in pairs] == [(0, 0)]


def test_assign_to_centroids_respects_thresholds():
    centroids = np.eye(3, dtype=np.float32)
    vectors = clusters.normalise(
        np.array([[1, 0.1, 0], [0.5, 0.5, 0.5]], dtype=np.float32)
    )
    labels_, scores = clusters.assign_to_centroids(vectors, centroids, np.full(3, 0.8))
    assert labels_.tolist() == [0, clusters.UNASSIGNED]
    assert scores[0] == pytest.approx(0.995, abs=0.001)


# Labels


def test_cluster_terms_pick_distinctive_words():
    documents = [
        "Kubernetes pods scheduling on the cluster",
        "Autoscaling Kubernetes pods",
        "Rust ownership and the borrow checker",
        "Memory safety in Rust",
    ]
    terms = labels.cluster_terms(documents, np.array([0, 0, 1, 1]), 2, n_terms=3)
    assert terms[0][0][0] in {"kubernetes", "pods", "kubernetes pods"}
    assert terms[1][0][0] == "rust"
    assert all("the" != term for term, _ in terms[0] + terms[1])


def test_cluster_terms_without_words_are_empty():
    terms = labels.cluster_terms(["123", "456 789"], np.array([0, 1]), 2)
    assert terms == [[], []]
    assert labels.label_from_terms([]) == "(no terms)"


def test_cluster_terms_skip_feed_boilerplate():
    documents = [f"Weekly digest: kubernetes pods {i}" for i in range(6)] + [
        f"Weekly digest: rust borrow checker {i}" for i in range(6)
    ]
    cluster_labels = np.array([0] * 6 + [1] * 6)
    plain = labels.cluster_terms(documents, cluster_labels, 2)
    cleaned = labels.cluster_terms(
        documents, cluster_labels, 2, sources=["digest"] * 12
    )
    assert "weekly digest" not in [term for term, _ in cleaned[0]]
    assert cleaned[0][0][0] in {"kubernetes", "pods", "kubernetes pods"}
    assert len(plain[0]) >= len(cleaned[0])


def test_drop_redundant_terms_keeps_bigram_first():
    ranked = [("load balancing", 3.0), ("load", 2.0), ("balancing", 1.5), ("dns", 1.0)]
    assert [t for t, _ in labels.drop_redundant_terms(ranked)] == [
        "load balancing",
        "dns",
    ]


# Topics in the database


def test_update_topics_first_run_fits(fresh_db):
    report = fit(fresh_db, synthetic_corpus(FOUR, 25))
    assert report.mode == "fit"
    assert report.topics == 4
    assert report.unassigned_share < 0.1
    listed = topics.list_topics(fresh_db)
    assert len(listed) == 4
    assert sum(topic["size"] for topic in listed) == report.assigned
    assert listed[0]["companies"] == [("Example", listed[0]["size"])]
    assert len(listed[0]["representative_posts"]) == topics.REPRESENTATIVE_POSTS


def test_topic_labels_name_the_planted_topic(fresh_db):
    fit(fresh_db, synthetic_corpus(FOUR, 25))
    for label, urls in topic_members(fresh_db).items():
        planted = {url.split("/")[3] for url in urls}
        assert len(planted) == 1
        name = planted.pop()
        vocabulary = set(TOPIC_WORDS[name].split()) | {name}
        first_term = label.split(", ")[0]
        assert set(first_term.split()) <= vocabulary


def test_same_posts_any_order_same_topics(tmp_path):
    posts = synthetic_corpus(FOUR, 20)
    results = []
    for name, ordered in [
        ("a", posts),
        ("b", posts[::-1]),
        ("c", posts[1::2] + posts[::2]),
    ]:
        db = open_db(tmp_path / f"{name}.db")
        fit(db, ordered)
        results.append(
            sorted((t["id"], t["label"], t["size"]) for t in topics.list_topics(db))
        )
        results.append(topic_members(db))
        db.close()
    assert results[0] == results[2] == results[4]
    assert results[1] == results[3] == results[5]


def test_new_posts_join_existing_topics(fresh_db):
    fit(fresh_db, synthetic_corpus(FOUR, 25, seed=0))
    before = {t["id"]: t["label"] for t in topics.list_topics(fresh_db)}
    extra = synthetic_corpus(FOUR, 2, seed=1)
    ids, vectors = store_corpus(fresh_db, extra)
    all_ids = np.array(
        [row["id"] for row in fresh_db.query("SELECT id FROM posts ORDER BY id")]
    )
    all_vectors = np.vstack(
        [
            np.stack([p["vector"] for p in synthetic_corpus(FOUR, 25, seed=0)]),
            vectors,
        ]
    )
    report = topics.update_topics_from_vectors(
        fresh_db, all_ids, all_vectors, model="synthetic", now=NOW
    )
    assert report.mode == "join"
    after = {t["id"]: t["label"] for t in topics.list_topics(fresh_db)}
    assert after == before
    members = topic_members(fresh_db)
    joined = [
        post for post in extra if any(post["url"] in urls for urls in members.values())
    ]
    assert len(joined) >= len(extra) - 1
    for post in joined:
        (label,) = [label for label, urls in members.items() if post["url"] in urls]
        assert label == first_label_of(members, post["topic"], exclude=post["url"])


def first_label_of(members: dict[str, set[str]], planted: str, exclude: str) -> str:
    for label, urls in members.items():
        if any(f"/{planted}/" in url for url in urls - {exclude}):
            return label
    return ""


def test_refit_keeps_ids_of_same_topics(fresh_db):
    posts = synthetic_corpus(FOUR, 25, seed=0)
    fit(fresh_db, posts)
    before = {t["label"]: t["id"] for t in topics.list_topics(fresh_db)}
    ids = np.array(
        [row["id"] for row in fresh_db.query("SELECT id FROM posts ORDER BY id")]
    )
    vectors = np.stack([post["vector"] for post in posts])
    report = topics.update_topics_from_vectors(
        fresh_db, ids, vectors, model="synthetic", refit=True, now=NOW
    )
    assert report.mode == "fit"
    assert report.matched == 4
    assert report.created == 0
    after = {t["label"]: t["id"] for t in topics.list_topics(fresh_db)}
    assert after == before


def test_growth_triggers_refit_with_new_topic(fresh_db):
    fit(fresh_db, synthetic_corpus(FOUR, 25, seed=0))
    old_ids = {t["id"] for t in topics.list_topics(fresh_db)}
    store_corpus(fresh_db, synthetic_corpus(["outage"], 30, seed=3))
    ids = np.array(
        [row["id"] for row in fresh_db.query("SELECT id FROM posts ORDER BY id")]
    )
    vectors = np.vstack(
        [
            np.stack([p["vector"] for p in synthetic_corpus(FOUR, 25, seed=0)]),
            np.stack([p["vector"] for p in synthetic_corpus(["outage"], 30, seed=3)]),
        ]
    )
    report = topics.update_topics_from_vectors(
        fresh_db, ids, vectors, model="synthetic", now=NOW
    )
    assert report.mode == "fit"
    assert report.matched == 4
    assert report.created == 1
    listed = topics.list_topics(fresh_db)
    assert {t["id"] for t in listed} - old_ids == {max(old_ids) + 1}
    new_topic = [t for t in listed if t["id"] not in old_ids][0]
    assert "outage" in new_topic["terms"] or "postmortem" in " ".join(
        new_topic["terms"]
    )


def test_refit_retires_vanished_topic(fresh_db):
    posts = synthetic_corpus(FOUR, 25, seed=0)
    fit(fresh_db, posts)
    kept = [p for p in posts if p["topic"] != "gpu"]
    ids = np.array(
        [
            row["id"]
            for row in fresh_db.query(
                "SELECT id FROM posts WHERE url NOT LIKE '%/gpu/%' ORDER BY id"
            )
        ]
    )
    report = topics.update_topics_from_vectors(
        fresh_db,
        ids,
        np.stack([p["vector"] for p in kept]),
        model="synthetic",
        refit=True,
    )
    assert report.retired == 1
    statuses = dict(
        fresh_db.execute("SELECT status, count(*) FROM topics GROUP BY status")
    )
    assert statuses == {"active": 3, "retired": 1}


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tiny_corpus_reports_message(fresh_db, n):
    report = fit(fresh_db, synthetic_corpus(FOUR, 2)[:n])
    assert report.mode == "skipped"
    assert "Too few posts" in report.message
    assert f"{n} posts" in report.message
    assert topics.list_topics(fresh_db) == []


def test_mismatched_ids_and_vectors_raise(fresh_db):
    with pytest.raises(ConfigError, match="2 post ids but 1 vectors"):
        topics.update_topics_from_vectors(
            fresh_db, np.array([1, 2]), np.zeros((1, 4)), model="synthetic"
        )


# Weekly table


@pytest.mark.parametrize(
    "timestamp, week",
    [
        ("2026-03-02T10:00:00+00:00", "2026-W10"),  # a Monday
        ("2021-01-03T23:59:59+00:00", "2020-W53"),  # belongs to the previous ISO year
        ("2024-12-30T00:00:00Z", "2025-W01"),  # belongs to the next ISO year
        ("not a date", None),
    ],
)
def test_iso_week(timestamp, week):
    assert iso_week(timestamp) == week


def test_weekly_counts_topics_per_company_and_week(fresh_db):
    posts = synthetic_corpus(["rust", "postgres"], 10)
    fit(fresh_db, posts)
    other = add_feed(fresh_db, "other", "Other Co")
    add_post(fresh_db, other, "https://other.example/undated", "rust", published=None)
    fresh_db.execute(
        "UPDATE posts SET published = '2026-03-10T08:00:00+00:00' "
        "WHERE url LIKE '%/rust/%-1'"
    )
    rebuild_weekly(fresh_db)
    rows = list(fresh_db.query("SELECT * FROM weekly ORDER BY week, key"))
    assert {row["kind"] for row in rows} == {"topic"}
    assert {row["company"] for row in rows} == {"Example"}
    total = sum(row["posts"] for row in rows)
    assert total == fresh_db.execute("SELECT count(*) FROM post_topics").fetchone()[0]
    weeks = {row["week"] for row in rows}
    assert weeks == {"2026-W10", "2026-W11"}


def test_weekly_skips_posts_without_date(fresh_db):
    posts = synthetic_corpus(["rust", "postgres"], 10)
    fit(fresh_db, posts)
    fresh_db.execute("UPDATE posts SET published = NULL")
    assert rebuild_weekly(fresh_db) == 0
    assert fresh_db["weekly"].count == 0


def test_topic_json_columns_decode(fresh_db):
    fit(fresh_db, synthetic_corpus(FOUR, 10))
    row = fresh_db.execute("SELECT terms, companies FROM topics LIMIT 1").fetchone()
    assert isinstance(json.loads(row[0]), list)
    assert json.loads(row[1])[0][0] == "Example"
