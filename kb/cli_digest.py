"""The ``kb digest`` command: the daily digest "Engineering @ Scale"."""

from datetime import datetime, timezone

import click

from kb.cli import SQLITE_MAX_INTEGER, db_option, reports_errors
from kb.db import open_db
from kb.digest import MAX_DAYS, MAX_POSTS, digest_text, parse_date
from kb.errors import ConfigError

FORMATS = ["markdown", "html", "json", "atom"]


def parse_date_option(context, parameter, value):
    """Parse --date as YYYY-MM-DD, defaulting to today in UTC."""
    if value is None:
        return datetime.now(timezone.utc).date()
    try:
        return parse_date(value)
    except ConfigError as error:
        raise click.BadParameter(str(error)) from error


@click.command()
@db_option
@click.option(
    "--date",
    "end_date",
    metavar="YYYY-MM-DD",
    callback=parse_date_option,
    help="Last day of the window, in UTC  [default: today]",
)
@click.option(
    "--days",
    type=click.IntRange(1, MAX_DAYS),
    default=1,
    show_default=True,
    help="Length of the window in days, ending on --date",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="markdown",
    show_default=True,
    help="Output format; atom gives a feed with one entry per day",
)
@click.option(
    "-n",
    "--max-posts",
    type=click.IntRange(1, SQLITE_MAX_INTEGER),
    default=MAX_POSTS,
    show_default=True,
    help="Maximum number of posts summarised, the Signal of the Day included",
)
@click.option(
    "-o",
    "--output",
    type=click.File("w", encoding="utf-8", lazy=True),
    default="-",
    help="File to write  [default: stdout]",
)
@reports_errors
def digest(db_path, end_date, days, output_format, max_posts, output):
    """Write the digest of the posts published in a window of days.

    The digest has a Signal of the Day, Deep Dives with extractive summaries
    and Patterns Across Companies. It is built from the database alone.

    \b
    Example:
        kb digest --date 2026-04-16
        kb digest --date 2026-04-19 --days 7 --format html -o week.html
        kb digest --days 30 --format atom -o digest.xml
    """
    db = open_db(db_path, create=False)
    text = digest_text(db, end_date, days, output_format, max_posts)
    output.write(text)
