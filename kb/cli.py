"""The kb command line: thin click commands over the library modules."""

import functools
import logging

import click

from kb import config
from kb.db import SQLITE_ERRORS, database_error
from kb.errors import KbError


def db_option(function):
    """Add the shared ``-d/--db`` option, which falls back to $KB_DB."""
    return click.option(
        "-d",
        "--db",
        "db_path",
        type=click.Path(dir_okay=False),
        envvar="KB_DB",
        default=str(config.DEFAULT_DB),
        show_default=True,
        help="SQLite database file",
    )(function)


def reports_errors(function):
    """Turn a KbError, or a SQLite error the library let through, into exit 1."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except KbError as error:
            raise click.ClickException(str(error)) from error
        except SQLITE_ERRORS as error:
            # A write that fails deep in a library step, such as embedding on
            # a full disk, still gets a message that names the file.
            path = config.db_path(kwargs.get("db_path"))
            raise click.ClickException(str(database_error(path, error))) from error

    return wrapper


@click.group()
@click.version_option(package_name="kb")
@click.option("-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug")
def cli(verbose):
    """A searchable knowledge base over engineering blog feeds.

    \b
    Example:
        kb ingest --from ../corpus/feeds
        kb search "multi-AZ failover"
        kb serve
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


from kb.cli_feeds import feeds  # noqa: E402

cli.add_command(feeds)

from kb.cli_digest import digest  # noqa: E402

cli.add_command(digest)

from kb.cli_ingest import ingest, status  # noqa: E402

cli.add_command(ingest)
cli.add_command(status)

from kb.cli_search import embed, search  # noqa: E402

cli.add_command(embed)
cli.add_command(search)

from kb.cli_serve import serve  # noqa: E402

cli.add_command(serve)

from kb.cli_topics import topics  # noqa: E402

cli.add_command(topics)
