"""kb serve's facet cache: table-page facets and counts kept until the file changes."""

import time

import pytest
from datasette.app import Datasette
from datasette.database import QueryInterrupted
from serve_fixtures import MODEL, build_kb

from kb.datasette_plugin import facet_cache
from kb.datasette_plugin.facet_cache import (
    FacetCacheDatabase,
    file_version,
    is_cacheable,
    use_facet_cache,
)
from kb.db import open_db
from kb.serve import build_datasette

pytestmark = pytest.mark.anyio

# SQL as Datasette 0.65 builds it for a table page, and SQL it must never cache.
CACHEABLE = [
    "select count(*) from posts_view where company = :p0",
    """select company as value, count(*) as count from (
        select id, company from posts_view
    ) where company is not null group by company order by count desc, value limit 31""",
    """select date(published) as value, count(*) as count from (
        select * from posts_view) where date(published) is not null group by 1""",
    """with inner as (select id, themes from posts_view),
    deduped_array_items as (select distinct j.value, inner.* from
    json_each([inner].themes) j join inner)
    select value as value, count(*) as count from deduped_array_items""",
]
NOT_CACHEABLE = [
    "select * from posts_view order by published desc limit 21",
    "select title from json_each(kb_search(:q)) join posts_view",
    "select count(*) from posts where random() % 2 = 0",
    "select count(*) from posts where published > date('now', '-1 day')",
    "select company as value, count(*) as count from (select * from posts_view "
    "where published > current_timestamp) group by company",
    "select 1",
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def kb_path(tmp_path):
    path = tmp_path / "kb.db"
    build_kb(path)
    return path


@pytest.mark.parametrize("sql", CACHEABLE)
def test_table_page_sql_cacheable(sql):
    assert is_cacheable(sql)


@pytest.mark.parametrize("sql", NOT_CACHEABLE)
def test_other_sql_not_cacheable(sql):
    assert not is_cacheable(sql)


def test_kb_serve_uses_cache(kb_path):
    datasette = build_datasette(kb_path, model=MODEL)
    assert isinstance(datasette.get_database("kb"), FacetCacheDatabase)
    assert datasette.get_database("kb").route == "kb"


async def test_second_page_reuses_facets(kb_path):
    datasette = build_datasette(kb_path, model=MODEL)
    db = datasette.get_database("kb")
    first = await datasette.client.get("/kb/posts_view.json", params={"_size": 1})
    misses = db.misses
    second = await datasette.client.get("/kb/posts_view.json", params={"_size": 1})
    assert first.status_code == 200
    assert second.status_code == 200
    # The row count and the four default facets.
    assert misses >= 5
    assert db.misses == misses
    assert db.hits >= 5
    assert second.json()["facet_results"] == first.json()["facet_results"]
    assert second.json()["filtered_table_rows_count"] == 7


async def test_write_to_file_refreshes_facets(kb_path):
    datasette = build_datasette(kb_path, model=MODEL)
    before = await datasette.client.get("/kb/posts_view.json", params={"_size": 1})
    years = before.json()["facet_results"]["year"]["results"]
    assert {item["value"]: item["count"] for item in years} == {"2026": 6, "2024": 1}
    version = file_version(str(kb_path))

    writer = open_db(kb_path)
    with writer.conn:
        writer.execute(
            "insert into posts (feed_id, url, fingerprint, title, published, "
            "first_seen, content_hash) select min(id), 'https://new.example/1', "
            "'new1', 'A new post', '2024-05-01T00:00:00+00:00', "
            "'2024-05-01T00:00:00+00:00', 'new1' from feeds"
        )
    writer.close()
    assert file_version(str(kb_path)) != version

    after = await datasette.client.get("/kb/posts_view.json", params={"_size": 1})
    years = after.json()["facet_results"]["year"]["results"]
    assert {item["value"]: item["count"] for item in years} == {"2026": 6, "2024": 2}
    assert after.json()["filtered_table_rows_count"] == 8


async def test_filters_cached_apart(kb_path):
    datasette = build_datasette(kb_path, model=MODEL)
    everything = await datasette.client.get("/kb/posts_view.json", params={"_size": 1})
    filtered = await datasette.client.get(
        "/kb/posts_view.json", params={"_size": 1, "year": "2024"}
    )
    assert everything.json()["filtered_table_rows_count"] == 7
    assert filtered.json()["filtered_table_rows_count"] == 1


async def test_cache_keeps_at_most_max_results(kb_path):
    datasette = build_datasette(kb_path, model=MODEL)
    db = datasette.get_database("kb")
    db.max_results = 2
    for year in ("2024", "2025", "2026"):
        sql = "select count(*) from posts_view where year = :year"
        await db.execute(sql, {"year": year})
    assert len(db._results) == 2


def test_memory_database_rejected():
    datasette = Datasette(memory=True)
    with pytest.raises(ValueError, match="_memory"):
        use_facet_cache(datasette, "_memory")


SLOW_COUNT = (
    "select count(*) from (with recursive n(i) as (select 1 union all "
    "select i + 1 from n where i < 100000000) select i from n)"
)


async def test_timed_out_query_not_rerun(kb_path):
    datasette = build_datasette(kb_path, model=MODEL)
    db = datasette.get_database("kb")
    # The first connection creates the -wal file, a change of file version.
    await db.execute("select 1")
    with pytest.raises(QueryInterrupted):
        await db.execute(SLOW_COUNT, custom_time_limit=20)
    assert db.misses == 1
    started = time.perf_counter()
    with pytest.raises(QueryInterrupted):
        await db.execute(SLOW_COUNT, custom_time_limit=20)
    assert db.misses == 1
    assert db.hits == 1
    assert time.perf_counter() - started < 0.02


async def test_timed_out_query_retried_later(kb_path, monkeypatch):
    datasette = build_datasette(kb_path, model=MODEL)
    db = datasette.get_database("kb")
    monkeypatch.setattr(facet_cache, "TIMED_OUT_RETRY_S", 0)
    await db.execute("select 1")
    for _ in range(2):
        with pytest.raises(QueryInterrupted):
            await db.execute(SLOW_COUNT, custom_time_limit=20)
    assert db.misses == 2
    assert db.hits == 0
