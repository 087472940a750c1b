"""The ``kb feeds`` commands: list, add, remove, import and export sources."""

import json
from pathlib import Path

import click
from tabulate import tabulate

from kb import feeds as sources
from kb.cli import db_option, reports_errors
from kb.db import open_db

LIST_COLUMNS = (
    "id",
    "slug",
    "company",
    "status",
    "posts",
    "consecutive_failures",
    "url",
)
LIST_HEADERS = ("id", "slug", "company", "status", "posts", "failures", "url")


@click.group()
def feeds():
    """Manage the list of feeds that kb fetches.

    \b
    Example:
        kb feeds list
        kb feeds add https://netflixtechblog.com/feed --company Netflix
        kb feeds export -o sources.opml
    """


@feeds.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON array")
@reports_errors
def list_command(db_path, as_json):
    """List every feed with its status, stored posts and failure count.

    \b
    Example:
        kb feeds list --json
    """
    rows = sources.list_feeds(open_db(db_path, create=False))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(format_table(rows))


@feeds.command("add")
@db_option
@click.argument("url")
@click.option("--title", help="Feed title; filled from the feed on its first fetch")
@click.option(
    "--company", help="Short company name; derived from the URL when left out"
)
@click.option("--homepage", help="URL of the blog's front page")
@click.option("--slug", help="Short unique name; derived from the title or URL")
@reports_errors
def add_command(db_path, url, title, company, homepage, slug):
    """Add a feed by its URL.

    \b
    Example:
        kb feeds add https://blog.cloudflare.com/rss/ --slug cloudflare-blog
    """
    feed = sources.add_feed(
        open_db(db_path),
        url,
        title=title,
        company=company,
        homepage=homepage,
        slug=slug,
    )
    click.echo(
        f"Added feed {feed['slug']} ({feed['company'] or 'no company'}): {feed['url']}"
    )


@feeds.command("remove")
@db_option
@click.argument("key")
@reports_errors
def remove_command(db_path, key):
    """Remove a feed by slug, id or URL; a feed with stored posts is disabled.

    KEY is matched against slugs first, then ids, then URLs. So "7" removes
    the feed whose slug is 7 when there is one, else the feed with id 7.

    \b
    Example:
        kb feeds remove netflix-techblog
    """
    feed, action = sources.remove_feed(open_db(db_path, create=False), key)
    if action == "disabled":
        click.echo(
            f"Disabled feed {feed['slug']}: its {feed['posts']} stored posts are kept "
            "and it is no longer fetched."
        )
    else:
        click.echo(f"Deleted feed {feed['slug']}: it had no stored posts.")


@feeds.command("import")
@db_option
@click.argument("opml_file", type=click.Path(exists=True, dir_okay=False))
@reports_errors
def import_command(db_path, opml_file):
    """Add or update feeds from an OPML file.

    \b
    Example:
        kb feeds import subscriptions.opml
    """
    added, updated = sources.import_opml(open_db(db_path), opml_file)
    click.echo(f"Imported {opml_file}: {added} added, {updated} updated.")


@feeds.command("export")
@db_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to this file instead of stdout",
)
@reports_errors
def export_command(db_path, output):
    """Print every feed as OPML, with kb's slug, company and category attributes.

    \b
    Example:
        kb feeds export -o sources.opml
    """
    document = sources.export_opml(open_db(db_path, create=False))
    if output:
        try:
            Path(output).write_text(document, encoding="utf-8")
        except OSError as error:
            raise click.FileError(
                output,
                hint=f"{error.strerror}. Check that its folder exists and is writable.",
            ) from error
        click.echo(f"Wrote {output}", err=True)
    else:
        click.echo(document, nl=False)


def format_table(rows: list[dict]) -> str:
    """Format feed rows as aligned text columns under a header line."""
    table = [[row[name] for name in LIST_COLUMNS] for row in rows]
    return tabulate(table, headers=LIST_HEADERS, tablefmt="simple", missingval="")
