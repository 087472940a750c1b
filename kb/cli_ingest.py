"""The ``kb ingest`` and ``kb status`` commands."""

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import click

from kb.cli import db_option, reports_errors
from kb.db import open_db
from kb.ingest import (
    FeedOutcome,
    ingest_feeds,
    ingest_lock,
    ingest_paths,
    is_url,
    refresh_derived,
)
from kb.status import feed_health


@click.command()
@db_option
@click.option(
    "--from",
    "sources",
    multiple=True,
    metavar="PATH",
    help="Saved feed file, folder of <source>/<YYYY-MM-DD>.xml snapshots, or URL; repeatable",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only failures")
@click.option("--no-embed", is_flag=True, help="Skip embeddings, topics and themes")
@click.option("-m", "--model", envvar="KB_MODEL", help="Embedding model name or path")
@reports_errors
def ingest(db_path, sources, quiet, no_embed, model):
    """Fetch every enabled feed, or replay saved ones, into the knowledge base.

    Exit status: 0 when every feed was handled, 1 when some failed, 2 when
    none could be fetched.

    \b
    Example:
        kb ingest
        kb ingest --from ../shared/corpus/feeds --db data/kb.db
    """
    if any(not path.strip() for path in sources):
        raise click.BadParameter("empty path", param_hint="--from")
    missing = [path for path in sources if not is_url(path) and not Path(path).exists()]
    if missing:
        raise click.BadParameter(
            f"path not found: {', '.join(missing)}", param_hint="--from"
        )
    show_bar = not quiet and sys.stderr.isatty()
    if quiet:
        logging.getLogger("kb").setLevel(logging.ERROR)
    printer = FeedPrinter(quiet=quiet, show_bar=show_bar)
    with ingest_lock(db_path):
        db = open_db(db_path)
        try:
            if sources:
                report = ingest_paths(
                    db, list(sources), on_start=printer.start, on_feed=printer.feed
                )
            else:
                report = ingest_feeds(db, on_start=printer.start, on_feed=printer.feed)
        finally:
            printer.close()
        if not quiet:
            click.echo(report.total_line())
        if not no_embed and report.outcomes:
            for message in refresh_derived(db, model_name=model):
                if not quiet:
                    click.echo(message)
    sys.exit(report.exit_code)


class FeedPrinter:
    """Print one line per feed, or a progress bar on stderr when it is a terminal.

    With a bar, the feed lines wait until the bar is done, so the two never
    share a screen line.
    """

    def __init__(self, *, quiet: bool, show_bar: bool):
        self.quiet = quiet
        self.show_bar = show_bar
        self.bar = None
        self.held_lines: list[str] = []

    def start(self, total: int) -> None:
        if self.show_bar and total:
            self.bar = click.progressbar(
                length=total,
                label="Feeds",
                file=sys.stderr,
                item_show_func=lambda name: name,
            )
            self.bar.__enter__()

    def feed(self, outcome: FeedOutcome) -> None:
        if outcome.failed:
            click.echo(outcome.line(), err=True)
        elif self.bar is not None:
            self.held_lines.append(outcome.line())
        elif not self.quiet:
            click.echo(outcome.line())
        if self.bar is not None:
            self.bar.update(1, outcome.name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
        for line in self.held_lines:
            click.echo(line)
        self.held_lines = []


@click.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Output JSON")
@reports_errors
def status(db_path, as_json):
    """Show feed health: last success, failures, last error, posts and newest post.

    \b
    Example:
        kb status
        kb status --json | jq '.[] | select(.health != "ok")'
    """
    rows = feed_health(open_db(db_path, create=False))
    if as_json:
        click.echo(json.dumps([asdict(row) for row in rows], indent=2))
        return
    header = (
        "feed",
        "company",
        "health",
        "posts",
        "newest post",
        "last success",
        "fails",
        "last error",
    )
    lines = [header]
    for row in rows:
        lines.append(
            (
                row.slug,
                row.company or "",
                row.health,
                str(row.posts),
                (row.newest_post or "")[:10],
                (row.last_success_at or "")[:16],
                str(row.consecutive_failures),
                shorten(row.last_error or "", 60),
            )
        )
    widths = [
        max(len(line[column]) for line in lines) for column in range(len(header) - 1)
    ]
    for line in lines:
        cells = [
            cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)
        ]
        click.echo("  ".join(cells + [line[-1]]).rstrip())


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
