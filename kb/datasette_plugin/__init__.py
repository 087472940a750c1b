"""Datasette plugin for kb: SQL functions, search and post pages, strict headers.

Datasette finds this module through the ``datasette`` entry point, so both
``kb serve`` and a plain ``datasette data/kb.db -m metadata.yml`` load it.
It only acts on databases that carry the kb schema (a ``kb_migrations``
table), so other databases served next to them are left alone. Importing it
turns off Datasette's rich tracebacks for the whole process (see below).
"""

import asyncio
import functools
import logging
import threading

from datasette import hookimpl
from datasette.utils import StartupError

from kb import vectors
from kb.datasette_plugin import asgi, functions, pages
from kb.datasette_plugin.utils import is_kb_connection
from kb.errors import KbError

logger = logging.getLogger(__name__)

WARM_UP_TIMEOUT_S = 60


@hookimpl
def prepare_connection(conn, database, datasette):
    if database.startswith("_") or not is_kb_connection(conn):
        return
    # Every connection Datasette opens to a kb database, its write connection
    # included, rejects writes: "attempt to write a readonly database".
    conn.execute("PRAGMA query_only = 1")
    # The vec0 table of kb.vectors is unreadable without the extension, and
    # Datasette reads every table of the file for its pages.
    vectors.load_sqlite_vec(conn)
    functions.register(conn, datasette, datasette.databases[database].path)


@hookimpl
def startup(datasette):
    async def check_and_load():
        kb_databases = await pages.kb_database_names(datasette)
        if not kb_databases:
            return
        for name in kb_databases:
            check_read_only_queries(datasette, name)
        # Load the model and the vectors now, so the first search does not
        # wait for them, and check the model against the stored vectors.
        try:
            functions.load_embedder(datasette)
            functions.limit_model_threads(datasette)
            functions.search_slots(datasette)
            for name in kb_databases:
                await warm_up_every_thread(datasette, datasette.databases[name])
        except KbError as error:
            raise StartupError(str(error)) from error
        logger.info(
            "kb plugin ready on %s with model %s",
            ", ".join(kb_databases),
            functions.model_name(datasette),
        )

    return check_and_load


async def warm_up_every_thread(datasette, database) -> None:
    """Run a first search on each of Datasette's SQL threads.

    The first search loads the shared vectors; the others open each thread's
    search connection and run the model once in that thread, which is slow
    the first time. Raises ModelError when the stored vectors come from
    another model.
    """
    await database.execute_fn(lambda conn: functions.warm_up(database.path, datasette))
    threads = datasette.setting("num_sql_threads")
    if threads < 2:
        return
    # Each task holds its thread at the barrier until all have started, so
    # the tasks run on as many different threads.
    barrier = threading.Barrier(threads, timeout=WARM_UP_TIMEOUT_S)

    def warm_up_thread(conn):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            logger.warning("warm-up: not every SQL thread started in time")
        functions.warm_up(database.path, datasette)

    await asyncio.gather(*(database.execute_fn(warm_up_thread) for _ in range(threads)))


def check_read_only_queries(datasette, database: str) -> None:
    """Raise StartupError when a canned query on a kb database could write."""
    queries = (datasette.metadata(database=database) or {}).get("queries") or {}
    writable = [
        name
        for name, query in queries.items()
        if isinstance(query, dict) and query.get("write")
    ]
    if writable:
        raise StartupError(
            f"Canned queries {', '.join(sorted(writable))} on database "
            f"{database!r} are marked write: true, but kb serves read-only.\n"
            "Remove 'write: true' from them in the metadata file."
        )


@hookimpl
def register_routes(datasette):
    return pages.ROUTES


@hookimpl
def render_cell(value, column, table, database, datasette):
    if table is not None or column not in ("snippet", "post_id"):
        return None
    return pages.render_query_cell(datasette, database, column, value)


@hookimpl
def asgi_wrapper(datasette):
    return functools.partial(asgi.KbMiddleware, datasette)


@hookimpl
def menu_links(datasette, actor, request):
    return [
        {"href": datasette.urls.path("/-/kb/search"), "label": "Search posts"},
        {"href": datasette.urls.path("/-/kb/digest"), "label": "Daily digest"},
    ]


# Datasette 0.65.5's default handle_exception prints every exception, 404s
# included, with rich's print_exception(show_locals=True) when rich can be
# imported. That costs about half a second of CPU per 404, and a path that
# matches no route gets a 500, because the call happens outside an except
# block. Without rich it prints a plain traceback for 500s only.
# This import stays below every hook, because importing
# datasette.handle_exception loads Datasette's plugins, this module included.
# Higher up, a process that imports this module first would register it
# before its hooks exist, with none of them.
import datasette.handle_exception as datasette_handle_exception  # noqa: E402

datasette_handle_exception.rich = None
