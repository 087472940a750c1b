"""The ``kb topics`` command."""

import dataclasses
import json

import click

from kb.cli import db_option, reports_errors


@click.command()
@db_option
@click.option("--refit", is_flag=True, help="Cluster all posts again, keeping ids")
@click.option(
    "--themes",
    "themes_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML file of themes that replaces the stored ones",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table")
@reports_errors
def topics(db_path, refit, themes_path, as_json):
    """Show discovered topics and named themes with sizes and companies.

    Fits topics and assigns themes first when the database has none yet.

    \b
    Example:
        kb topics
        kb topics --refit
        kb topics --themes data/themes.yml --json
    """
    from kb.db import open_db
    from kb.topics import refresh_overview

    db = open_db(db_path, create=False)
    overview = refresh_overview(db, refit=refit, themes_path=themes_path)
    for update in overview.updates:
        click.echo(update, err=True)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(overview), indent=2))
        return
    click.echo(format_overview(overview))


def format_companies(companies: list) -> str:
    return ", ".join(f"{name} ({count})" for name, count in companies)


def format_overview(overview) -> str:
    lines = [f"{'id':>4} {'size':>5}  {'label':<40} companies"]
    for topic in overview.topics:
        lines.append(
            f"{topic['id']:>4} {topic['size']:>5}  {topic['label'][:40]:<40} "
            f"{format_companies(topic['companies'][:3])}"
        )
    share = overview.unassigned / overview.posts if overview.posts else 0
    lines.append(
        f"{len(overview.topics)} topics; {overview.unassigned} of {overview.posts} "
        f"posts unassigned ({share:.1%})"
    )
    if overview.themes:
        lines.append("")
        lines.append(f"{'theme':<45} {'posts':>5}  companies")
        for theme in overview.themes:
            lines.append(
                f"{theme['name'][:45]:<45} {theme['posts']:>5}  "
                f"{format_companies(theme['companies'][:3])}"
            )
    return "\n".join(lines)
