import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sqlite_utils
from search_fixtures import add_post, make_db, post_id_by_title

from kb import vectors
from kb.embed import embed_posts, get_embedder
from kb.errors import ConfigError, ModelError
from kb.search import search
from kb.vectors import load_post_vectors, nearest_posts

BACKENDS = ["numpy", "sqlite-vec"]


@pytest.fixture
def db(tmp_path, fake_embedder):
    database = make_db(tmp_path / "kb.db")
    embed_posts(database)
    yield database
    database.close()


def query_vector(text: str) -> np.ndarray:
    return get_embedder("hash:64").encode([text])[0]


def test_load_post_vectors_returns_one_row_per_post(db):
    ids, matrix = load_post_vectors(db, "hash:64")
    assert ids.tolist() == sorted(ids.tolist())
    assert matrix.shape == (6, 64)
    assert matrix.dtype == np.float32


def test_load_post_vectors_rejects_other_model(db):
    with pytest.raises(ModelError, match="made by 'hash:64'"):
        load_post_vectors(db, "hash:32")


def test_search_with_other_model_names_both_models(db):
    with pytest.raises(ModelError) as raised:
        search(db, "flags", mode="semantic", model_name="hash:32")
    assert "--model hash:64" in str(raised.value)
    assert "kb embed --rebuild --model hash:32" in str(raised.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_posts_best_vector_wins(db, monkeypatch, backend):
    monkeypatch.setenv("KB_VECTORS", backend)
    assert vectors.backend(db) == backend
    results = nearest_posts(db, query_vector("unzipping the file yields"), 3)
    assert results[0][0] == post_id_by_title(db, "A zip file that contains itself")
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert len({post_id for post_id, _ in results}) == 3


def test_backends_return_the_same_posts(db, monkeypatch):
    found = {}
    for backend in BACKENDS:
        monkeypatch.setenv("KB_VECTORS", backend)
        found[backend] = [
            nearest_posts(db, query_vector(text), 6)
            for text in ("postgres replication", "flaky tests", "rust proxy c++")
        ]
    for numpy_list, vec_list in zip(found["numpy"], found["sqlite-vec"], strict=True):
        assert [p for p, _ in numpy_list] == [p for p, _ in vec_list]
        assert [s for _, s in numpy_list] == pytest.approx(
            [s for _, s in vec_list], abs=1e-5
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_posts_honours_allowed(db, monkeypatch, backend):
    monkeypatch.setenv("KB_VECTORS", backend)
    allowed = {post_id_by_title(db, "Our on-call handbook")}
    results = nearest_posts(db, query_vector("zip quine"), 5, allowed=allowed)
    assert [post_id for post_id, _ in results] == list(allowed)
    assert nearest_posts(db, query_vector("zip"), 5, allowed=set()) == []


def test_stdlib_connection_without_extensions_uses_numpy(db, monkeypatch):
    path = db.execute("PRAGMA database_list").fetchone()[2]
    plain = sqlite_utils.Database(sqlite3.connect(path))
    monkeypatch.setenv("KB_VECTORS", "auto")
    if hasattr(plain.conn, "enable_load_extension"):
        pytest.skip("this Python's sqlite3 can load extensions")
    assert vectors.backend(plain) == "numpy"
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    with pytest.raises(ConfigError, match="KB_VECTORS=numpy"):
        vectors.backend(plain)


def test_unknown_backend_setting_raises(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "faiss")
    with pytest.raises(ConfigError, match="KB_VECTORS='faiss'"):
        vectors.backend(db)


def test_vec_index_follows_changes(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    query = query_vector("error budgets burn rate")
    before = nearest_posts(db, query, 1)
    changed = post_id_by_title(db, "Rust in the proxy")
    db["posts"].update(changed, {"content_text": "error budgets and burn rate"})
    embed_posts(db)
    after = nearest_posts(db, query, 1)
    assert before[0][0] != changed
    assert after[0][0] == changed
    count = db.execute(f"SELECT count(*) FROM {vectors.VEC_TABLE}").fetchone()[0]
    assert count == db["vectors"].count


def test_numpy_cache_follows_changes(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "numpy")
    query = query_vector("error budgets burn rate")
    nearest_posts(db, query, 1)
    changed = post_id_by_title(db, "Rust in the proxy")
    db["posts"].update(changed, {"content_text": "error budgets and burn rate"})
    embed_posts(db)
    assert nearest_posts(db, query, 1)[0][0] == changed


def test_rebuild_recreates_vec_index_with_new_dimension(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    nearest_posts(db, query_vector("zip"), 1)
    embed_posts(db, "hash:32", rebuild=True)
    query = get_embedder("hash:32").encode(["zip file"])[0]
    results = nearest_posts(db, query, 1)
    assert results[0][0] == post_id_by_title(db, "A zip file that contains itself")


@pytest.fixture
def clustered(tmp_path, fake_embedder, monkeypatch):
    """A database big enough, with a lowered threshold, to be split in clusters."""
    monkeypatch.setattr(vectors, "IVF_MIN_VECTORS", 50)
    monkeypatch.setattr(vectors, "IVF_PROBES", 2)
    posts = [
        ("acme-eng", f"Note {n}", None, f"topic{n % 20} detail{n} shared words")
        for n in range(120)
    ]
    database = make_db(tmp_path / "kb.db", posts=posts)
    embed_posts(database)
    yield database
    database.close()


def test_clusters_are_trained_past_threshold(clustered):
    state = vectors.state(clustered)
    assert state["trained_on"] == clustered["vectors"].count
    assert clustered["vector_clusters"].count >= 2
    assert (
        clustered.execute("SELECT count(*) FROM vectors WHERE cluster = 0").fetchone()[
            0
        ]
        == 0
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_clustered_search_finds_exact_post(clustered, monkeypatch, backend):
    monkeypatch.setenv("KB_VECTORS", backend)
    for number in (3, 47, 101):
        # The exact embedded text: its vector lies in the nearest cluster.
        text = f"Note {number}\n\ntopic{number % 20} detail{number} shared words"
        results = nearest_posts(clustered, query_vector(text), 1)
        assert results[0][0] == post_id_by_title(clustered, f"Note {number}")
        assert results[0][1] == pytest.approx(1.0, abs=1e-5)


def test_clustered_backends_agree(clustered, monkeypatch):
    query = query_vector("topic7 shared")
    found = {}
    for backend in BACKENDS:
        monkeypatch.setenv("KB_VECTORS", backend)
        found[backend] = [post_id for post_id, _ in nearest_posts(clustered, query, 5)]
    assert found["numpy"] == found["sqlite-vec"]
    assert len(found["numpy"]) == 5


def test_new_vectors_join_trained_clusters(clustered):
    feed = clustered["feeds"].get(1)["id"]
    from search_fixtures import add_post

    add_post(clustered, feed, "Late note", None, "latecomer shared words")
    embed_posts(clustered)
    unassigned = clustered.execute(
        "SELECT count(*) FROM vectors WHERE cluster = 0"
    ).fetchone()[0]
    assert unassigned == 0
    text = "Late note\n\nlatecomer shared words"
    results = nearest_posts(clustered, query_vector(text), 1)
    assert results[0][0] == post_id_by_title(clustered, "Late note")


def read_only_database(path) -> sqlite_utils.Database:
    """Open ``path`` read-only on a connection that can load sqlite-vec."""
    from kb.db import sqlite3 as sqlite

    conn = sqlite.connect(f"file:{path}?mode=ro", uri=True)
    return sqlite_utils.Database(conn)


def test_embedding_brings_the_vec_index_up_to_date(
    tmp_path, fake_embedder, monkeypatch
):
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    database = make_db(tmp_path / "kb.db")
    embed_posts(database)
    state = vectors.state(database)
    assert (
        state["vec_synced_id"]
        == database.execute("SELECT max(id) FROM vectors").fetchone()[0]
    )
    count = database.execute(f"SELECT count(*) FROM {vectors.VEC_TABLE}").fetchone()
    assert count[0] == database["vectors"].count


def test_read_only_stale_index_scans_vectors(tmp_path, fake_embedder, monkeypatch):
    # Embedded without sqlite-vec, so the file has no vec0 index at all.
    monkeypatch.setenv("KB_VECTORS", "numpy")
    path = tmp_path / "kb.db"
    database = make_db(path)
    embed_posts(database)
    query = query_vector("unzipping the file yields")
    expected = nearest_posts(database, query, 3)
    database.close()
    before = path.read_bytes()
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    reader = read_only_database(path)
    assert vectors.backend(reader) == "sqlite-vec"
    assert nearest_posts(reader, query, 3) == expected
    assert vectors.VEC_TABLE not in reader.table_names()
    assert path.read_bytes() == before


def test_matrix_scanner_needs_no_connection(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "numpy")
    query = query_vector("unzipping the file yields")
    scan = vectors.matrix_scanner(db)
    expected = nearest_posts(db, query, 3)
    db.close()  # the scan must not read the closed connection
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(scan, query, 3, None).result() == expected


def test_matrix_scanner_is_none_under_sqlite_vec(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    assert vectors.matrix_scanner(db) is None


def test_semantic_limit_past_vec0_k_limit(tmp_path, fake_embedder, monkeypatch):
    # 2,100 posts hold 4,200 vectors, and 2,049 posts need more than vec0's 4,096.
    db = make_db(tmp_path / "many.db", posts=[])
    feed = db["feeds"].get(1)["id"]
    with db.conn:
        for number in range(2100):
            add_post(db, feed, f"Post {number}", None, f"release notes {number}")
    embed_posts(db)
    found = {}
    for backend in BACKENDS:
        monkeypatch.setenv("KB_VECTORS", backend)
        results = search(db, "release notes", mode="semantic", limit=2049)
        found[backend] = [result.post_id for result in results]
    assert len(found["sqlite-vec"]) == 2049
    assert found["sqlite-vec"] == found["numpy"]


def test_vec_search_past_its_k_limit_scans_all(db, monkeypatch):
    # vec0 returns at most VEC_MAX_K vectors, too few for 5 distinct posts.
    query = query_vector("postgres replication")
    monkeypatch.setenv("KB_VECTORS", "numpy")
    expected = nearest_posts(db, query, 5)
    monkeypatch.setenv("KB_VECTORS", "sqlite-vec")
    monkeypatch.setattr(vectors, "VEC_MAX_K", 2)
    assert nearest_posts(db, query, 5) == expected
