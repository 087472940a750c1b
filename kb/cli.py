"""The kb command line: thin click commands over the library modules."""

import functools
import importlib
import logging

import click

from kb import config
from kb.db import SQLITE_ERRORS, database_error
from kb.errors import KbError

# The largest integer SQLite stores. Count options stop here, so a larger
# value is a usage error instead of an OverflowError inside a query.
SQLITE_MAX_INTEGER = 2**63 - 1


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


# Each command's module is imported only when that command runs, so a nightly
# ``kb ingest`` does not pay for importing Datasette, scikit-learn or torch.
COMMANDS = {
    "ingest": "kb.cli_ingest:ingest",
    "status": "kb.cli_ingest:status",
    "feeds": "kb.cli_feeds:feeds",
    "embed": "kb.cli_search:embed",
    "search": "kb.cli_search:search",
    "topics": "kb.cli_topics:topics",
    "digest": "kb.cli_digest:digest",
    "serve": "kb.cli_serve:serve",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module on first use."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx, cmd_name):
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module_name, attribute = COMMANDS[cmd_name].split(":")
            module = importlib.import_module(module_name)
            self.add_command(getattr(module, attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.version_option(package_name="kb", prog_name="kb")
@click.option(
    "-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug"
)
def cli(verbose):
    """A searchable knowledge base over engineering blog feeds.

    \b
    Example:
        kb ingest --from ../shared/corpus/feeds
        kb search "multi-AZ failover"
        kb serve
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
