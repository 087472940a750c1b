"""Measure how well named themes pick their posts, against a labelled set.

Usage, from the repository root::

    python benchmarks/themes_quality.py --db DB [--themes TSV] [--embed]

TSV has the columns theme, description, link, title, source, one row per
member post. The script writes the themes (name and description) to a
temporary YAML file, runs ``kb topics --themes FILE`` on the database,
then compares the posts assigned to each theme (A) with the listed members
(L): precision = |A and L| / |A|, recall = |A and L| / |L|. Posts are
identified by their canonical link: scheme and host lowercased, query and
fragment dropped, trailing slashes stripped from the path.

With --embed the posts are embedded first (with the default model), which
a database built with ``kb ingest --no-embed`` needs.
"""

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KB_SHARED", REPO.parent / "shared"))
DEFAULT_TSV = SHARED / "eval" / "themes-dev.tsv"


def canonical_link(link: str) -> str:
    """Return the link with scheme and host lowercased, no query, no trailing /."""
    parts = urlsplit(link.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def read_labelled_themes(path: Path) -> dict[str, dict]:
    """Return {theme name: {"description", "members" (set of canonical links)}}."""
    labelled: dict[str, dict] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            theme = labelled.setdefault(
                row["theme"], {"description": row["description"], "members": set()}
            )
            theme["members"].add(canonical_link(row["link"]))
    return labelled


def run_kb_topics(db_path: Path, labelled: dict[str, dict]) -> None:
    """Load the labelled themes into the database with ``kb topics --themes``."""
    from click.testing import CliRunner

    from kb.cli import cli

    entries = [
        {"name": name, "description": theme["description"]}
        for name, theme in labelled.items()
    ]
    with tempfile.TemporaryDirectory() as folder:
        themes_file = Path(folder) / "themes.yml"
        themes_file.write_text(yaml.safe_dump({"themes": entries}), encoding="utf-8")
        result = CliRunner().invoke(
            cli, ["topics", "-d", str(db_path), "--themes", str(themes_file), "--json"]
        )
    if result.exit_code != 0:
        raise RuntimeError(f"kb topics failed ({result.exit_code}): {result.output}")


def assigned_links(db_path: Path) -> dict[str, set[str]]:
    import sqlite_utils

    db = sqlite_utils.Database(db_path)
    assigned: dict[str, set[str]] = {}
    for row in db.query(
        "SELECT pt.theme, coalesce(p.link, p.url) AS link FROM post_themes pt "
        "JOIN posts p ON p.id = pt.post_id"
    ):
        assigned.setdefault(row["theme"], set()).add(canonical_link(row["link"]))
    db.close()
    return assigned


def evaluate(db_path: Path, tsv_path: Path, *, embed: bool = False) -> list[dict]:
    """Assign the labelled themes and return precision and recall per theme."""
    if embed:
        from kb.db import open_db
        from kb.embed import embed_posts

        db = open_db(db_path)
        embed_posts(db)
        db.close()
    labelled = read_labelled_themes(tsv_path)
    run_kb_topics(db_path, labelled)
    assigned = assigned_links(db_path)
    results = []
    for name, theme in labelled.items():
        chosen = assigned.get(name, set())
        hits = len(chosen & theme["members"])
        results.append(
            {
                "theme": name,
                "members": len(theme["members"]),
                "assigned": len(chosen),
                "hits": hits,
                "precision": hits / len(chosen) if chosen else 0.0,
                "recall": hits / len(theme["members"]),
            }
        )
    return results


def format_table(results: list[dict]) -> str:
    lines = [
        "| theme | members | assigned | precision | recall |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in results:
        lines.append(
            f"| {row['theme']} | {row['members']} | {row['assigned']} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} |"
        )
    count = max(len(results), 1)
    mean_precision = sum(row["precision"] for row in results) / count
    mean_recall = sum(row["recall"] for row in results) / count
    lines.append(f"| mean | | | {mean_precision:.3f} | {mean_recall:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="kb database file")
    parser.add_argument("--themes", type=Path, default=DEFAULT_TSV, help="themes TSV")
    parser.add_argument("--embed", action="store_true", help="embed posts first")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    results = evaluate(args.db, args.themes, embed=args.embed)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    passed = all(row["precision"] >= 0.7 and row["recall"] >= 0.7 for row in results)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
