"""Measure how well named themes pick their posts, against a labelled set.

Usage, from the repository root::

    python benchmarks/themes_quality.py --db DB [--themes TSV] [--embed] [--loto]

TSV has the columns theme, description, link, title, source, one row per
member post. The script writes the themes (name and description) to a
temporary YAML file, runs ``kb topics --themes FILE`` on the database,
then compares the posts assigned to each theme (A) with the listed members
(L): precision = |A and L| / |A|, recall = |A and L| / |L|. Posts are
identified by their canonical link: scheme and host lowercased, query and
fragment dropped, trailing slashes stripped from the path.

With --embed the posts are embedded first (with the default model), which
a database built with ``kb ingest --no-embed`` needs.

With --loto the script checks how well a member cut chosen on some themes
carries over to another (leave one theme out). It scores every post against
every labelled theme with kb.theme_scores.score_themes, as ``kb topics``
does, and leaves the database unchanged. Then, for each theme in turn, it
picks the cut rule and setting from CUT_GRID that do best on the other
themes and reports precision and recall of that cut on the held-out theme.
"""

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
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


def embed_all(db_path: Path) -> None:
    """Embed every post of the database with the default model."""
    from kb.db import open_db
    from kb.embed import embed_posts

    db = open_db(db_path)
    embed_posts(db)
    db.close()


def evaluate(db_path: Path, tsv_path: Path, *, embed: bool = False) -> list[dict]:
    """Assign the labelled themes and return precision and recall per theme."""
    if embed:
        embed_all(db_path)
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


# Cut rules and the settings tried for each, in the order that breaks ties.
# "z" is a fixed z-score. "best 10 share" is a share of the mean of the
# FEEDBACK_POSTS best scores, the rule of kb.theme_scores.member_cut but
# without its MIN_MEMBER_Z floor. "best share" is a share of the best score.
CUT_GRID = {
    "z": [step / 10 for step in range(18, 35)],
    "best 10 share": [step / 100 for step in range(30, 57, 2)],
    "best share": [step / 100 for step in range(26, 45, 2)],
}


# Labelled members listed per theme as the lowest ranked by theme score.
LOWEST_MEMBERS = 3


def cut_mask(scores: np.ndarray, rule: str, setting: float) -> np.ndarray:
    """Return which posts one theme's ``scores`` select under a CUT_GRID rule."""
    from kb.theme_scores import FEEDBACK_POSTS, best_rows

    if rule == "z":
        cut = setting
    elif rule == "best 10 share":
        best = scores[best_rows(scores[:, None], FEEDBACK_POSTS)[:, 0]]
        cut = setting * float(best.mean())
    elif rule == "best share":
        cut = setting * float(scores.max())
    else:
        raise ValueError(f"Unknown cut rule {rule!r}; use one of {list(CUT_GRID)}")
    return scores >= cut


def describe_cut(rule: str, setting: float) -> str:
    if rule == "z":
        return f"z >= {setting:.1f}"
    if rule == "best 10 share":
        return f"{setting:.2f} of best 10"
    return f"{setting:.2f} of best score"


def training_fit(
    outcome: list[tuple[float, float]], columns: list[int]
) -> tuple[float, float]:
    """Return the lowest precision or recall over ``columns``, then the mean P + R."""
    pairs = [outcome[column] for column in columns]
    worst = min(min(pair) for pair in pairs)
    return worst, sum(sum(pair) for pair in pairs) / len(pairs)


def leave_one_theme_out(
    scores: np.ndarray, labels: np.ndarray, member_counts: list[int]
) -> list[dict]:
    """Choose a cut on all themes but one and score it on that one, for each theme.

    ``scores`` and ``labels`` have shape (n_posts, n_themes): the theme scores
    and whether each post is a labelled member. Recall divides by
    ``member_counts``, which may include members missing from the corpus.
    A cut is chosen by the lowest precision or recall over the other themes,
    then by their mean precision plus recall, and then by CUT_GRID order.
    Returns one row per held-out theme, in column order.
    """
    n_themes = scores.shape[1]
    if n_themes < 2:
        raise ValueError(
            f"Leave one theme out needs 2 themes or more, got {n_themes}; "
            "label members of another theme in the themes TSV"
        )
    cuts = [
        (rule, setting) for rule, settings in CUT_GRID.items() for setting in settings
    ]
    # outcomes[c][t]: (precision, recall) of cut c on theme t.
    outcomes = []
    for rule, setting in cuts:
        row = []
        for column in range(n_themes):
            selected = cut_mask(scores[:, column], rule, setting)
            hits = int((selected & labels[:, column]).sum())
            count = int(selected.sum())
            row.append((hits / count if count else 0.0, hits / member_counts[column]))
        outcomes.append(row)
    results = []
    for held_out in range(n_themes):
        others = [column for column in range(n_themes) if column != held_out]
        fits = [training_fit(outcome, others) for outcome in outcomes]
        # max() returns the first of equal keys, so ties go to CUT_GRID order.
        chosen = max(range(len(cuts)), key=fits.__getitem__)
        precision, recall = outcomes[chosen][held_out]
        results.append(
            {
                "column": held_out,
                "rule": cuts[chosen][0],
                "setting": cuts[chosen][1],
                "cut": describe_cut(*cuts[chosen]),
                "training_worst": fits[chosen][0],
                "precision": precision,
                "recall": recall,
            }
        )
    return results


def evaluate_loto(db_path: Path, tsv_path: Path, *, embed: bool = False) -> list[dict]:
    """Score the labelled themes as ``kb topics`` does and leave each one out."""
    import sqlite_utils

    from kb.theme_scores import load_corpus, score_themes
    from kb.themes import Theme

    if embed:
        embed_all(db_path)
    labelled = read_labelled_themes(tsv_path)
    names = list(labelled)
    db = sqlite_utils.Database(db_path)
    corpus = load_corpus(db)
    posts = {
        row["id"]: row
        for row in db.query("SELECT id, title, coalesce(link, url) AS link FROM posts")
    }
    db.close()
    themes = [Theme(name, labelled[name]["description"]) for name in names]
    scores = score_themes(corpus, themes)
    rows = [posts[int(post_id)] for post_id in corpus.post_ids]
    links = [canonical_link(row["link"]) for row in rows]
    labels = np.array(
        [[link in labelled[name]["members"] for name in names] for link in links],
        dtype=bool,
    ).reshape(len(links), len(names))
    counts = [len(labelled[name]["members"]) for name in names]
    results = []
    for row in leave_one_theme_out(scores, labels, counts):
        column = row.pop("column")
        lowest = lowest_ranked_members(scores[:, column], labels[:, column])
        row["lowest_members"] = [
            {"rank": rank, "title": rows[index]["title"]} for rank, index in lowest
        ]
        results.append({"theme": names[column], **row})
    return results


def lowest_ranked_members(
    scores: np.ndarray, labels: np.ndarray, count: int = LOWEST_MEMBERS
) -> list[tuple[int, int]]:
    """Return (rank from 1, row) of the ``count`` lowest-ranked members, worst first."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=int)
    ranks[order] = np.arange(1, len(scores) + 1)
    members = sorted(np.flatnonzero(labels), key=lambda row: -ranks[row])
    return [(int(ranks[row]), int(row)) for row in members[:count]]


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """Return the lines of a Markdown table with ``header`` and ``rows``."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def format_loto_table(results: list[dict]) -> str:
    rows = [
        [row["theme"], row["cut"], f"{row['precision']:.2f}", f"{row['recall']:.2f}"]
        for row in results
    ]
    header = ["held-out theme", "chosen cut", "precision", "recall"]
    lines = markdown_table(header, rows)
    lines.append("")
    lines.append("Lowest-ranked labelled members:")
    for row in results:
        for member in row["lowest_members"]:
            lines.append(f"- {row['theme']}: rank {member['rank']}, {member['title']}")
    return "\n".join(lines)


def format_table(results: list[dict]) -> str:
    count = max(len(results), 1)
    mean_precision = sum(row["precision"] for row in results) / count
    mean_recall = sum(row["recall"] for row in results) / count
    rows = [
        [
            row["theme"],
            row["members"],
            row["assigned"],
            f"{row['precision']:.3f}",
            f"{row['recall']:.3f}",
        ]
        for row in results
    ]
    rows.append(["mean", "", "", f"{mean_precision:.3f}", f"{mean_recall:.3f}"])
    header = ["theme", "members", "assigned", "precision", "recall"]
    return "\n".join(markdown_table(header, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="kb database file")
    parser.add_argument("--themes", type=Path, default=DEFAULT_TSV, help="themes TSV")
    parser.add_argument("--embed", action="store_true", help="embed posts first")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.add_argument(
        "--loto",
        action="store_true",
        help="leave one theme out: choose the cut on the other themes, score "
        "the held-out one; always exits 0",
    )
    args = parser.parse_args(argv)
    if args.loto:
        results = evaluate_loto(args.db, args.themes, embed=args.embed)
        print(
            json.dumps(results, indent=2) if args.json else format_loto_table(results)
        )
        return 0
    results = evaluate(args.db, args.themes, embed=args.embed)
    print(json.dumps(results, indent=2) if args.json else format_table(results))
    passed = all(row["precision"] >= 0.7 and row["recall"] >= 0.7 for row in results)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
