"""Store post and chunk vectors in SQLite and find the nearest ones.

The ``vectors`` table of float32 blobs is the source of truth. Two backends
search it and return the same posts:

* ``sqlite-vec``: a vec0 virtual table derived from ``vectors``, used when the
  connection can load extensions (pysqlite3, Debian's python3);
* ``numpy``: the blobs loaded once per process into a matrix, used when it
  cannot (the standard library sqlite3 of some Python builds).

$KB_VECTORS picks one: ``auto`` (default), ``numpy`` or ``sqlite-vec``.

Past ``IVF_MIN_VECTORS`` vectors, k-means centroids split the vectors into
clusters (an inverted-file index) and an unfiltered query scans only the
``IVF_PROBES`` clusters nearest to it, so the search is approximate there.
Below that size, and for every filtered query, the scan is exact.
"""

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kb.db import SQLITE_ERRORS
from kb.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

BACKEND_ENV = "KB_VECTORS"
BACKENDS = ("auto", "numpy", "sqlite-vec")
VEC_TABLE = "vec_vectors"
IVF_MIN_VECTORS = 20_000
# Clusters nearest to the query that an approximate search scans.
IVF_PROBES = 32
# Retrain the centroids when the vector count has grown by this factor.
IVF_RETRAIN_GROWTH = 2.0
IVF_SAMPLE_PER_CLUSTER = 40


def pack(vector: np.ndarray) -> bytes:
    """Encode a vector as little-endian float32 bytes, the layout sqlite-vec reads."""
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack_rows(blobs: list[bytes], dim: int) -> np.ndarray:
    """Decode float32 blobs into an array of shape (len(blobs), dim)."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)


# Backends ------------------------------------------------------------------

# ids of connections that failed to load sqlite-vec, so it is tried once each.
_vec_unavailable: set[int] = set()


def load_sqlite_vec(conn) -> bool:
    """Load sqlite-vec into ``conn`` unless it is there; return whether it is."""
    if id(conn) in _vec_unavailable:
        return False
    try:
        conn.execute("SELECT vec_version()")
        return True
    except SQLITE_ERRORS:
        pass
    try:
        import sqlite_vec

        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        return True
    except (ImportError, AttributeError, *SQLITE_ERRORS) as error:
        # AttributeError: this sqlite3 module has no enable_load_extension.
        logger.info("sqlite-vec not loaded, using numpy vectors: %s", error)
        _vec_unavailable.add(id(conn))
        return False


def backend(db) -> str:
    """Return the vector backend for ``db``: ``sqlite-vec`` or ``numpy``.

    Raises ConfigError when $KB_VECTORS is not a known backend, or asks for
    sqlite-vec on a connection that cannot load it.
    """
    setting = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if setting not in BACKENDS:
        raise ConfigError(
            f"Invalid {BACKEND_ENV}={setting!r}: expected one of {', '.join(BACKENDS)}."
        )
    if setting == "numpy":
        return "numpy"
    if load_sqlite_vec(db.conn):
        return "sqlite-vec"
    if setting == "sqlite-vec":
        raise ConfigError(
            f"{BACKEND_ENV}=sqlite-vec, but this Python's sqlite3 cannot load "
            "extensions.\nInstall pysqlite3-binary, or set "
            f"{BACKEND_ENV}=numpy."
        )
    return "numpy"


# State ---------------------------------------------------------------------


def state(db) -> dict:
    """Return the single row of ``vector_state``."""
    cursor = db.execute("SELECT * FROM vector_state WHERE id = 1")
    names = [column[0] for column in cursor.description]
    return dict(zip(names, cursor.fetchone(), strict=True))


def set_state(db, **values) -> None:
    assignments = ", ".join(f"{name} = ?" for name in values)
    db.execute(
        f"UPDATE vector_state SET {assignments} WHERE id = 1", list(values.values())
    )


def stored_model(db) -> tuple[str | None, int | None]:
    """Return the model name and dimension of the stored vectors, or Nones."""
    row = db.execute("SELECT model, dim FROM post_embeddings LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (None, None)


def check_dimension(db, model: str, dim: int, *, rebuild: bool = False) -> None:
    """Raise ModelError when stored vectors have another dimension than ``dim``."""
    stored_name, stored_dim = stored_model(db)
    if rebuild or stored_dim is None or stored_dim == dim:
        return
    raise ModelError(
        f"Model {model!r} makes vectors of dimension {dim}, but the database holds "
        f"vectors of dimension {stored_dim} from {stored_name!r}.\n"
        f"Re-embed every post with: kb embed --rebuild --model {model}"
    )


def check_model(db, model: str) -> None:
    """Raise ModelError when the stored vectors were made by another model."""
    stored_name, _ = stored_model(db)
    if stored_name is not None and stored_name != model:
        raise ModelError(
            f"The stored vectors were made by {stored_name!r}, not {model!r}.\n"
            f"Search with --model {stored_name}, or re-embed with: "
            f"kb embed --rebuild --model {model}"
        )


def stored_hashes(db) -> dict[int, str]:
    """Map each embedded post id to the hash of the text it was embedded from."""
    return dict(db.execute("SELECT post_id, text_hash FROM post_embeddings"))


# Writes --------------------------------------------------------------------


def replace_post(
    db,
    post_id: int,
    model: str,
    text_hash: str,
    post_vector: np.ndarray,
    chunk_vectors: np.ndarray,
) -> None:
    """Replace the vectors of one post: its post vector and one per chunk.

    Run inside a transaction; the post vector is stored with ``chunk`` NULL.
    """
    db.execute("DELETE FROM vectors WHERE post_id = ?", [post_id])
    rows = [(post_id, None, model, pack(post_vector))]
    rows += [(post_id, i, model, pack(v)) for i, v in enumerate(chunk_vectors)]
    db.conn.executemany(
        "INSERT INTO vectors (post_id, chunk, model, vector) VALUES (?, ?, ?, ?)", rows
    )
    db.execute(
        "INSERT OR REPLACE INTO post_embeddings "
        "(post_id, model, dim, text_hash, chunks, embedded_at) "
        "VALUES (?, ?, ?, ?, ?, datetime('now'))",
        [post_id, model, len(post_vector), text_hash, len(chunk_vectors)],
    )


def delete_posts(db, post_ids: list[int]) -> int:
    """Delete the vectors and related-post list of ``post_ids``; return how many."""
    if not post_ids:
        return 0
    with db.conn:
        for post_id in post_ids:
            db.execute("DELETE FROM vectors WHERE post_id = ?", [post_id])
            db.execute("DELETE FROM post_embeddings WHERE post_id = ?", [post_id])
            # Lists that name this post are rebuilt by refresh_related, which
            # finds them through these rows, so only the post's own list goes.
            db.execute("DELETE FROM related_posts WHERE post_id = ?", [post_id])
    return len(post_ids)


def clear(db) -> None:
    """Delete every vector, centroid and related-post row."""
    with db.conn:
        for table in ("vectors", "post_embeddings", "related_posts", "vector_clusters"):
            db.execute(f"DELETE FROM {table}")
        set_state(db, clusters_version=state(db)["clusters_version"] + 1, trained_on=0)
    if VEC_TABLE in db.table_names() and load_sqlite_vec(db.conn):
        with db.conn:
            db.execute(f"DROP TABLE {VEC_TABLE}")
            db.execute("DELETE FROM vector_deletions")
            set_state(db, vec_dim=None, vec_synced_id=0)


# Reads ---------------------------------------------------------------------


def load_post_vectors(
    db, model_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one vector per embedded post.

    Raises ModelError when the stored vectors were made by another model than
    ``model_name``.

    Parameters
    ----------
    db
        A sqlite_utils.Database.
    model_name
        Check the stored vectors against this model; None skips the check and
        loads the vectors of whichever model made them.

    Returns
    -------
    ids : ndarray of shape (n_posts,)
        Post ids, ascending.
    vectors : ndarray of shape (n_posts, dim)
        Their float32 post vectors, L2-normalised.
    """
    if model_name is not None:
        from kb.embed import get_embedder

        check_model(db, get_embedder(model_name).name)
    _, dim = stored_model(db)
    rows = db.execute(
        "SELECT post_id, vector FROM vectors WHERE chunk IS NULL ORDER BY post_id"
    ).fetchall()
    ids = np.array([row[0] for row in rows], dtype=np.int64)
    return ids, unpack_rows([row[1] for row in rows], dim or 0)


@dataclass
class VectorMatrix:
    """Every stored vector of one database, held in memory for the numpy backend.

    Rows are sorted by cluster, then id, so that each cluster is one slice of
    ``matrix``: ``slices`` maps a cluster id to its (start, stop) rows.
    """

    ids: np.ndarray
    post_ids: np.ndarray
    clusters: np.ndarray
    matrix: np.ndarray
    token: tuple
    slices: dict[int, tuple[int, int]]


_matrices: dict[str, VectorMatrix] = {}


def cache_key(db) -> str:
    """Name the database for the in-memory caches: its file, else its connection.

    Keying on the file lets every connection of a process, such as the
    threads of a Datasette server, share one copy of the vectors.
    """
    filename = db.execute("PRAGMA database_list").fetchone()[2]
    return filename or f"memory:{id(db.conn)}"


def cached_matrix(db) -> VectorMatrix:
    """Return all vectors as a matrix, reloading when the table has changed."""
    current = state(db)
    token = (current["generation"], current["clusters_version"])
    key = cache_key(db)
    cached = _matrices.get(key)
    if cached is not None and cached.token == token:
        return cached
    _, dim = stored_model(db)
    total = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    matrix = np.empty((total, dim or 0), dtype=np.float32)
    ids, post_ids, clusters = [], [], []
    rows = db.execute("SELECT id, post_id, cluster, vector FROM vectors ORDER BY id")
    for index, row in enumerate(rows):
        if index == total:
            break  # written since the count; the next search reloads
        ids.append(row[0])
        post_ids.append(row[1])
        clusters.append(row[2])
        matrix[index] = np.frombuffer(row[3], dtype="<f4")
    matrix = matrix[: len(ids)]
    # Sorting here is much faster than ORDER BY cluster, which has no index.
    clusters = np.array(clusters, dtype=np.int64)
    order = np.argsort(clusters, kind="stable")
    clusters = clusters[order]
    names, starts = np.unique(clusters, return_index=True)
    stops = [*starts[1:].tolist(), len(clusters)]
    loaded = VectorMatrix(
        ids=np.array(ids, dtype=np.int64)[order],
        post_ids=np.array(post_ids, dtype=np.int64)[order],
        clusters=clusters,
        matrix=matrix[order],
        token=token,
        slices={
            int(name): (int(start), int(stop))
            for name, start, stop in zip(names, starts, stops, strict=True)
        },
    )
    _matrices[key] = loaded
    return loaded


def nearest_posts(
    db, query: np.ndarray, k: int, *, allowed: set[int] | None = None
) -> list[tuple[int, float]]:
    """Find the ``k`` posts nearest to ``query``, best first.

    A post's score is the cosine similarity of its best vector, the post
    vector or any chunk. With ``allowed``, only those posts are ranked and the
    scan is exact, so a filter never makes the list shorter than it could be.

    Parameters
    ----------
    db
        A sqlite_utils.Database with stored vectors.
    query
        Array of shape (dim,), L2-normalised.
    k
        How many posts to return at most.
    allowed
        Post ids to rank; None ranks every embedded post.
    """
    scan = matrix_scanner(db)
    if scan is not None:
        return scan(query, k, allowed)
    search_with = functools.partial(nearest_with_vec, db)
    return widen_probes(search_with, cached_centroids(db), query, k, allowed)


def matrix_scanner(db) -> Callable[[np.ndarray, int, set[int] | None], list] | None:
    """Return the numpy search over ``db``'s vectors, or None under sqlite-vec.

    The vectors and centroids are loaded (or found in the cache) now, so the
    returned function takes (query, k, allowed) like :func:`nearest_posts`
    and never touches the connection: another thread may call it.
    """
    if backend(db) != "numpy":
        return None
    return functools.partial(scan_matrix, cached_matrix(db), cached_centroids(db))


def scan_matrix(
    vm: VectorMatrix, centroids, query, k, allowed
) -> list[tuple[int, float]]:
    search_with = functools.partial(scan_rows, vm)
    return widen_probes(search_with, centroids, query, k, allowed)


def widen_probes(search_with, centroids, query, k, allowed) -> list[tuple[int, float]]:
    """Run ``search_with(query, k, probes, allowed)`` until it finds ``k`` posts."""
    if k <= 0 or (allowed is not None and not allowed):
        return []
    count = IVF_PROBES
    while True:
        probes = None if allowed is not None else pick_probes(centroids, query, count)
        results = search_with(query, k, probes, allowed)
        # The nearest clusters may hold fewer than k posts: scan more of them.
        if probes is None or len(results) >= k:
            return results
        count *= 4


def scan_rows(vm: VectorMatrix, query, k, probes, allowed) -> list[tuple[int, float]]:
    if len(vm.ids) == 0:
        return []
    query = np.asarray(query, dtype=np.float32)
    if allowed is not None:
        rows = np.flatnonzero(
            np.isin(vm.post_ids, np.fromiter(allowed, dtype=np.int64))
        )
        return best_per_post(vm.post_ids[rows], vm.matrix[rows] @ query, k)
    if probes is None:
        return best_per_post(vm.post_ids, vm.matrix @ query, k)
    # Score each probed cluster's slice in place rather than copying its rows.
    spans = [vm.slices[probe] for probe in probes if probe in vm.slices]
    if not spans:
        return []
    scores = np.concatenate([vm.matrix[start:stop] @ query for start, stop in spans])
    post_ids = np.concatenate([vm.post_ids[start:stop] for start, stop in spans])
    return best_per_post(post_ids, scores, k)


def best_per_post(post_ids: np.ndarray, scores: np.ndarray, k: int):
    """Keep each post's best score and return the top ``k`` (post_id, score).

    Ties break on the post id, after rounding the scores to 5 decimals, so
    that numpy's dot products and sqlite-vec's cosine distances, which differ
    in the last float bits, give the same order.
    """
    if len(scores) == 0:
        return []
    rounded = np.round(scores.astype(np.float64), 5)
    # Sort by score, best first, then by post id, and keep each post's first row.
    order = np.lexsort((post_ids, -rounded))
    _, first = np.unique(post_ids[order], return_index=True)
    best = order[np.sort(first)][:k]
    return [(int(post_ids[i]), float(scores[i])) for i in best]


def nearest_with_vec(db, query, k, probes, allowed) -> list[tuple[int, float]]:
    if not sync_vec_index(db):
        return scan_rows(cached_matrix(db), query, k, probes, allowed)
    total = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    where, params = "", []
    if probes is not None:
        where += f" AND cluster IN ({', '.join('?' * len(probes))})"
        params += [int(p) for p in probes]
    if allowed is not None:
        where += (
            " AND rowid IN (SELECT id FROM vectors WHERE post_id IN "
            "(SELECT value FROM json_each(?)))"
        )
        params.append("[" + ",".join(str(int(p)) for p in allowed) + "]")
    # A long post can fill several of the nearest vectors, so ask for more
    # vectors than posts and widen until k distinct posts come back. vec0's
    # cost grows with k, so start low.
    wanted = min(total, k * 2, VEC_MAX_K)
    while True:
        rows = db.execute(
            f"WITH knn AS (SELECT rowid, distance FROM {VEC_TABLE} "
            f"WHERE embedding MATCH ? AND k = ?{where}) "
            "SELECT vectors.post_id, knn.distance FROM knn "
            "JOIN vectors ON vectors.id = knn.rowid ORDER BY knn.distance",
            [pack(query), wanted, *params],
        ).fetchall()
        post_ids = np.array([row[0] for row in rows], dtype=np.int64)
        scores = np.array([1.0 - row[1] for row in rows], dtype=np.float32)
        results = best_per_post(post_ids, scores, k)
        if len(results) >= k or len(rows) < wanted or wanted >= total:
            return results
        if wanted == VEC_MAX_K:
            # vec0 cannot return more vectors, so scan them all with numpy.
            return scan_rows(cached_matrix(db), query, k, probes, allowed)
        wanted = min(total, wanted * 2, VEC_MAX_K)


# sqlite-vec 0.1.9 rejects KNN queries with k above 4096.
VEC_MAX_K = 4096


def refresh_index(db) -> None:
    """Bring the vec0 index in step after a write, when sqlite-vec is in use.

    Called by the commands that write vectors, so that a search finds the
    index up to date and never has to write.
    """
    if backend(db) == "sqlite-vec":
        sync_vec_index(db)


def sync_vec_index(db) -> bool:
    """Bring the vec0 table in step with ``vectors``; return whether it is.

    Writes only when ``vectors`` changed since the last sync, so searches on
    an index that is up to date stay read-only. On a read-only connection a
    stale index stays as it is and this returns False, so that the caller
    can scan the ``vectors`` table instead.
    """
    try:
        return write_vec_index(db)
    except SQLITE_ERRORS as error:
        if "readonly" not in str(error).replace("read-only", "readonly"):
            raise
        logger.info("vec0 index is behind and cannot be written: %s", error)
        return False


def write_vec_index(db) -> bool:
    current = state(db)
    _, dim = stored_model(db)
    exists = VEC_TABLE in db.table_names()
    rebuild = (
        not exists
        or current["vec_dim"] != dim
        or current["vec_clusters_version"] != current["clusters_version"]
    )
    if not rebuild:
        last = db.execute("SELECT max(id) FROM vectors").fetchone()[0] or 0
        deleted = db.execute("SELECT 1 FROM vector_deletions LIMIT 1").fetchone()
        if last <= current["vec_synced_id"] and deleted is None:
            return True
    with db.conn:
        if rebuild:
            if exists:
                db.execute(f"DROP TABLE {VEC_TABLE}")
            if dim is None:
                return True
            db.execute(
                f"CREATE VIRTUAL TABLE {VEC_TABLE} USING vec0("
                f"cluster INTEGER PARTITION KEY, "
                f"embedding float[{dim}] distance_metric=cosine)"
            )
            db.execute("DELETE FROM vector_deletions")
            synced = 0
        else:
            synced = current["vec_synced_id"]
            # One statement per id: vec0 scans its whole table for rowid IN.
            deleted = db.execute("SELECT id FROM vector_deletions").fetchall()
            db.conn.executemany(f"DELETE FROM {VEC_TABLE} WHERE rowid = ?", deleted)
            db.execute("DELETE FROM vector_deletions")
        db.execute(
            f"INSERT INTO {VEC_TABLE} (rowid, cluster, embedding) "
            "SELECT id, cluster, vector FROM vectors WHERE id > ? ORDER BY id",
            [synced],
        )
        last = db.execute("SELECT max(id) FROM vectors").fetchone()[0] or synced
        set_state(
            db,
            vec_dim=dim,
            vec_synced_id=last,
            vec_clusters_version=current["clusters_version"],
        )
    return True


# Inverted-file clusters ----------------------------------------------------


def pick_probes(centroids, query: np.ndarray, count: int) -> list[int] | None:
    """Return the ``count`` clusters nearest to ``query``, or None to scan all."""
    if centroids is None or count >= len(centroids[0]):
        return None
    ids, matrix = centroids
    nearest = np.argsort(-(matrix @ query))[:count]
    # Cluster 0 holds vectors written since the centroids were trained.
    return [0, *(int(ids[i]) for i in nearest)]


_centroids: dict[str, tuple[int, tuple[np.ndarray, np.ndarray] | None]] = {}


def cached_centroids(db) -> tuple[np.ndarray, np.ndarray] | None:
    version = state(db)["clusters_version"]
    key = cache_key(db)
    cached = _centroids.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    rows = db.execute("SELECT id, centroid FROM vector_clusters ORDER BY id").fetchall()
    loaded = None
    if rows:
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4")
        loaded = (np.array([r[0] for r in rows]), matrix.reshape(len(rows), -1))
    _centroids[key] = (version, loaded)
    return loaded


def update_clusters(db) -> None:
    """Train, retrain or drop the k-means clusters to suit the vector count.

    New vectors land in cluster 0, which every query scans; this assigns them
    to their nearest centroid, and retrains all centroids once the count has
    grown by ``IVF_RETRAIN_GROWTH`` since the last training.
    """
    total = db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    current = state(db)
    if total < IVF_MIN_VECTORS:
        if current["trained_on"]:
            with db.conn:
                db.execute("UPDATE vectors SET cluster = 0 WHERE cluster != 0")
                db.execute("DELETE FROM vector_clusters")
                set_state(
                    db, trained_on=0, clusters_version=current["clusters_version"] + 1
                )
        return
    if not current["trained_on"] or total > current["trained_on"] * IVF_RETRAIN_GROWTH:
        train_clusters(db, total)
    else:
        assign_new_vectors(db)


def train_clusters(db, total: int) -> None:
    from sklearn.cluster import MiniBatchKMeans

    vm = cached_matrix(db)
    n_clusters = max(2, int(2 * math.sqrt(total)))
    rng = np.random.default_rng(0)
    sample_size = min(total, n_clusters * IVF_SAMPLE_PER_CLUSTER)
    sample = vm.matrix[rng.choice(total, size=sample_size, replace=False)]
    # Ten passes over the sample are plenty for routing queries to clusters,
    # and keep training to seconds at 10^5 vectors.
    kmeans = MiniBatchKMeans(
        n_clusters=n_clusters, n_init=1, batch_size=4096, max_iter=10, random_state=0
    ).fit(sample)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    labels = nearest_centroids(vm.matrix, centroids) + 1
    with db.conn:
        db.execute("DELETE FROM vector_clusters")
        db.conn.executemany(
            "INSERT INTO vector_clusters (id, centroid) VALUES (?, ?)",
            [(i + 1, pack(c)) for i, c in enumerate(centroids)],
        )
        db.conn.executemany(
            "UPDATE vectors SET cluster = ? WHERE id = ?",
            zip(labels.tolist(), vm.ids.tolist(), strict=True),
        )
        set_state(
            db, trained_on=total, clusters_version=state(db)["clusters_version"] + 1
        )
    logger.info("trained %d clusters on %d vectors", n_clusters, total)


def assign_new_vectors(db) -> None:
    """Move the vectors of cluster 0 to their nearest trained centroid.

    Each row is written again under a new id rather than updated in place, so
    the vec0 index picks the move up as one deletion and one insertion.
    """
    rows = db.execute("SELECT id, vector FROM vectors WHERE cluster = 0").fetchall()
    centroids = cached_centroids(db)
    if not rows or centroids is None:
        return
    ids, matrix = centroids
    unassigned = unpack_rows([row[1] for row in rows], matrix.shape[1])
    labels = ids[nearest_centroids(unassigned, matrix)]
    with db.conn:
        for (vector_id, _), label in zip(rows, labels.tolist(), strict=True):
            db.execute(
                "INSERT INTO vectors (post_id, chunk, model, cluster, vector) "
                "SELECT post_id, chunk, model, ?, vector FROM vectors WHERE id = ?",
                [label, vector_id],
            )
            db.execute("DELETE FROM vectors WHERE id = ?", [vector_id])


def nearest_centroids(matrix: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Return the index of the nearest centroid for each row, in batches."""
    labels = np.empty(len(matrix), dtype=np.int64)
    for start in range(0, len(matrix), 8192):
        block = matrix[start : start + 8192] @ centroids.T
        labels[start : start + 8192] = block.argmax(axis=1)
    return labels
