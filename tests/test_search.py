import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from search_fixtures import add_post, make_db, post_id_by_title

import kb.search
from kb import vectors
from kb.cli import cli
from kb.db import open_db
from kb.embed import embed_posts
from kb.errors import SearchError
from kb.query import MAX_TERMS, fts_query, query_terms
from kb.search import (
    KEYWORD_WEIGHT,
    RRF_K,
    SEMANTIC_WEIGHT,
    Filters,
    keyword_ranking,
    make_snippet,
    search,
    split_terms,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path, fake_embedder):
    database = make_db(tmp_path / "kb.db")
    embed_posts(database)
    yield database
    database.close()


def titles(results):
    return [result.title for result in results]


# fts_query -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        # Operators become plain quoted words.
        ("postgres AND replication", '"postgres" OR "replication"'),
        ("NEAR(flags rules)", '"NEAR" OR "flags" OR "rules"'),
        # Separators inside a word keep its tokens together as a phrase.
        ("cf-html rewriter", '"cf html" OR "rewriter"'),
        ("parse_json()", '"parse json"'),
        # Punctuation-only words vanish, and C++ keeps its letter.
        ("C++ ** ((", '"C"'),
        # Brackets and commas end a word.
        ("f(x),g", '"f" OR "x" OR "g"'),
        # A quoted phrase stays a phrase, and an unbalanced quote is dropped.
        ('"logical replication" lag', '"logical replication" OR "lag"'),
        ('"unbalanced quote', '"unbalanced" OR "quote"'),
        # Stopwords go, unless nothing else is left.
        ("the flags of it", '"flags"'),
        ("the of it", '"the" OR "of" OR "it"'),
        # Repeated words appear once, whatever their case.
        ("Flags flags FLAGS", '"Flags"'),
        # A trailing star is a prefix query, a lone star nothing.
        ("prox* *", '"prox" *'),
        ("", ""),
        ("  -- : * ", ""),
    ],
)
def test_fts_query_quotes_every_term(text, expected):
    assert fts_query(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        '"proxy',
        "C++ proxy",
        "rust: proxy",
        "(proxy",
        "proxy)",
        "NOT proxy",
        "proxy OR",
        "NEAR proxy",
        "prox*",
        "-proxy",
        "^proxy",
        "proxy AND AND",
        "'proxy'",
        "proxy's",
    ],
)
def test_keyword_search_is_safe_and_finds_words(db, text):
    results = search(db, text, mode="keyword")
    assert "Rust in the proxy" in titles(results)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fts_query_never_raises_in_sqlite(text):
    import sqlite3

    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE VIRTUAL TABLE t USING fts5(body, tokenize='porter')")
    connection.execute("INSERT INTO t VALUES ('some words here')")
    match = fts_query(text)
    if match:
        connection.execute("SELECT * FROM t WHERE t MATCH ?", [match]).fetchall()
    assert all(term.count('"') == 2 for term in query_terms(text))
    assert all(term.startswith('"') for term in query_terms(text))


# keyword ---------------------------------------------------------------------


def test_keyword_weights_title_above_body(tmp_path, fake_embedder):
    db = make_db(tmp_path / "kb.db", posts=[])
    feed = db["feeds"].get(1)["id"]
    add_post(db, feed, "Notes", None, "We moved Kubernetes to new nodes this week.")
    add_post(db, feed, "Kubernetes upgrades", None, "We moved to new nodes this week.")
    results = search(db, "kubernetes", mode="keyword")
    assert titles(results) == ["Kubernetes upgrades", "Notes"]


def test_keyword_snippet_is_highlighted_and_escaped(tmp_path, fake_embedder):
    db = make_db(tmp_path / "kb.db", posts=[])
    feed = db["feeds"].get(1)["id"]
    add_post(db, feed, "C++ notes", None, "Use <b>std::vector</b> & templates.")
    [result] = search(db, "templates", mode="keyword")
    assert "<mark>templates</mark>" in result.snippet
    assert "&lt;b&gt;" in result.snippet
    assert "<b>" not in result.snippet


def test_snippet_never_marks_inside_an_entity():
    snippet = make_snippet("AI News & Insights <weekly>", "amp lt weekly")
    assert snippet == "AI News &amp; Insights &lt;<mark>weekly</mark>&gt;"


def common_word_db(tmp_path, monkeypatch):
    """Return 120 posts that all contain "platform", four of them also "zanzibar"."""
    monkeypatch.setattr(kb.search, "COMMON_TERM_MIN", 10)
    db = make_db(tmp_path / "kb.db", posts=[])
    feed = db["feeds"].get(1)["id"]
    for number in range(120):
        rare = " zanzibar" * (number % 30 == 0)
        add_post(db, feed, f"Note {number}", None, f"platform team{rare} {number}")
    return db


def test_common_terms_are_split_from_distinctive_ones(tmp_path, monkeypatch):
    db = common_word_db(tmp_path, monkeypatch)
    distinct, common = split_terms(db, ['"platform"', '"zanzibar"'])
    assert (distinct, common) == (['"zanzibar"'], ['"platform"'])
    # A lone term is never split off, however common.
    assert split_terms(db, ['"platform"']) == (['"platform"'], [])


def test_split_keeps_or_query_scores(tmp_path, monkeypatch):
    db = common_word_db(tmp_path, monkeypatch)
    split = keyword_ranking(db, "platform zanzibar", 50, Filters("1", []))
    plain = db.execute(
        "SELECT rowid, -bm25(posts_fts, 3.0, 1.0) FROM posts_fts "
        'WHERE posts_fts MATCH \'"platform" OR "zanzibar"\' '
        "ORDER BY bm25(posts_fts, 3.0, 1.0) LIMIT 4"
    ).fetchall()
    assert [post_id for post_id, _ in split] == [row[0] for row in plain]
    assert [score for _, score in split] == pytest.approx([row[1] for row in plain])


def test_misspelt_word_keeps_other_matches(tmp_path, monkeypatch):
    db = common_word_db(tmp_path, monkeypatch)
    assert split_terms(db, ['"platform"', '"xyzzyq"']) == ([], ['"platform"'])
    results = search(db, "platform xyzzyq", mode="keyword", limit=200)
    assert len(results) == 120


def test_posts_with_only_common_terms_are_left_out(tmp_path, monkeypatch):
    db = common_word_db(tmp_path, monkeypatch)
    results = search(db, "platform zanzibar", mode="keyword", limit=50)
    assert len(results) == 4
    assert all("zanzibar" in result.snippet for result in results)
    # Without the distinctive word, the common one still finds every post.
    assert len(search(db, "platform", mode="keyword", limit=200)) == 120


def test_keyword_score_is_negated_bm25(db):
    results = search(db, "postgres", mode="keyword")
    assert all(result.score > 0 for result in results)
    scores = [result.score for result in results]
    assert scores == sorted(scores, reverse=True)


def test_keyword_search_without_words_returns_nothing(db):
    assert search(db, " ** ", mode="keyword") == []


# semantic and hybrid ---------------------------------------------------------


def test_semantic_search_ranks_by_meaning(db):
    results = search(db, "zip archive that contains itself", mode="semantic")
    assert results[0].title == "A zip file that contains itself"
    assert results[0].semantic_rank == 1
    assert results[0].keyword_rank is None
    assert 0 < results[0].score <= 1.0


def test_semantic_search_never_returns_posts_without_text(db):
    results = search(db, "anything at all", mode="semantic", limit=50)
    assert "" not in titles(results)
    assert len(results) == 6


def test_semantic_search_without_vectors_says_to_embed(tmp_path, fake_embedder):
    db = make_db(tmp_path / "kb.db")
    with pytest.raises(SearchError, match="kb embed"):
        search(db, "flags", mode="semantic")


def test_hybrid_search_without_vectors_uses_keywords(tmp_path, fake_embedder):
    db = make_db(tmp_path / "kb.db")
    results = search(db, "feature flags")
    assert results[0].title == "Feature flags at scale"
    assert results[0].semantic_rank is None


def test_hybrid_reports_both_ranks(db):
    results = search(db, "flaky tests fail at random")
    top = results[0]
    assert top.title == "Flaky tests and where they come from"
    assert top.keyword_rank == 1
    assert top.semantic_rank == 1
    assert top.score == pytest.approx(
        KEYWORD_WEIGHT / (RRF_K + 1) + SEMANTIC_WEIGHT / (RRF_K + 1), abs=1e-6
    )


@pytest.mark.parametrize("filters", [{}, {"source": "globex-blog"}])
def test_hybrid_same_on_both_backends(db, monkeypatch, filters):
    # numpy scans the vectors on the worker thread, sqlite-vec on the caller's.
    found = {}
    for backend in ("numpy", "sqlite-vec"):
        monkeypatch.setenv("KB_VECTORS", backend)
        results = search(db, "postgres proxy flaky tests", **filters)
        found[backend] = [(r.post_id, r.keyword_rank, r.semantic_rank) for r in results]
    assert found["numpy"] and found["numpy"] == found["sqlite-vec"]
    assert any(semantic is not None for _, _, semantic in found["numpy"])


@pytest.mark.parametrize("mode", ["semantic", "hybrid"])
def test_query_without_words_finds_nothing(db, mode):
    assert search(db, "!!! ???", mode=mode) == []


def test_empty_filter_skips_vector_load(db, monkeypatch):
    monkeypatch.setenv("KB_VECTORS", "numpy")

    def fail(_db):
        raise AssertionError(
            "the vectors were loaded for a filter that matches nothing"
        )

    monkeypatch.setattr(vectors, "cached_matrix", fail)
    assert search(db, "postgres proxy", source="no-such-feed") == []


def test_concurrent_hybrid_searches_scan_at_once(db, monkeypatch):
    # Each scan waits for the other, so scans run one at a time would time out.
    monkeypatch.setenv("KB_VECTORS", "numpy")
    path = db.execute("PRAGMA database_list").fetchone()[2]
    both_scanning = threading.Barrier(2, timeout=10)
    scan_rows = vectors.scan_rows

    def scan_together(*args):
        both_scanning.wait()
        return scan_rows(*args)

    monkeypatch.setattr(vectors, "scan_rows", scan_together)

    def run(query):
        connection = open_db(path)
        try:
            return search(connection, query)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = list(pool.map(run, ["postgres proxy", "flaky tests"]))
    assert all(found)


def test_hybrid_puts_quoted_phrase_first(db):
    # Only the feature-flags post contains "flag rules", though the
    # replication post matches the other words better.
    results = search(db, 'postgres logical replication database "flag rules"')
    assert results[0].title == "Feature flags at scale"


def test_search_rejects_unknown_mode(db):
    with pytest.raises(SearchError, match="hybrid, keyword, semantic"):
        search(db, "flags", mode="fuzzy")


def test_search_rejects_bad_limit(db):
    with pytest.raises(SearchError, match="limit=0"):
        search(db, "flags", limit=0)


# filters ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["keyword", "semantic", "hybrid"])
@pytest.mark.parametrize("source", ["globex-blog", "GLOBEX", "Globex-Blog"])
def test_source_filter_matches_slug_or_company(db, mode, source):
    results = search(db, "postgres proxy tests", mode=mode, source=source)
    assert results
    assert {result.source for result in results} == {"globex-blog"}


@pytest.mark.parametrize("mode", ["keyword", "semantic", "hybrid"])
def test_date_filters_are_inclusive(db, mode):
    results = search(
        db,
        "postgres proxy tests flags zip",
        mode=mode,
        since="2023-01-12",
        until="2024-02-20",
        limit=20,
    )
    assert sorted(titles(results)) == [
        "Feature flags at scale",
        "Flaky tests and where they come from",
        "Rust in the proxy",
    ]


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "31/12/2024"])
def test_invalid_date_raises(db, value):
    with pytest.raises(SearchError, match="YYYY-MM-DD"):
        search(db, "flags", since=value)


def test_filtered_query_is_never_short(tmp_path, fake_embedder):
    db = make_db(tmp_path / "kb.db", posts=[])
    ids = {row["slug"]: row["id"] for row in db["feeds"].rows}
    for number in range(150):
        add_post(db, ids["acme-eng"], f"Cache tuning {number}", None, "cache " * 20)
    for number in range(5):
        add_post(db, ids["globex-blog"], f"Globex {number}", None, "a cache note")
    embed_posts(db)
    for mode in ("keyword", "semantic", "hybrid"):
        results = search(db, "cache", mode=mode, source="globex", limit=10)
        assert len(results) == 5, mode


def test_topic_filter_uses_post_topics(db):
    db.execute(
        "INSERT INTO topics (id, label, terms, model, centroid, threshold, created, "
        "last_seen) VALUES (7, 'Databases', '[]', 'hash:64', x'00', 0.5, '', '')"
    )
    post = post_id_by_title(db, "Feature flags at scale")
    db.execute(
        "INSERT INTO post_topics (post_id, topic_id, score, assigned) "
        "VALUES (?, 7, 0.9, '')",
        [post],
    )
    for topic in (7, "7", "databases"):
        results = search(db, "postgres", topic=topic)
        assert titles(results) == ["Feature flags at scale"]


def test_topic_filter_tolerates_missing_tables(db):
    db.execute("DROP TABLE post_topics")
    db.execute("DROP TABLE topics")
    assert search(db, "postgres")
    with pytest.raises(SearchError, match="no topics"):
        search(db, "postgres", topic="databases")


@pytest.mark.parametrize("topic", ["nope", "999999999999999999999999", "²"])
def test_unknown_topic_raises(db, topic):
    with pytest.raises(SearchError, match="Unknown topic"):
        search(db, "postgres", topic=topic)


def test_reversed_date_range_raises(db):
    with pytest.raises(SearchError, match="since 2024-07-14 is after until"):
        search(db, "flags", since="2024-07-14", until="2024-07-12")


def test_blank_source_is_no_filter(db):
    unfiltered = titles(search(db, "postgres"))
    assert titles(search(db, "postgres", source="   ")) == unfiltered


def test_long_query_keeps_first_terms():
    words = " ".join(f"word{number}" for number in range(100_000))
    terms = query_terms(words)
    assert len(terms) == MAX_TERMS
    assert terms[0] == '"word0"'


# CLI -------------------------------------------------------------------------


def test_search_cli_prints_json(db, tmp_path):
    result = CliRunner().invoke(
        cli, ["search", "feature flags", "--json", "-d", str(tmp_path / "kb.db")]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["title"] == "Feature flags at scale"
    for key in (
        "url",
        "title",
        "company",
        "published",
        "score",
        "keyword_rank",
        "semantic_rank",
        "snippet",
    ):
        assert key in rows[0]


def test_search_cli_prints_text(db, tmp_path):
    result = CliRunner().invoke(
        cli, ["search", "feature flags", "-n", "1", "-d", str(tmp_path / "kb.db")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(" 1. Feature flags at scale  [Initech, 2024-02-20]")


@pytest.mark.parametrize(
    "options",
    [
        ["--mode", "fuzzy"],
        ["--since", "yesterday"],
        ["--until", "2024-02-30"],
        ["--limit", "0"],
        ["--limit", "1e20"],
        ["--limit", str(2**63)],
        ["--limit", str(10**30)],
    ],
)
def test_search_cli_rejects_bad_options_with_exit_2(db, tmp_path, options):
    result = CliRunner().invoke(
        cli, ["search", "flags", "-d", str(tmp_path / "kb.db"), *options]
    )
    assert result.exit_code == 2, result.output
    assert options[0] in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("mode", ["keyword", "semantic", "hybrid"])
def test_search_cli_accepts_largest_limit(db, tmp_path, mode):
    result = CliRunner().invoke(
        cli,
        ["search", "flags", "--mode", mode, "-n", str(2**63 - 1)]
        + ["-d", str(tmp_path / "kb.db")],
    )
    assert result.exit_code == 0, result.output
    assert "Feature flags at scale" in result.output


def test_search_cli_reports_missing_database(tmp_path):
    result = CliRunner().invoke(cli, ["search", "x", "-d", str(tmp_path / "no.db")])
    assert result.exit_code == 1
    assert "kb ingest" in result.output


# quality ---------------------------------------------------------------------


@pytest.mark.slow
def test_hybrid_quality_on_dev_queries(corpus_db_path, eval_dir, tmp_path):
    """Hybrid beats both arms on every kind and clears the quality bar."""
    import shutil

    db_path = tmp_path / "corpus.db"
    shutil.copy(corpus_db_path, db_path)
    output = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "search_quality.py"),
            str(eval_dir / "dev-queries.tsv"),
            "--db",
            str(db_path),
            "--embed",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={key: value for key, value in os.environ.items() if key != "KB_MODEL"},
    )
    modes = json.loads(output.stdout)["modes"]
    hybrid = modes["hybrid"]
    assert hybrid["all"]["mrr@10"] >= 0.90
    assert hybrid["concept"]["mrr@10"] >= 0.75
    for single in ("keyword", "semantic"):
        assert hybrid["all"]["mrr@10"] > modes[single]["all"]["mrr@10"], single
        # A kind where one arm is already perfect can only be tied.
        for kind in ("exact", "concept", "mixed"):
            best = modes[single][kind]["mrr@10"]
            assert hybrid[kind]["mrr@10"] >= best, (kind, single)
            assert hybrid[kind]["mrr@10"] > best or best == 1.0, (kind, single)
