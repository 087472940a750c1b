"""Cluster post vectors into topics, and match a new clustering to an old one.

Everything here works on plain numpy arrays of L2-normalised vectors, so it
can be tested with synthetic data; kb.topics reads and writes the database.
On unit vectors the dot product is the cosine similarity, which is the score
used throughout.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

logger = logging.getLogger(__name__)

UNASSIGNED = -1
# Posts further below their topic's mean similarity than this many standard
# deviations are left unassigned, as are members of clusters below min_size.
OUTLIER_Z = 2.0
MIN_TOPIC_SIZE = 3
MAX_TOPICS = 60
# Above this many rows, the number of topics is chosen on a fixed random
# sample and only the final clustering uses every row.
SELECTION_SAMPLE = 8_000
SILHOUETTE_SAMPLE = 4_000
# A silhouette within this share of the best counts as equally good.
NEAR_BEST = 0.15
# How many numbers of clusters are tried, spaced geometrically.
CANDIDATES = 10


@dataclass
class Clustering:
    """The result of clustering n vectors.

    Attributes
    ----------
    labels : ndarray of shape (n,)
        The cluster of each row, numbered 0..k-1 from the largest cluster
        down, or UNASSIGNED.
    scores : ndarray of shape (n,)
        The cosine similarity of each row to its cluster centroid (to the
        nearest centroid for unassigned rows).
    centroids : ndarray of shape (k, dim)
        L2-normalised mean of each cluster's members.
    thresholds : ndarray of shape (k,)
        The minimum similarity a new row needs to join each cluster.
    silhouette : float or None
        The silhouette of the chosen number of clusters, None when fewer
        than two clusters could be formed.
    candidates : dict
        The silhouette of every number of clusters that was tried.
    """

    labels: np.ndarray
    scores: np.ndarray
    centroids: np.ndarray
    thresholds: np.ndarray
    silhouette: float | None = None
    candidates: dict[int, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def unassigned_share(self) -> float:
        if len(self.labels) == 0:
            return 0.0
        return float(np.mean(self.labels == UNASSIGNED))


def min_posts(min_size: int = MIN_TOPIC_SIZE) -> int:
    """Return the least number of posts that can be split into two topics."""
    return 2 * min_size


def candidate_counts(n: int, min_size: int, max_topics: int) -> list[int]:
    """Return the numbers of clusters worth trying for ``n`` rows.

    The range scales with the square root of ``n``, a common rule of thumb
    for the number of clusters in text collections, so that a corpus of
    1,000 posts is tried between about 8 and 48 topics rather than at 2,
    where the silhouette of embeddings often peaks by splitting off one
    dense group (such as a newsletter) from everything else.
    """
    upper = min(max_topics, n // min_size, max(2, round(1.5 * math.sqrt(n))))
    lower = min(upper, max(2, round(math.sqrt(n) / 4)))
    if upper - lower < CANDIDATES:
        return list(range(lower, upper + 1))
    steps = np.geomspace(lower, upper, num=CANDIDATES)
    return sorted({int(round(step)) for step in steps})


def cluster_vectors(
    vectors: np.ndarray,
    *,
    min_size: int = MIN_TOPIC_SIZE,
    max_topics: int = MAX_TOPICS,
    random_state: int = 0,
) -> Clustering:
    """Cluster rows with k-means, choosing k by the silhouette score.

    The result depends only on the rows and their order, so callers sort
    rows by a stable key first.

    Parameters
    ----------
    vectors : ndarray of shape (n, dim)
        L2-normalised vectors.
    min_size : int, default=3
        Clusters with fewer members are dissolved and their rows left
        unassigned.
    max_topics : int, default=60
        Upper bound on the number of clusters.
    random_state : int, default=0
        Seed for k-means and for the samples.

    Returns
    -------
    Clustering
        With k=0 and every row unassigned when there are fewer than
        ``2 * min_size`` rows.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < min_posts(min_size):
        dim = vectors.shape[1] if vectors.ndim == 2 else 0
        return empty_clustering(n, dim)
    candidates = score_candidates(vectors, min_size, max_topics, random_state)
    best_k = finest_near_best(candidates)
    logger.info("chose %d clusters for %d rows: %s", best_k, n, candidates)
    model = KMeans(n_clusters=best_k, n_init=3, random_state=random_state)
    raw_labels = model.fit_predict(vectors)
    clustering = finish_clustering(vectors, raw_labels, min_size)
    clustering.silhouette = candidates[best_k]
    clustering.candidates = candidates
    return clustering


def finest_near_best(candidates: dict[int, float]) -> int:
    """Return the largest k whose silhouette is close to the best one.

    The silhouette of text embeddings is low and flat: for the 1,275 posts
    of the feed corpus with all-MiniLM-L6-v2 it stays between 0.04 and 0.07
    from 9 to 54 clusters, so the top value is partly noise. Among
    near-equal scores the finer topics serve a reader better.
    """
    best = max(candidates.values())
    near = [
        k for k, score in candidates.items() if score >= best - abs(best) * NEAR_BEST
    ]
    return max(near)


def empty_clustering(n: int, dim: int) -> Clustering:
    """Return a clustering with no clusters and all ``n`` rows unassigned."""
    return Clustering(
        labels=np.full(n, UNASSIGNED),
        scores=np.zeros(n, dtype=np.float32),
        centroids=np.zeros((0, dim), dtype=np.float32),
        thresholds=np.zeros(0, dtype=np.float32),
    )


def score_candidates(
    vectors: np.ndarray, min_size: int, max_topics: int, random_state: int
) -> dict[int, float]:
    """Return the cosine silhouette of k-means for each candidate k."""
    rng = np.random.default_rng(random_state)
    sample = vectors
    if len(vectors) > SELECTION_SAMPLE:
        rows = np.sort(rng.choice(len(vectors), SELECTION_SAMPLE, replace=False))
        sample = vectors[rows]
    scores = {}
    for k in candidate_counts(len(vectors), min_size, max_topics):
        if k >= len(sample):
            continue
        labels = KMeans(n_clusters=k, n_init=1, random_state=random_state).fit_predict(
            sample
        )
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = float(
            silhouette_score(
                sample,
                labels,
                metric="cosine",
                sample_size=min(len(sample), SILHOUETTE_SAMPLE),
                random_state=random_state,
            )
        )
    if not scores:
        scores[2] = 0.0
    return scores


def finish_clustering(
    vectors: np.ndarray, raw_labels: np.ndarray, min_size: int
) -> Clustering:
    """Drop small clusters and outliers, then number clusters by size."""
    labels = raw_labels.copy()
    for _ in range(2):
        # Outliers move the centroid, so recompute once after removing them.
        labels = drop_small_clusters(labels, min_size)
        centroids, cluster_ids = centroids_of(vectors, labels)
        if len(cluster_ids) == 0:
            return empty_clustering(len(vectors), vectors.shape[1])
        labels = drop_outliers(vectors, labels, centroids, cluster_ids)
    labels = drop_small_clusters(labels, min_size)
    centroids, cluster_ids = centroids_of(vectors, labels)
    if len(cluster_ids) == 0:
        return empty_clustering(len(vectors), vectors.shape[1])
    order = sorted(
        range(len(cluster_ids)),
        key=lambda i: (
            -np.sum(labels == cluster_ids[i]),
            first_row(labels, cluster_ids[i]),
        ),
    )
    renumbered = np.full(len(labels), UNASSIGNED)
    for new_id, index in enumerate(order):
        renumbered[labels == cluster_ids[index]] = new_id
    centroids = centroids[order]
    similarities = vectors @ centroids.T
    scores = similarities.max(axis=1)
    member = renumbered != UNASSIGNED
    scores[member] = similarities[member, renumbered[member]]
    thresholds = join_thresholds(scores, renumbered, len(centroids))
    return Clustering(renumbered, scores, centroids, thresholds)


def first_row(labels: np.ndarray, cluster_id: int) -> int:
    return int(np.flatnonzero(labels == cluster_id)[0])


def drop_small_clusters(labels: np.ndarray, min_size: int) -> np.ndarray:
    labels = labels.copy()
    ids, counts = np.unique(labels[labels != UNASSIGNED], return_counts=True)
    for cluster_id, count in zip(ids, counts, strict=True):
        if count < min_size:
            labels[labels == cluster_id] = UNASSIGNED
    return labels


def centroids_of(
    vectors: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the normalised centroids and the ids of the non-empty clusters."""
    cluster_ids = np.unique(labels[labels != UNASSIGNED])
    if len(cluster_ids) == 0:
        return np.zeros((0, vectors.shape[1]), dtype=np.float32), cluster_ids
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in cluster_ids])
    return normalise(centroids), cluster_ids


def drop_outliers(
    vectors: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    cluster_ids: np.ndarray,
) -> np.ndarray:
    labels = labels.copy()
    for index, cluster_id in enumerate(cluster_ids):
        rows = np.flatnonzero(labels == cluster_id)
        similarity = vectors[rows] @ centroids[index]
        cutoff = similarity.mean() - OUTLIER_Z * similarity.std()
        labels[rows[similarity < cutoff]] = UNASSIGNED
    return labels


def join_thresholds(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Return, per cluster, the least similarity with which a row may join it.

    The same rule as for outliers: the cluster's mean similarity minus
    OUTLIER_Z standard deviations, never above its weakest member.
    """
    thresholds = np.zeros(k, dtype=np.float32)
    for cluster_id in range(k):
        member_scores = scores[labels == cluster_id]
        cutoff = member_scores.mean() - OUTLIER_Z * member_scores.std()
        thresholds[cluster_id] = min(cutoff, member_scores.min())
    return thresholds


def assign_to_centroids(
    vectors: np.ndarray, centroids: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Assign each row to its nearest centroid if it is similar enough.

    Parameters
    ----------
    vectors : ndarray of shape (n, dim)
        L2-normalised rows.
    centroids : ndarray of shape (k, dim)
        L2-normalised centroids.
    thresholds : ndarray of shape (k,)
        The minimum similarity a row needs to join each centroid.

    Returns
    -------
    labels : ndarray of shape (n,)
        Index of the nearest centroid, or UNASSIGNED when the similarity is
        below that centroid's threshold (or there are no centroids).
    scores : ndarray of shape (n,)
        Similarity to the nearest centroid (0 when there are none).
    """
    n = len(vectors)
    if len(centroids) == 0 or n == 0:
        return np.full(n, UNASSIGNED), np.zeros(n, dtype=np.float32)
    similarities = np.asarray(vectors, dtype=np.float32) @ centroids.T
    nearest = similarities.argmax(axis=1)
    scores = similarities[np.arange(n), nearest]
    labels = np.where(scores >= thresholds[nearest], nearest, UNASSIGNED)
    return labels, scores


def match_clusters(
    old_centroids: np.ndarray, new_centroids: np.ndarray, min_similarity: float
) -> list[tuple[int, int, float]]:
    """Pair old and new clusters one to one by centroid similarity.

    Uses the Hungarian algorithm to maximise the total cosine similarity of
    the pairs, then keeps only pairs at least ``min_similarity`` alike.

    Parameters
    ----------
    old_centroids : ndarray of shape (k_old, dim)
    new_centroids : ndarray of shape (k_new, dim)
    min_similarity : float
        Pairs below it are not the same topic.

    Returns
    -------
    list of (old_index, new_index, similarity)
        Sorted by new_index.
    """
    if len(old_centroids) == 0 or len(new_centroids) == 0:
        return []
    similarity = new_centroids @ old_centroids.T
    new_rows, old_columns = linear_sum_assignment(similarity, maximize=True)
    pairs = [
        (int(old), int(new), float(similarity[new, old]))
        for new, old in zip(new_rows, old_columns, strict=True)
        if similarity[new, old] >= min_similarity
    ]
    return sorted(pairs, key=lambda pair: pair[1])


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale each row to unit length; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)
