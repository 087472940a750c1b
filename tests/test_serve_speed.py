"""What kb serve does to keep pages fast on a large database.

Settings, indexes, query plans and model threads are checked on a small kb
database; the timings themselves are in benchmarks/serve_speed.py.
"""

import time

import pytest
import yaml
from datasette.utils import StartupError
from serve_fixtures import MODEL, build_kb

from kb.db import open_db
from kb.serve import build_datasette, load_metadata

pytestmark = pytest.mark.anyio

# Saved queries and the parameters that make them do the most work: empty
# dates mean "the latest day, week or 30 days".
QUERY_PARAMS = {
    "similar_posts": {"post_id": "1"},
    "daily_digest": {"date": ""},
    "weekly_digest": {"week": ""},
    "patterns_across_companies": {"since": "", "until": ""},
    "rising_topics": {"week": ""},
    "feed_health": {},
}
OLD_POSTS = 2000


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-speed") / "kb.db"
    build_kb(path)
    return path


@pytest.fixture(scope="module")
def datasette(kb_path):
    return build_datasette(kb_path, model=MODEL)


def index_names(path) -> set[str]:
    db = open_db(path, create=False)
    try:
        rows = db.execute("select name from sqlite_master where type = 'index'")
        return {row[0] for row in rows}
    finally:
        db.close()


def test_suggested_facets_off_by_default(datasette):
    assert datasette.setting("suggest_facets") is False
    assert datasette.setting("sql_time_limit_ms") == 1000


def test_caller_settings_win(kb_path):
    datasette = build_datasette(kb_path, model=MODEL, settings={"suggest_facets": True})
    assert datasette.setting("suggest_facets") is True


async def test_posts_view_runs_only_default_facets(datasette):
    response = await datasette.client.get(
        "/kb/posts_view.json", params={"_size": 1, "_trace": 1}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["suggested_facets"] == []
    assert set(body["facet_results"]) == {"company", "year", "topic", "themes"}


def test_migrations_create_the_serving_index(kb_path):
    assert "posts_feed_published" in index_names(kb_path)


@pytest.fixture(scope="module")
def padded_path(tmp_path_factory):
    """The kb database plus OLD_POSTS posts published long before the others."""
    path = tmp_path_factory.mktemp("serve-padded") / "kb.db"
    build_kb(path)
    db = open_db(path)
    with db.conn:
        db.execute(
            "with recursive n(i) as (select 1 union all select i + 1 from n "
            f"where i < {OLD_POSTS}) "
            "insert into posts (feed_id, url, fingerprint, title, published, "
            "first_seen, content_hash) "
            "select (select min(id) from feeds), 'https://old.example/' || i, "
            "'old' || i, 'Old post ' || i, "
            "strftime('%Y-%m-%dT%H:%M:%S+00:00', '2015-01-01', '+' || i || ' hours'), "
            "'2015-01-01T00:00:00+00:00', 'old' || i from n"
        )
    db.close()
    return path


def count_steps(path, sql: str, params: dict) -> int:
    """Run ``sql`` on the file at ``path`` and return its VM steps, to 100 steps."""
    from kb.datasette_plugin import functions

    db = open_db(path, create=False)
    db.conn.create_function("kb_week_start", 1, functions.week_start)
    db.conn.create_function("kb_html_escape", 1, functions.html_escape)
    steps = 0

    def count():
        nonlocal steps
        steps += 1

    db.conn.set_progress_handler(count, 100)
    try:
        db.execute(sql, params).fetchall()
    finally:
        db.close()
    return steps * 100


@pytest.mark.parametrize("query", sorted(set(QUERY_PARAMS) - {"feed_health"}))
def test_saved_query_cost_ignores_old_posts(kb_path, padded_path, query):
    # These queries read the latest day, week or month, or one post's
    # neighbours, through indexes, so posts from years before cost nothing.
    # A scan of every post, such as max(date(published)), takes at least one
    # step per post.
    sql = load_metadata()["databases"]["kb"]["queries"][query]["sql"]
    params = QUERY_PARAMS[query]
    small = count_steps(kb_path, sql, params)
    padded = count_steps(padded_path, sql, params)
    assert padded - small < OLD_POSTS, (small, padded)


async def test_feed_health_reads_the_covering_index(datasette):
    sql = load_metadata()["databases"]["kb"]["queries"]["feed_health"]["sql"]
    plan = await datasette.get_database("kb").execute("explain query plan " + sql)
    details = [row["detail"] for row in plan]
    assert "SCAN posts USING COVERING INDEX posts_feed_published" in details


def write_metadata(tmp_path, **plugin_settings):
    metadata = load_metadata()
    metadata["plugins"]["kb"].update(plugin_settings)
    path = tmp_path / "metadata.yml"
    path.write_text(yaml.safe_dump(metadata), encoding="utf-8")
    return path


@pytest.mark.parametrize("threads", [0, -1, "two", True])
async def test_invalid_model_threads_stops_startup(kb_path, tmp_path, threads):
    metadata_path = write_metadata(tmp_path, model_threads=threads)
    datasette = build_datasette(kb_path, metadata_path=metadata_path, model=MODEL)
    with pytest.raises(StartupError, match="model_threads"):
        await datasette.invoke_startup()


async def test_model_threads_set_on_torch(kb_path, tmp_path):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    metadata_path = write_metadata(tmp_path, model_threads=1)
    datasette = build_datasette(kb_path, metadata_path=metadata_path, model=MODEL)
    try:
        torch.set_num_threads(2)
        await datasette.invoke_startup()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", [0, -2, "four", False])
async def test_invalid_search_concurrency_stops_startup(kb_path, tmp_path, value):
    metadata_path = write_metadata(tmp_path, search_concurrency=value)
    datasette = build_datasette(kb_path, metadata_path=metadata_path, model=MODEL)
    with pytest.raises(StartupError, match="search_concurrency"):
        await datasette.invoke_startup()


async def start_with_one_slot(kb_path, tmp_path):
    """Start a Datasette whose plugin runs one search at a time; return its slots."""
    from kb.datasette_plugin import functions

    metadata_path = write_metadata(tmp_path, search_concurrency=1)
    datasette = build_datasette(kb_path, metadata_path=metadata_path, model=MODEL)
    await datasette.invoke_startup()
    return datasette, functions.search_slots(datasette)


async def assert_search_frees_slot(datasette, slots):
    response = await datasette.client.get(
        "/kb/search.json", params={"q": "failover", "_shape": "array"}
    )
    assert response.status_code == 200
    assert response.json()
    assert slots.acquire(blocking=False)
    slots.release()


async def test_search_concurrency_bounds_searches(kb_path, tmp_path):
    # With one slot, a second acquire fails while the slot is taken. A search
    # afterwards succeeds and gives the slot back.
    datasette, slots = await start_with_one_slot(kb_path, tmp_path)
    assert slots.acquire(blocking=False)
    try:
        assert not slots.acquire(blocking=False)
    finally:
        slots.release()
    await assert_search_frees_slot(datasette, slots)


async def test_search_waits_for_a_slot(kb_path, tmp_path):
    import threading

    datasette, slots = await start_with_one_slot(kb_path, tmp_path)
    slots.acquire()
    threading.Timer(0.5, slots.release).start()
    started = time.perf_counter()
    # The search runs only after the slot comes free, and inside the time limit.
    await assert_search_frees_slot(datasette, slots)
    assert time.perf_counter() - started >= 0.5


def test_search_concurrency_defaults_to_cpus(datasette):
    from kb.datasette_plugin import functions

    assert functions.search_concurrency(datasette) == functions.available_cpus()


def test_migration_keeps_an_index_kb_serve_made(tmp_path):
    path = tmp_path / "kb.db"
    build_kb(path)
    db = open_db(path)
    with db.conn:
        db.execute("DROP INDEX posts_feed_published")
        db.execute("DELETE FROM kb_migrations WHERE id = 5")
        db.execute("CREATE INDEX posts_feed_published ON posts (feed_id, published)")
    db.close()
    open_db(path).close()
    assert "posts_feed_published" in index_names(path)
