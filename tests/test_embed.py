import numpy as np
import pytest
from click.testing import CliRunner
from search_fixtures import make_db, post_id_by_title

from kb.chunking import split_chunks, whitespace_offsets
from kb.cli import cli
from kb.embed import QUERY_THREADS, embed_posts, get_embedder, torch_threads
from kb.errors import ModelError
from kb.vectors import load_post_vectors


@pytest.fixture
def db(tmp_path, fake_embedder):
    database = make_db(tmp_path / "kb.db")
    yield database
    database.close()


def test_hash_embedder_is_deterministic_and_normalised(fake_embedder):
    first = fake_embedder.encode(["feature flags", "zip quine", ""])
    second = get_embedder("hash:64").encode(["feature flags", "zip quine", ""])
    assert first.shape == (3, 64)
    assert first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0)
    assert np.array_equal(first, second)


def test_hash_embedder_puts_shared_words_closer(fake_embedder):
    a, b, c = fake_embedder.encode(
        ["postgres logical replication", "replication in postgres", "zip quine"]
    )
    assert a @ b > a @ c


def test_get_embedder_caches_per_name(fake_embedder):
    assert get_embedder("hash:64") is get_embedder("hash:64")
    assert get_embedder("hash:32").dim == 32


@pytest.mark.parametrize("name", ["hash:", "hash:x", "hash:1", "hash:-4"])
def test_get_embedder_rejects_bad_hash_names(name):
    with pytest.raises(ModelError, match="hash:64"):
        get_embedder(name)


@pytest.mark.slow
def test_get_embedder_reports_missing_model(tmp_path):
    with pytest.raises(ModelError, match="nothing is downloaded"):
        get_embedder(str(tmp_path / "no-such-model"))


def test_split_chunks_respects_size_and_overlap():
    text = " ".join(f"w{i}" for i in range(25))
    chunks = split_chunks(text, whitespace_offsets, max_tokens=10, overlap=3)
    words = [chunk.split() for chunk in chunks]
    assert all(len(w) <= 10 for w in words)
    assert words[0][-3:] == words[1][:3]
    assert words[-1][-1] == "w24"
    assert " ".join(words[0]) == text[: len(chunks[0])]


@pytest.mark.parametrize("max_tokens, overlap", [(0, 0), (4, 4), (4, -1)])
def test_split_chunks_rejects_bad_sizes(max_tokens, overlap):
    with pytest.raises(ValueError, match="max_tokens"):
        split_chunks("a b c", whitespace_offsets, max_tokens, overlap)


def test_split_chunks_of_blank_text_is_empty():
    assert split_chunks("  \n ", whitespace_offsets, 8, 2) == []


def test_embed_posts_stores_post_and_chunk_vectors(db):
    stats = embed_posts(db)
    assert stats.posts_embedded == 6
    assert stats.posts_without_text == 0
    rows = list(db.query("SELECT post_id, chunk, model FROM vectors"))
    assert {row["model"] for row in rows} == {"hash:64"}
    post_vectors = [row for row in rows if row["chunk"] is None]
    assert len(post_vectors) == 6
    assert len(rows) == 6 + stats.chunks_embedded


def test_embed_posts_skips_posts_without_text(db):
    embed_posts(db)
    blank = post_id_by_title(db, "")
    ids, matrix = load_post_vectors(db)
    assert blank not in ids.tolist()
    assert not np.isnan(matrix).any()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def test_embed_posts_second_run_embeds_nothing(db):
    embed_posts(db)
    stats = embed_posts(db)
    assert stats.posts_embedded == 0
    assert stats.chunks_embedded == 0
    assert stats.posts_unchanged == 6


def test_embed_posts_reembeds_only_changed_text(db):
    embed_posts(db)
    changed = post_id_by_title(db, "Our on-call handbook")
    db["posts"].update(changed, {"content_text": "Now about error budgets."})
    stats = embed_posts(db)
    assert stats.embedded_ids == [changed]


def test_embed_posts_drops_vectors_when_text_goes(db):
    embed_posts(db)
    emptied = post_id_by_title(db, "Rust in the proxy")
    db["posts"].update(emptied, {"title": "", "content_text": None})
    stats = embed_posts(db)
    assert stats.posts_removed == 1
    count = db.execute(
        "SELECT count(*) FROM vectors WHERE post_id = ?", [emptied]
    ).fetchone()[0]
    assert count == 0


def test_related_posts_drop_removed_post(db):
    embed_posts(db)
    emptied = post_id_by_title(db, "Rust in the proxy")
    db["posts"].update(emptied, {"title": "", "content_text": None})
    embed_posts(db)
    mentions = db.execute(
        "SELECT count(*) FROM related_posts WHERE post_id = ? OR related_id = ?",
        [emptied, emptied],
    ).fetchone()[0]
    assert mentions == 0
    sizes = {
        row[0]
        for row in db.execute("SELECT count(*) FROM related_posts GROUP BY post_id")
    }
    assert sizes == {4}


def test_embed_posts_reports_progress(db):
    seen = []
    embed_posts(db, progress=seen.append)
    assert sum(seen) == 6


def test_embed_posts_rejects_other_dimension(db):
    embed_posts(db, "hash:64")
    with pytest.raises(ModelError) as raised:
        embed_posts(db, "hash:32")
    message = str(raised.value)
    assert "dimension 32" in message
    assert "dimension 64" in message
    assert "kb embed --rebuild --model hash:32" in message


def test_embed_posts_rebuild_switches_dimension(db):
    embed_posts(db, "hash:64")
    stats = embed_posts(db, "hash:32", rebuild=True)
    assert stats.posts_embedded == 6
    dims = {row[0] for row in db.execute("SELECT length(vector) / 4 FROM vectors")}
    assert dims == {32}


def test_embed_posts_fills_related_posts(db):
    embed_posts(db)
    rows = list(db.query("SELECT * FROM related_posts"))
    assert rows
    assert all(row["post_id"] != row["related_id"] for row in rows)
    ranks = [r["rank"] for r in rows if r["post_id"] == rows[0]["post_id"]]
    assert ranks == list(range(1, len(ranks) + 1))


def test_related_posts_prefer_other_companies(db):
    embed_posts(db)
    acme = {
        row[0]
        for row in db.execute(
            "SELECT posts.id FROM posts JOIN feeds ON feeds.id = posts.feed_id "
            "WHERE feeds.company = 'Acme'"
        )
    }
    post = post_id_by_title(db, "Scaling Postgres with logical replication")
    first = db.execute(
        "SELECT related_id FROM related_posts WHERE post_id = ? AND rank = 1", [post]
    ).fetchone()[0]
    assert first not in acme


def test_embed_cli_reports_counts(tmp_path, fake_embedder):
    make_db(tmp_path / "kb.db").close()
    runner = CliRunner()
    result = runner.invoke(cli, ["embed", "-d", str(tmp_path / "kb.db"), "-s"])
    assert result.exit_code == 0, result.output
    assert "Embedded 6 posts" in result.output
    again = runner.invoke(cli, ["embed", "-d", str(tmp_path / "kb.db"), "-s"])
    assert "Embedded 0 posts" in again.output
    assert "6 unchanged" in again.output


def test_embed_cli_dimension_error_exits_1(tmp_path, fake_embedder):
    make_db(tmp_path / "kb.db").close()
    runner = CliRunner()
    runner.invoke(cli, ["embed", "-d", str(tmp_path / "kb.db"), "-s"])
    result = runner.invoke(
        cli, ["embed", "-d", str(tmp_path / "kb.db"), "-s", "-m", "hash:16"]
    )
    assert result.exit_code == 1
    assert "kb embed --rebuild --model hash:16" in result.output


@pytest.mark.slow
def test_bundled_model_embeds_and_chunks_within_limit():
    embedder = get_embedder()
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.dim == 384
    assert embedder.max_tokens == 254
    text = " ".join(["replication lag between regions"] * 300)
    chunks = embedder.chunk(text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert len(embedder.token_offsets(chunk)) <= embedder.max_tokens
    vectors = embedder.encode(
        ["flaky tests", "tests that fail at random", "zip file quine"]
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_torch_threads_restores_setting():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch_threads(4):  # never raised above the process setting
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_query_embedding_uses_one_thread(monkeypatch):
    torch = pytest.importorskip("torch")
    embedder = get_embedder()
    seen = []
    encode = embedder.model.encode

    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return encode(*args, **kwargs)

    monkeypatch.setattr(embedder.model, "encode", record)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        vector = embedder.encode_query("replication lag between regions")
        assert seen == [QUERY_THREADS]
        assert torch.get_num_threads() == 2
        expected = embedder.encode(["replication lag between regions"])[0]
    finally:
        torch.set_num_threads(before)
    assert vector.shape == (384,)
    assert np.allclose(vector, expected, atol=1e-5)
