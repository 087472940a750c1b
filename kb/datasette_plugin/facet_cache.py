"""A Datasette database that reuses facet and row-count results until the file changes.

On posts_view each default facet and the row count read every post, about
0.1 to 0.4 s each at 100,000 posts, and the result only changes when an
ingest writes to the file. ``kb serve`` serves the knowledge base through
:class:`FacetCacheDatabase`, so a table page repeats that work once per
change of the file instead of once per request.
"""

import logging
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

from datasette.database import Database, QueryInterrupted

logger = logging.getLogger(__name__)

MAX_CACHED_RESULTS = 256
# A facet that ran out of time is not run again for this long, unless the file
# changes first. Datasette then lists it as timed out, as it does for a facet
# that runs out of time, and a busy server does not pay for it on every page.
TIMED_OUT_RETRY_S = 60
# The SQL that Datasette 0.65 builds for a table page's row count and for
# its column, date and array facets (datasette/views/table.py, facets.py).
# Other SQL, such as a saved query or a user's own query, is never cached.
CACHEABLE_SQL = re.compile(
    r"^(select count\(\*\) from "
    r"|select .+? as value, count\(\*\) as count from \("
    r"|with inner as \(.*deduped_array_items)",
    re.DOTALL,
)
# A result that depends on the clock or on chance must run every time.
UNCACHEABLE_WORDS = ("random", "'now'", '"now"', "current_")


def is_cacheable(sql: str) -> bool:
    """Return True for the row-count and facet SQL of a Datasette table page."""
    normalized = " ".join(sql.split()).lower()
    if any(word in normalized for word in UNCACHEABLE_WORDS):
        return False
    return CACHEABLE_SQL.match(normalized) is not None


def file_version(path: str) -> tuple:
    """Return the modification time and size of a database file and its WAL.

    Every commit in WAL mode writes to the ``-wal`` file and every checkpoint
    to the database file, so the tuple changes with each write.
    """
    # NOTE: two commits within one tick of the file system's clock that leave
    # the -wal file the same size give the same version. That takes a WAL
    # reset and a rewrite to the same length within one tick.
    version = []
    for suffix in ("", "-wal"):
        try:
            stat = os.stat(path + suffix)
        except FileNotFoundError:
            version.append(None)
            continue
        version.append((stat.st_mtime_ns, stat.st_size))
    return tuple(version)


def params_key(params) -> tuple | None:
    """Return hashable query parameters, or None when they cannot be hashed."""
    if params is None:
        return ()
    items = sorted(params.items()) if isinstance(params, dict) else list(params)
    key = tuple(items)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class FacetCacheDatabase(Database):
    """A file database whose facet and row-count results are kept per file version.

    Results are kept until the database file or its WAL changes, up to
    MAX_CACHED_RESULTS of them, least recently used first out. A query that
    runs past its time limit raises QueryInterrupted, and the same query
    raises it again without running for TIMED_OUT_RETRY_S seconds.
    """

    def __init__(self, ds, path: str, *, max_results: int = MAX_CACHED_RESULTS):
        super().__init__(ds, path=path, is_mutable=True)
        self.max_results = max_results
        self.hits = 0
        self.misses = 0
        self._results: OrderedDict = OrderedDict()
        self._version = None

    async def execute(
        self,
        sql,
        params=None,
        truncate=False,
        custom_time_limit=None,
        page_size=None,
        log_sql_errors=True,
    ):
        arguments = {
            "params": params,
            "truncate": truncate,
            "custom_time_limit": custom_time_limit,
            "page_size": page_size,
            "log_sql_errors": log_sql_errors,
        }
        frozen_params = params_key(params)
        if frozen_params is None or not is_cacheable(sql):
            return await super().execute(sql, **arguments)
        version = file_version(self.path)
        if version != self._version:
            self._results.clear()
            self._version = version
        key = (sql, frozen_params, truncate, page_size)
        cached = self._results.get(key)
        if cached is not None and not is_expired(cached):
            self._results.move_to_end(key)
            self.hits += 1
            if isinstance(cached, TimedOut):
                raise cached.error
            return cached
        self.misses += 1
        try:
            results = await super().execute(sql, **arguments)
        except QueryInterrupted as error:
            self.keep(key, version, TimedOut(error, time.monotonic()))
            raise
        self.keep(key, version, results)
        return results

    def keep(self, key: tuple, version: tuple, value) -> None:
        """Store ``value`` under ``key`` when the file is still at ``version``."""
        # A write during the query may or may not be in its result, so the
        # result is kept only when the file did not change meanwhile.
        if file_version(self.path) != version or version != self._version:
            return
        self._results[key] = value
        self._results.move_to_end(key)
        if len(self._results) > self.max_results:
            self._results.popitem(last=False)


@dataclass
class TimedOut:
    """A query that ran out of time, and when (time.monotonic)."""

    error: QueryInterrupted
    at: float


def is_expired(cached) -> bool:
    """Return True for a timed-out query old enough to be tried again."""
    if not isinstance(cached, TimedOut):
        return False
    return time.monotonic() - cached.at > TIMED_OUT_RETRY_S


def use_facet_cache(datasette, name: str) -> FacetCacheDatabase:
    """Serve the file database ``name`` of ``datasette`` through a facet cache."""
    served = datasette.databases[name]
    if isinstance(served, FacetCacheDatabase):
        return served
    if served.is_memory or not served.is_mutable or served.path is None:
        raise ValueError(
            f"Database {name!r} is not a mutable file, so it cannot use the facet "
            "cache."
        )
    cached = FacetCacheDatabase(datasette, served.path)
    datasette.remove_database(name)
    datasette.add_database(cached, name=name, route=served.route)
    logger.debug("facet cache on database %s", name)
    return cached
