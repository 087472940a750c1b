"""Datasette plugin for kb: SQL functions, search and post pages, strict headers.

Datasette finds this module through the ``datasette`` entry point, so both
``kb serve`` and a plain ``datasette data/kb.db -m metadata.yml`` load it.
It only acts on databases that carry the kb schema (a ``kb_migrations``
table), so other databases served next to them are left alone.
"""

import functools
import logging

from datasette import hookimpl
from datasette.utils import StartupError

from kb.datasette_plugin import asgi, functions, pages
from kb.datasette_plugin.utils import is_kb_connection
from kb.errors import KbError

logger = logging.getLogger(__name__)


@hookimpl
def prepare_connection(conn, database, datasette):
    if database.startswith("_") or not is_kb_connection(conn):
        return
    # Every connection Datasette opens to a kb database, its write connection
    # included, rejects writes: "attempt to write a readonly database".
    conn.execute("PRAGMA query_only = 1")
    functions.register(conn, datasette)


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
            for name in kb_databases:
                await datasette.databases[name].execute_fn(
                    lambda conn: functions.warm_up(conn, datasette)
                )
        except KbError as error:
            raise StartupError(str(error)) from error
        logger.info(
            "kb plugin ready on %s with model %s",
            ", ".join(kb_databases),
            functions.model_name(datasette),
        )

    return check_and_load


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
