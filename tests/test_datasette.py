"""The kb Datasette plugin, metadata.yml and kb serve, through Datasette's client."""

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from datasette.app import Datasette
from datasette.utils import StartupError
from serve_fixtures import MODEL, build_kb

from kb.cli import cli
from kb.errors import ConfigError, DatabaseError
from kb.serve import build_datasette, load_metadata, metadata_for

pytestmark = pytest.mark.anyio

ATOM = "{http://www.w3.org/2005/Atom}"
QUERIES = [
    "search",
    "similar_posts",
    "daily_digest",
    "weekly_digest",
    "patterns_across_companies",
    "rising_topics",
    "feed_health",
]
QUERY_PARAMS = {
    "search": ["q", "mode", "company", "since", "until"],
    "similar_posts": ["post_id"],
    "daily_digest": ["date"],
    "weekly_digest": ["week"],
    "patterns_across_companies": ["since", "until"],
    "rising_topics": ["week"],
    "feed_health": [],
}
HOSTILE_VALUES = [
    '"',
    "'",
    '"unbalanced AND (',
    "<script>alert(1)</script>",
    "'; drop table posts; --",
    "1 OR 1=1",
    "NEAR(a b",
    "*",
    "%",
    "😀 ünïcödé",
    "x" * 10_000,
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory):
    # Shared by the module's tests: every connection Datasette opens is
    # read-only, and the tests check that nothing changes the file.
    path = tmp_path_factory.mktemp("serve") / "kb.db"
    build_kb(path)
    return path


@pytest.fixture(scope="module")
def datasette(kb_path):
    return build_datasette(kb_path, model=MODEL)


def assert_no_script(html: str) -> None:
    """Assert that no feed-supplied script or handler reached the page."""
    lowered = html.lower()
    assert "kbpwned" not in lowered or "<script" not in lowered
    assert "<script>window.kbpwned" not in lowered
    assert "onerror=" not in lowered
    assert "onload=" not in lowered
    assert "onclick=" not in lowered
    assert "javascript:" not in lowered


# Serving -------------------------------------------------------------------


def test_build_datasette_missing_file(tmp_path):
    with pytest.raises(DatabaseError, match="not found"):
        build_datasette(tmp_path / "absent.db")


def test_metadata_moves_to_file_stem():
    metadata = metadata_for(load_metadata(), "nightly", "hash:8")
    assert "kb" not in metadata["databases"]
    assert "search" in metadata["databases"]["nightly"]["queries"]
    assert metadata["plugins"]["kb"]["model"] == "hash:8"


def test_load_metadata_rejects_non_mapping(tmp_path):
    path = tmp_path / "metadata.yml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_metadata(path)


def test_every_query_documented():
    queries = load_metadata()["databases"]["kb"]["queries"]
    assert sorted(queries) == sorted(QUERIES)
    for name, query in queries.items():
        assert query.get("title"), name
        assert query.get("description"), name
        assert not query.get("write"), name


async def test_startup_rejects_other_model(kb_path):
    datasette = build_datasette(kb_path, model="hash:32")
    with pytest.raises(StartupError, match="hash:64"):
        await datasette.invoke_startup()


async def test_startup_rejects_writable_query(kb_path):
    metadata = metadata_for(load_metadata(), "kb", MODEL)
    metadata["databases"]["kb"]["queries"]["wipe"] = {
        "sql": "delete from posts",
        "write": True,
    }
    datasette = Datasette([str(kb_path)], metadata=metadata)
    with pytest.raises(StartupError, match="wipe"):
        await datasette.invoke_startup()


async def test_other_database_left_alone(tmp_path):
    import sqlite_utils

    other = tmp_path / "other.db"
    sqlite_utils.Database(other)["notes"].insert({"id": 1, "text": "hello"})
    datasette = Datasette([str(other)])
    await datasette.invoke_startup()
    db = datasette.get_database("other")
    await db.execute_write("insert into notes (id, text) values (2, 'more')")
    assert (await db.execute("select count(*) from notes")).first()[0] == 2
    response = await datasette.client.get("/-/kb/search")
    assert response.status_code == 404


def test_serve_command_help():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--model" in result.output
    assert "--sql-time-limit-ms" in result.output
    assert "Example:" in result.output


def test_serve_command_missing_database(tmp_path):
    result = CliRunner().invoke(cli, ["serve", "-d", str(tmp_path / "absent.db")])
    assert result.exit_code == 1
    assert "Database not found" in result.output


def test_serve_command_wrong_model_stops(kb_path):
    result = CliRunner().invoke(
        cli, ["serve", "-d", str(kb_path), "--port", "1", "--model", "hash:32"]
    )
    assert result.exit_code == 1
    assert "Cannot start the server" in result.output
    assert "hash:64" in result.output


async def test_serves_file_with_vec0_index(tmp_path):
    from kb import vectors
    from kb.db import open_db
    from kb.search import search

    path = tmp_path / "kb.db"
    build_kb(path)
    db = open_db(path)
    if not vectors.load_sqlite_vec(db.conn):
        pytest.skip("this sqlite3 module cannot load sqlite-vec")
    # A search on the command line builds the vec0 index inside the file.
    search(db, "failover", model_name=MODEL)
    assert "vec_vectors" in db.table_names()
    db.close()
    datasette = build_datasette(path, model=MODEL)
    for page in ("/", "/kb", "/kb/posts.json", "/kb/vectors"):
        response = await datasette.client.get(page)
        assert response.status_code == 200, page
    rows = await query_rows(datasette, "search", q="lab pipeline", mode="semantic")
    assert rows[0]["title"] == "Our data pipeline for lab results"


async def test_search_query_keeps_time_limit(kb_path):
    datasette = build_datasette(kb_path, model=MODEL, settings={"sql_time_limit_ms": 1})
    response = await datasette.client.get("/kb/search.json", params={"q": "failover"})
    assert response.status_code == 400
    assert response.json()["ok"] is False


# Read-only -----------------------------------------------------------------


async def test_write_connection_rejects_writes(datasette):
    await datasette.invoke_startup()
    db = datasette.get_database("kb")
    with pytest.raises(Exception, match="readonly"):
        await db.execute_write("delete from posts")
    assert (await db.execute("select count(*) from posts")).first()[0] == 7


@pytest.mark.parametrize(
    "sql",
    [
        "delete from posts",
        "update posts set title = 'x'",
        "insert into feeds (slug, url, added_at) values ('x', 'y', 'z')",
        "drop table posts",
        "select 1; delete from posts",
        "pragma query_only = 0",
        "attach database ':memory:' as other",
    ],
)
async def test_sql_cannot_write(datasette, sql):
    response = await datasette.client.get("/kb.json", params={"sql": sql})
    # Datasette returns 400 for a statement that is not a SELECT, and 500
    # when pysqlite3 rejects a second statement with sqlite3.Warning.
    assert response.status_code in (400, 500)
    count = await datasette.client.get(
        "/kb.json", params={"sql": "select count(*) as n from posts", "_shape": "array"}
    )
    assert count.json() == [{"n": 7}]


@pytest.mark.parametrize("query", QUERIES)
async def test_post_to_query_rejected(datasette, query):
    response = await datasette.client.post(f"/kb/{query}", data={"q": "x"})
    assert response.status_code in (403, 405)


# Headers -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/-/kb/search", "/-/kb/post/1", "/-/kb/digest"])
async def test_kb_pages_strict_policy(datasette, path):
    response = await datasette.client.get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src" not in policy
    assert "unsafe-inline" not in policy.split("style-src")[1].split(";")[0]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/kb", "/kb/posts", "/kb/search"])
async def test_datasette_pages_policy(datasette, path):
    response = await datasette.client.get(path)
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "object-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "img-src 'self' data:" in policy


# SQL functions ---------------------------------------------------------------


async def sql_value(datasette, sql, **params):
    response = await datasette.client.get(
        "/kb.json", params={"sql": sql, "_shape": "array", **params}
    )
    assert response.status_code == 200, response.text
    return list(response.json()[0].values())[0]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-W34", "2026-08-17"),
        ("2026-08-20", "2026-08-17"),
        ("2026-08-17", "2026-08-17"),
        ("2026-W54", None),
        ("2026-02-30", None),
        ("last week", None),
        ("", None),
    ],
)
async def test_week_start(datasette, text, expected):
    assert (
        await sql_value(datasette, "select kb_week_start(:t) as v", t=text) == expected
    )


async def test_fts_query_quotes_operators(datasette):
    value = await sql_value(datasette, "select kb_fts_query(:t) as v", t='"NEAR( AND')
    rows = await datasette.client.get(
        "/kb.json",
        params={
            "sql": "select rowid from posts_fts where posts_fts match :m",
            "m": value,
        },
    )
    assert rows.status_code == 200


async def test_embed_returns_float32_blob(datasette):
    assert await sql_value(datasette, "select length(kb_embed('failover')) as v") == 256


async def test_html_escape(datasette):
    value = await sql_value(datasette, "select kb_html_escape(:t) as v", t="<a&'>")
    assert value == "&lt;a&amp;&#39;&gt;"


async def test_search_function_json(datasette):
    value = await sql_value(
        datasette, "select kb_search('failover', 'keyword', 'Initech') as v"
    )
    results = json.loads(value)
    assert [result["post_id"] for result in results] == [3]
    assert "<mark>" in results[0]["snippet"]


# Search page -----------------------------------------------------------------


async def test_search_page_empty_form(datasette):
    response = await datasette.client.get("/-/kb/search")
    assert response.status_code == 200
    assert 'name="q"' in response.text
    assert "Acme" in response.text
    assert "failover · postgres · drills" in response.text


async def test_search_page_results(datasette):
    response = await datasette.client.get("/-/kb/search", params={"q": "failover"})
    assert response.status_code == 200
    html = response.text
    assert "How we run multi-AZ failover for Postgres" in html
    assert "Testing database failover in production" in html
    assert "<mark>" in html
    assert 'href="/-/kb/post/1"' in html
    assert_no_script(html)


@pytest.mark.parametrize(
    "params,present,absent",
    [
        (
            {"q": "failover", "company": "Initech"},
            "Testing database failover",
            "multi-AZ failover",
        ),
        (
            {"q": "kafka", "topic": "kafka · lag · partitions"},
            "Taming Kafka",
            "lab results",
        ),
        (
            {"q": "failover", "since": "2026-08-20"},
            "multi-AZ failover",
            "Testing database failover",
        ),
        (
            {"q": "failover", "until": "2026-08-19"},
            "Testing database failover",
            "multi-AZ failover",
        ),
        ({"q": "postgres", "mode": "keyword"}, "multi-AZ failover", "Kafka consumer"),
    ],
)
async def test_search_page_filters(datasette, params, present, absent):
    response = await datasette.client.get("/-/kb/search", params=params)
    assert response.status_code == 200
    assert present in response.text
    assert absent not in response.text


def result_titles(html: str) -> list[str]:
    """Return the result titles of a search page, in order."""
    import re

    return re.findall(r'<h2><a href="/-/kb/post/\d+">([^<]*)</a></h2>', html)


async def test_search_page_semantic_mode(datasette):
    response = await datasette.client.get(
        "/-/kb/search", params={"q": "lab results pipeline", "mode": "semantic"}
    )
    titles = result_titles(response.text)
    assert titles[0] == "Our data pipeline for lab results"
    assert "keyword rank –" in response.text


@pytest.mark.parametrize(
    "params,message",
    [
        ({"q": "x", "mode": "fuzzy"}, "Invalid search mode"),
        ({"q": "x", "since": "yesterday"}, "Invalid since date"),
        ({"q": "x", "until": "2026-13-01"}, "Invalid until date"),
        ({"q": "x", "topic": "no such topic"}, "Unknown topic"),
    ],
)
async def test_search_page_invalid_input(datasette, params, message):
    response = await datasette.client.get("/-/kb/search", params=params)
    assert response.status_code == 400
    assert message in response.text
    assert 'name="q"' in response.text


@pytest.mark.parametrize("value", HOSTILE_VALUES)
async def test_search_page_hostile_query(datasette, value):
    response = await datasette.client.get(
        "/-/kb/search", params={"q": value, "company": value}
    )
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.text
    assert_no_script(response.text)


async def test_search_page_escapes_hostile_post(datasette):
    response = await datasette.client.get(
        "/-/kb/search", params={"q": "drill", "mode": "keyword"}
    )
    assert response.status_code == 200
    assert "Hostile" in response.text
    assert "&lt;script&gt;" in response.text
    assert_no_script(response.text)


# Post page -------------------------------------------------------------------


async def test_post_page_shows_context(datasette):
    response = await datasette.client.get("/-/kb/post/1")
    assert response.status_code == 200
    html = response.text
    assert "How we run multi-AZ failover for Postgres" in html
    assert "<em>tested</em>" in html
    assert 'rel="noopener noreferrer nofollow"' in html
    assert "failover · postgres · drills" in html
    assert "resilience" in html
    assert "Related posts from other companies" in html
    assert 'href="/-/kb/post/3"' in html
    assert 'href="/-/kb/post/2"' in html
    # Post 4 is related too, but comes from the same company.
    assert 'href="/-/kb/post/4"' not in html


async def test_post_page_plain_text_paragraphs(datasette):
    response = await datasette.client.get("/-/kb/post/3")
    assert response.status_code == 200
    assert "<p>Chaos experiments run every Tuesday.</p>" in response.text


async def test_post_page_sanitises_hostile_post(datasette):
    response = await datasette.client.get("/-/kb/post/4")
    assert response.status_code == 200
    html = response.text
    assert "Failover drill notes." in html
    assert "styled text" in html
    assert "<iframe" not in html
    assert "<svg" not in html
    assert "style=" not in html
    assert_no_script(html)


@pytest.mark.parametrize("path", ["/-/kb/post/999", "/-/kb/post/0"])
async def test_post_page_missing(datasette, path):
    response = await datasette.client.get(path)
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["/-/kb/post/abc", "/-/kb/post/1%3Cscript%3E"])
async def test_post_page_bad_id(datasette, path):
    # Datasette first redirects a %-encoded path to its ~-encoded form.
    response = await datasette.client.get(path, follow_redirects=True)
    assert response.status_code == 404


# Digest page -----------------------------------------------------------------


async def test_digest_page_latest_day(datasette):
    response = await datasette.client.get("/-/kb/digest")
    assert response.status_code == 200
    html = response.text
    assert "2026-08-20" in html
    assert "How we run multi-AZ failover for Postgres" in html
    assert "Taming Kafka consumer lag" in html
    assert "Testing database failover" not in html


async def test_digest_page_week(datasette):
    response = await datasette.client.get(
        "/-/kb/digest", params={"date": "2026-08-20", "days": "7"}
    )
    assert response.status_code == 200
    assert "Testing database failover in production" in response.text
    assert "Hostile" in response.text
    assert_no_script(response.text)


async def test_digest_page_empty_day(datasette):
    response = await datasette.client.get("/-/kb/digest", params={"date": "2026-01-01"})
    assert response.status_code == 200
    assert "No posts were published" in response.text


@pytest.mark.parametrize(
    "params",
    [
        {"date": "<script>alert(1)</script>"},
        {"date": "2026-02-30"},
        {"days": "0"},
        {"days": "many"},
        {"days": "1" * 500},
    ],
)
async def test_digest_page_invalid_input(datasette, params):
    response = await datasette.client.get("/-/kb/digest", params=params)
    assert response.status_code == 400
    assert "Invalid" in response.text
    assert "<script>alert(1)" not in response.text


# Saved queries ---------------------------------------------------------------


@pytest.mark.parametrize("query", QUERIES)
async def test_query_missing_params_shows_form(datasette, query):
    response = await datasette.client.get(f"/kb/{query}")
    assert response.status_code == 200
    html = response.text
    for param in QUERY_PARAMS[query]:
        assert f'name="{param}"' in html
    assert 'class="message-error"' not in html
    assert "<h1" in html


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("value", HOSTILE_VALUES)
async def test_query_hostile_params(datasette, query, value):
    params = {param: value for param in QUERY_PARAMS[query]}
    response = await datasette.client.get(f"/kb/{query}.json", params=params)
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True


@pytest.mark.parametrize("query", QUERIES)
async def test_query_html_escapes_params(datasette, query):
    params = {param: "<script>alert(1)</script>" for param in QUERY_PARAMS[query]}
    response = await datasette.client.get(f"/kb/{query}", params=params)
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.text


async def query_rows(datasette, query, **params):
    response = await datasette.client.get(
        f"/kb/{query}.json", params={"_shape": "array", **params}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_search_query_hybrid(datasette):
    rows = await query_rows(datasette, "search", q="failover postgres")
    assert rows[0]["title"] == "How we run multi-AZ failover for Postgres"
    assert rows[0]["rank"] == 1
    assert rows[0]["keyword_rank"] == 1
    assert rows[0]["semantic_rank"] is not None
    assert "<mark>" in rows[0]["snippet"]
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))


async def test_search_query_filters(datasette):
    rows = await query_rows(
        datasette, "search", q="failover", mode="keyword", company="acme"
    )
    assert {row["company"] for row in rows} == {"Acme"}
    rows = await query_rows(
        datasette, "search", q="failover", mode="keyword", since="2026-08-20"
    )
    assert [row["post_id"] for row in rows] == [1]
    rows = await query_rows(
        datasette, "search", q="failover", mode="keyword", until="2026-08-19"
    )
    assert [row["post_id"] for row in rows] == [3, 4]


async def test_search_query_invalid_values_no_rows(datasette):
    for params in ({"mode": "fuzzy"}, {"since": "soon"}, {"until": "2026-02-30"}):
        assert await query_rows(datasette, "search", q="failover", **params) == []


async def test_search_query_highlights_html(datasette):
    response = await datasette.client.get("/kb/search", params={"q": "failover"})
    assert "<mark>failover</mark>" in response.text.lower()


async def test_query_post_ids_link_to_post_page(datasette):
    response = await datasette.client.get("/kb/similar_posts", params={"post_id": "1"})
    assert '<a href="/-/kb/post/3">3</a>' in response.text


async def test_similar_posts_query(datasette):
    rows = await query_rows(datasette, "similar_posts", post_id="1")
    assert [row["post_id"] for row in rows] == [3, 4, 2]
    assert rows[0]["company"] == "Initech"
    assert await query_rows(datasette, "similar_posts", post_id="1abc") == []


async def test_daily_digest_query(datasette):
    rows = await query_rows(datasette, "daily_digest", date="2026-08-20")
    assert [row["post_id"] for row in rows] == [1, 2]
    assert rows[0]["company"] == "Acme"
    assert rows[0]["topic"] == "failover · postgres · drills"
    assert rows[0]["themes"] == "resilience"
    assert rows[0]["summary"].startswith("Acme moved")


async def test_daily_digest_default_latest_day(datasette):
    rows = await query_rows(datasette, "daily_digest")
    assert {row["post_id"] for row in rows} == {1, 2}


async def test_daily_digest_empty_day_placeholder(datasette):
    rows = await query_rows(datasette, "daily_digest", date="2026-01-01")
    assert len(rows) == 1
    assert rows[0]["post_id"] is None
    assert rows[0]["title"] == "No posts on 2026-01-01"


async def test_daily_digest_atom(datasette):
    response = await datasette.client.get(
        "/kb/daily_digest.atom", params={"date": "2026-08-18"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    feed = ET.fromstring(response.content)
    assert feed.findtext(f"{ATOM}title") == "Daily digest"
    entries = feed.findall(f"{ATOM}entry")
    assert len(entries) == 1
    entry = entries[0]
    assert entry.findtext(f"{ATOM}id") == "tag:kb,post:4"
    assert entry.find(f"{ATOM}link").get("href") == "https://acme.example/blog/hostile"
    # The content is HTML in which the feed's markup is escaped text.
    content = entry.findtext(f"{ATOM}content")
    assert "<script" not in content
    assert "<img" not in content
    assert "&lt;img" in content


@pytest.mark.parametrize("date", ["2026-01-01", "not a date", ""])
async def test_daily_digest_atom_always_valid(datasette, date):
    response = await datasette.client.get(
        "/kb/daily_digest.atom", params={"date": date}
    )
    assert response.status_code == 200
    feed = ET.fromstring(response.content)
    assert feed.findall(f"{ATOM}entry")


async def test_weekly_digest_query(datasette):
    rows = await query_rows(datasette, "weekly_digest", week="2026-W34")
    assert [row["post_id"] for row in rows] == [2, 1, 3, 4]
    same = await query_rows(datasette, "weekly_digest", week="2026-08-19")
    assert same == rows
    assert await query_rows(datasette, "weekly_digest") == rows


async def test_weekly_digest_atom(datasette):
    response = await datasette.client.get(
        "/kb/weekly_digest.atom", params={"week": "2026-W33"}
    )
    assert response.status_code == 200
    feed = ET.fromstring(response.content)
    titles = [entry.findtext(f"{ATOM}title") for entry in feed.findall(f"{ATOM}entry")]
    assert titles == ["An observability budget for every team"]


async def test_patterns_across_companies_query(datasette):
    rows = await query_rows(
        datasette, "patterns_across_companies", since="2026-08-01", until="2026-08-31"
    )
    names = {(row["kind"], row["name"]) for row in rows}
    assert ("theme", "resilience") in names
    assert ("topic", "failover · postgres · drills") in names
    resilience = next(row for row in rows if row["name"] == "resilience")
    assert resilience["companies"] == 2
    assert sorted(resilience["company_names"].split(",")) == ["Acme", "Initech"]
    posts = json.loads(resilience["post_list"])
    assert {post["id"] for post in posts} == {1, 3}
    # A topic only one company wrote about in the window is not a pattern.
    narrow = await query_rows(
        datasette, "patterns_across_companies", since="2026-08-20", until="2026-08-20"
    )
    assert narrow == []


async def test_rising_topics_query(datasette):
    rows = await query_rows(datasette, "rising_topics", week="2026-W34")
    assert [row["topic"] for row in rows] == ["failover · postgres · drills"]
    assert rows[0]["this_week"] == 3
    assert rows[0]["last_week"] == 0


async def test_feed_health_query(datasette):
    rows = await query_rows(datasette, "feed_health")
    health = {row["slug"]: row["health"] for row in rows}
    assert health == {
        "hooli-retired": "dead",
        "globex-tech": "failing",
        "umbrella-research": "silent",
    }
    assert [row["health"] for row in rows] == ["dead", "failing", "silent"]


# Tables and facets -----------------------------------------------------------


async def test_posts_view_facets(datasette):
    response = await datasette.client.get("/kb/posts_view.json", params={"_size": 0})
    assert response.status_code == 200
    facets = response.json()["facet_results"]
    assert {"company", "year", "topic", "themes"} <= set(facets)
    years = {item["value"]: item["count"] for item in facets["year"]["results"]}
    assert years == {"2026": 6, "2024": 1}


async def test_internal_tables_hidden(datasette):
    response = await datasette.client.get("/kb.json")
    tables = {table["name"]: table["hidden"] for table in response.json()["tables"]}
    assert tables["kb_migrations"] is True
    assert tables["vector_state"] is True
    assert tables["posts_fts_data"] is True
    assert tables["posts"] is False


async def test_table_descriptions(datasette):
    response = await datasette.client.get("/kb/posts_view")
    assert "Every post with its company" in response.text


@pytest.mark.parametrize("table", ["posts", "posts_view"])
async def test_table_search_redirects_to_ranked_query(datasette, table):
    response = await datasette.client.get(f"/kb/{table}", params={"_search": "drill"})
    assert response.status_code == 302
    assert response.headers["location"] == "/kb/search?q=drill&mode=keyword"


@pytest.mark.parametrize(
    "path,params",
    [
        ("/kb/posts_view", {"_search": "failover", "company": "Acme"}),
        ("/kb/posts_view.json", {"_search": "failover"}),
        ("/kb/feeds", {"_search": "acme"}),
    ],
)
async def test_table_search_with_more_args_stays(datasette, path, params):
    response = await datasette.client.get(path, params=params)
    assert response.status_code == 200


async def test_posts_view_search_filters(datasette):
    response = await datasette.client.get(
        "/kb/posts_view.json",
        params={"_search": "failover", "company": "Initech", "_shape": "array"},
    )
    assert [row["id"] for row in response.json()] == [3]


async def test_every_visible_column_described(datasette):
    tables = load_metadata()["databases"]["kb"]["tables"]
    listing = (await datasette.client.get("/kb.json")).json()
    visible = [table["name"] for table in listing["tables"] if not table["hidden"]]
    visible += [view["name"] for view in listing["views"]]
    for name in visible:
        assert tables.get(name, {}).get("description"), name
        response = await datasette.client.get(
            "/kb.json", params={"sql": f"select * from [{name}] limit 0"}
        )
        described = tables[name].get("columns") or {}
        missing = [c for c in response.json()["columns"] if c not in described]
        assert missing == [], name
