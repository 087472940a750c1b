"""SQL functions the kb plugin registers on every connection to a kb database.

SQLite functions cannot return tables, so ``kb_search`` returns its ranked
results as a JSON array that a query unpacks with ``json_each``::

    select posts.title, json_extract(r.value, '$.snippet')
    from json_each(kb_search('multi-AZ failover')) as r
    join posts on posts.id = json_extract(r.value, '$.post_id')
    order by r.key
"""

import datetime as dt
import json
import logging
import os
import re
import sys
import threading
import weakref

import markupsafe
import numpy as np
from datasette.utils import sqlite_timelimit

from kb import config
from kb.datasette_plugin.connections import search_db
from kb.datasette_plugin.utils import PLUGIN_NAME
from kb.errors import ConfigError, KbError

logger = logging.getLogger(__name__)

SEARCH_MODES = ("hybrid", "keyword", "semantic")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Longer queries are cut: they add nothing to a search and cost embedding time.
MAX_QUERY_CHARS = 500
DEFAULT_MODEL_THREADS = 1

# Per Datasette instance: the semaphore of search_slots().
_search_slots: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register(conn, datasette, path: str) -> None:
    """Register kb's SQL functions on a connection to the kb database at ``path``."""
    conn.create_function("kb_fts_query", 1, fts_query, deterministic=True)
    conn.create_function("kb_html_escape", 1, html_escape, deterministic=True)
    conn.create_function("kb_week_start", 1, week_start, deterministic=True)
    conn.create_function("kb_embed", 1, lambda text: embed_blob(datasette, text))
    conn.create_function(
        "kb_search", -1, lambda *args: search_json(path, datasette, *args)
    )


def model_name(datasette) -> str:
    """Return the embedding model set for the plugin, else kb's default."""
    plugin_config = datasette.plugin_config(PLUGIN_NAME) or {}
    return config.model_name(plugin_config.get("model"))


def load_embedder(datasette):
    """Load the configured embedding model (once per process) and return it.

    Raises ModelError when the model cannot be loaded.
    """
    from kb.embed import get_embedder

    return get_embedder(model_name(datasette))


def limit_model_threads(datasette) -> None:
    """Set how many threads torch gives each query embedding (default 1).

    Datasette already runs searches on several SQL threads at once. With
    torch's default of one thread per core on top of that, the threads spin
    against each other, and one query embedding on a busy machine takes many
    times as long. The plugin setting ``model_threads`` changes the count,
    and it applies to the whole process.
    """
    plugin_config = datasette.plugin_config(PLUGIN_NAME) or {}
    threads = plugin_config.get("model_threads")
    if threads is None:
        threads = DEFAULT_MODEL_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(
            f"Invalid kb plugin setting model_threads={threads!r}: it must be a "
            "whole number of at least 1."
        )
    load_embedder(datasette).query_threads = threads
    if "torch" not in sys.modules:
        return  # the model in use does not run on torch
    sys.modules["torch"].set_num_threads(threads)
    logger.info("query embeddings use %d torch thread(s)", threads)


def search_slots(datasette) -> threading.Semaphore:
    """Return the semaphore that bounds how many searches run at once.

    Datasette runs queries on several SQL threads (3 by default), and a search
    is CPU work: query embedding, a vector scan and bm25. More searches than
    cores at once only share the cores, so each takes longer and more of them
    run past the SQL time limit. The plugin setting ``search_concurrency``
    sets the bound; the default is the number of CPUs the process may use. A
    search waiting for a slot counts against the SQL time limit of a saved
    query.
    """
    slots = _search_slots.get(datasette)
    if slots is None:
        slots = threading.Semaphore(search_concurrency(datasette))
        slots = _search_slots.setdefault(datasette, slots)
    return slots


def search_concurrency(datasette) -> int:
    """Return the plugin's ``search_concurrency`` setting, else the CPU count.

    Raises ConfigError when the setting is not a whole number of at least 1.
    """
    plugin_config = datasette.plugin_config(PLUGIN_NAME) or {}
    value = plugin_config.get("search_concurrency")
    if value is None:
        return available_cpus()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"Invalid kb plugin setting search_concurrency={value!r}: it must be "
            "a whole number of at least 1."
        )
    return value


def available_cpus() -> int:
    """Return how many CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def warm_up(path: str, datasette) -> None:
    """Load the model and the stored vectors, so the first search is fast.

    Raises ModelError when the stored vectors come from another model.
    """
    from kb import vectors
    from kb.search import search

    db = search_db(path)
    embedder = load_embedder(datasette)
    vectors.check_model(db, embedder.name)
    if vectors.stored_model(db)[0] is None:
        logger.info("no post vectors yet: semantic search returns nothing")
        return
    search(db, "warm up", mode="semantic", limit=1, model_name=model_name(datasette))


def fts_query(text: str | None) -> str:
    """Return a safe FTS5 query for any user text, or '' when it has no terms."""
    from kb.query import fts_query as build_fts_query

    return build_fts_query(str(text or "")[:MAX_QUERY_CHARS])


def html_escape(text: str | None) -> str | None:
    """Return ``text`` with HTML special characters escaped, NULL for NULL."""
    if text is None:
        return None
    return str(markupsafe.escape(str(text)))


def week_start(text: str | None) -> str | None:
    """Return the Monday (YYYY-MM-DD) of the ISO week that ``text`` names.

    Accepts a date such as ``2025-10-15`` or an ISO week such as ``2025-W42``.
    Anything else gives NULL, so a query with a bad value finds no rows.
    """
    value = str(text or "").strip()
    try:
        if re.fullmatch(r"\d{4}-W\d{2}", value, flags=re.IGNORECASE):
            year, week = int(value[:4]), int(value[-2:])
            day = dt.date.fromisocalendar(year, week, 1)
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = dt.date.fromisoformat(value)
            day -= dt.timedelta(days=day.weekday())
        else:
            return None
    except ValueError:
        return None
    return day.isoformat()


def embed_blob(datasette, text: str | None) -> bytes | None:
    """Return the query embedding of ``text`` as a float32 blob of shape (dim,)."""
    if text is None:
        return None
    vector = load_embedder(datasette).encode_query(str(text)[:MAX_QUERY_CHARS])
    return np.asarray(vector, dtype="<f4").tobytes()


def search_json(path: str, datasette, *args) -> str:
    """Run a kb search and return its ranked results as a JSON array.

    SQL arguments, all optional after the first, with '' meaning "not set":
    ``kb_search(q, mode, company, since, until, limit)``. Invalid values (an
    unknown mode, a date that does not parse) give an empty array, so a saved
    query shows its form and no rows instead of an error page. The search gets
    Datasette's SQL time limit of its own.
    """
    names = ("q", "mode", "company", "since", "until", "limit")
    texts = [str(arg).strip() if arg else "" for arg in args[: len(names)]]
    # Trailing arguments left out of the call are "not set".
    values = dict(zip(names, texts, strict=False))
    request = parse_search_request(values)
    if request is None:
        return "[]"
    time_limit_ms = datasette.setting("sql_time_limit_ms")
    try:
        with sqlite_timelimit(search_db(path).conn, time_limit_ms):
            results = run_search(path, datasette, **request)
    except KbError as error:
        logger.info("kb_search returned nothing for %r: %s", values.get("q"), error)
        return "[]"
    return json.dumps(results, ensure_ascii=False)


def parse_search_request(values: dict) -> dict | None:
    """Turn text arguments into search arguments, or None when one is invalid."""
    query = values.get("q", "")[:MAX_QUERY_CHARS]
    mode = (values.get("mode") or "hybrid").lower()
    if not query or mode not in SEARCH_MODES:
        return None
    try:
        since = parse_day(values.get("since"))
        until = parse_day(values.get("until"))
        limit = int(values.get("limit") or DEFAULT_LIMIT)
    except ValueError:
        return None
    return {
        "query": query,
        "mode": mode,
        "company": values.get("company") or None,
        "since": since,
        "until": until,
        "limit": max(1, min(limit, MAX_LIMIT)),
    }


def parse_day(text: str | None) -> dt.date | None:
    """Return the date of YYYY-MM-DD text, None for empty text.

    Raises ValueError for any other text.
    """
    if not text:
        return None
    return dt.date.fromisoformat(text)


def run_search(
    path: str, datasette, *, query, mode, company, since, until, limit, topic=None
) -> list[dict]:
    """Search the kb database at ``path`` and return plain dicts ready for JSON.

    Raises SearchError or ModelError as kb.search.search does.
    """
    from kb.search import search

    with search_slots(datasette):
        results = search(
            search_db(path),
            query,
            mode=mode,
            limit=limit,
            source=company,
            since=since,
            until=until,
            topic=topic,
            model_name=model_name(datasette),
        )
    return [
        {
            "post_id": result.post_id,
            "score": result.score,
            "keyword_rank": result.keyword_rank,
            "semantic_rank": result.semantic_rank,
            "snippet": result.snippet,
        }
        for result in results
    ]
