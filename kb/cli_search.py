"""The ``kb embed`` and ``kb search`` commands."""

import html
import json
import re

import click

from kb.cli import SQLITE_MAX_INTEGER, db_option, reports_errors
from kb.errors import SearchError
from kb.search import MODES, parse_date

model_option = click.option(
    "-m",
    "--model",
    "model_name",
    envvar="KB_MODEL",
    help="Embedding model: a sentence-transformers name or folder, or hash:DIM "
    "[default: the bundled all-MiniLM-L6-v2]",
)


def date_param(ctx, param, value):
    """Check a --since/--until value before any work starts."""
    try:
        return parse_date(value, param.name)
    except SearchError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from error


@click.command()
@db_option
@model_option
@click.option("--rebuild", is_flag=True, help="Drop all vectors and embed every post")
@click.option("-s", "--silent", is_flag=True, help="Hide the progress bar")
@reports_errors
def embed(db_path, model_name, rebuild, silent):
    """Embed posts whose text or model changed since the last run.

    \b
    Example:
        kb embed
        kb embed --rebuild --model ./models/other-model
    """
    from kb.db import open_db
    from kb.embed import embed_posts

    db = open_db(db_path, create=False)
    total = db.execute("SELECT count(*) FROM posts").fetchone()[0]
    with click.progressbar(length=total, label="Embedding posts", hidden=silent) as bar:
        stats = embed_posts(db, model_name, rebuild=rebuild, progress=bar.update)
    click.echo(
        f"Embedded {stats.posts_embedded} posts ({stats.chunks_embedded} chunks) "
        f"with {stats.model}; {stats.posts_unchanged} unchanged, "
        f"{stats.posts_without_text} without text.",
        err=True,
    )


@click.command()
@click.argument("query")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="hybrid",
    show_default=True,
    help="Keyword (FTS5), semantic (vectors) or hybrid (both, fused)",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(1, SQLITE_MAX_INTEGER),
    default=10,
    show_default=True,
    help="Number of results",
)
@click.option("--source", help="Only posts from this feed slug or company")
@click.option(
    "--since",
    callback=date_param,
    help="Only posts published on or after this date (YYYY-MM-DD)",
)
@click.option(
    "--until",
    callback=date_param,
    help="Only posts published on or before this date (YYYY-MM-DD)",
)
@click.option("--topic", help="Only posts in this topic (id or label)")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of results")
@model_option
@db_option
@reports_errors
def search(
    query, mode, limit, source, since, until, topic, as_json, model_name, db_path
):
    """Search posts by keyword, meaning, or both.

    \b
    Example:
        kb search "multi-AZ failover"
        kb search "why tests fail at random" --mode semantic --since 2020-01-01
        kb search '"post-quantum" IPsec' --source cloudflare-blog --json
    """
    from kb.db import open_db
    from kb.search import search as run_search

    db = open_db(db_path, create=False)
    results = run_search(
        db,
        query,
        mode=mode,
        limit=limit,
        source=source,
        since=since,
        until=until,
        topic=topic,
        model_name=model_name,
    )
    if as_json:
        click.echo(json.dumps([result.as_dict() for result in results], indent=2))
        return
    if not results:
        click.echo("No results.", err=True)
    for number, result in enumerate(results, start=1):
        where = f"{result.company or result.source}, {(result.published or '')[:10]}"
        click.echo(f"{number:2}. {result.title}  [{where}]")
        click.echo(f"    {result.url}")
        click.echo(f"    {terminal_snippet(result.snippet)}")


def terminal_snippet(snippet: str) -> str:
    """Turn an HTML snippet into terminal text, with the matches in bold."""
    parts = re.split(r"(<mark>.*?</mark>)", snippet)
    text = []
    for part in parts:
        if part.startswith("<mark>"):
            text.append(click.style(html.unescape(part[6:-7]), bold=True))
        else:
            text.append(html.unescape(part))
    return "".join(text)
