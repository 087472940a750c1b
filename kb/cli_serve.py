"""The ``kb serve`` command: Datasette on the knowledge base, read-only."""

import click

from kb import serve as serving
from kb.cli import db_option, reports_errors


@click.command()
@db_option
@click.option(
    "--host",
    default=serving.DEFAULT_HOST,
    show_default=True,
    help="Address to listen on; 0.0.0.0 exposes the server to the network",
)
@click.option(
    "-p",
    "--port",
    type=click.IntRange(0, 65535),
    default=serving.DEFAULT_PORT,
    show_default=True,
    help="TCP port to listen on",
)
@click.option(
    "-m",
    "--model",
    envvar="KB_MODEL",
    help="Embedding model for semantic search  [default: the bundled all-MiniLM-L6-v2]",
)
@click.option(
    "--sql-time-limit-ms",
    type=click.IntRange(min=1),
    default=serving.DEFAULT_SQL_TIME_LIMIT_MS,
    show_default=True,
    help="Time limit of each SQL query and saved query, search included, in ms",
)
@click.option(
    "--metadata",
    "metadata_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Datasette metadata file  [default: metadata.yml of this project]",
)
@reports_errors
def serve(db_path, host, port, model, sql_time_limit_ms, metadata_path):
    """Serve the knowledge base read-only with Datasette.

    Opens the search page at /-/kb/search, post pages, the daily digest, and
    every table and saved query of metadata.yml. The embedding model loads
    before the first request.

    \b
    Example:
        kb serve
        kb serve -d data/kb.db --port 8080
    """
    serving.serve(
        db_path,
        host=host,
        port=port,
        metadata_path=metadata_path,
        model=model,
        settings={"sql_time_limit_ms": sql_time_limit_ms},
    )
