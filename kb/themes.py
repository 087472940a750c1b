"""Named themes: load them from YAML and assign posts by similarity.

A theme is a name and a one-sentence description written by a person, such
as "Platform consolidation". Every post is scored against every theme
(kb.theme_scores), and a post joins each theme whose score is an outlier among
the corpus's scores, so a post may join several themes or none.
"""

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils
import yaml

from kb import theme_scores
from kb.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_THEMES = Path(__file__).resolve().parent.parent / "data" / "themes.yml"
THEMES_ENV = "KB_THEMES"


@dataclass
class Theme:
    """A named theme with the description posts are compared with."""

    name: str
    description: str
    keywords: list[str] = field(default_factory=list)

    @property
    def query(self) -> str:
        """The text embedded for the theme: its name, then its description."""
        return f"{self.name}. {self.description}"


@dataclass
class ThemesReport:
    """Counts from one call of assign_themes."""

    themes: int
    posts: int
    assignments: int = 0
    per_theme: dict[str, int] = field(default_factory=dict)
    source: str | None = None
    message: str = ""

    def __str__(self) -> str:
        text = (
            f"{self.themes} themes, {self.assignments} assignments over "
            f"{self.posts} posts"
        )
        return f"{text}. {self.message}" if self.message else text


def default_themes_path() -> Path:
    """Return the themes file used when the database has none: $KB_THEMES or data/."""
    return Path(os.environ.get(THEMES_ENV) or DEFAULT_THEMES)


def load_themes(path: str | os.PathLike) -> list[Theme]:
    """Read themes from a YAML file.

    The file contains a ``themes`` list (or is the list itself) of mappings
    with a ``name``, a ``description`` and optional ``keywords``.

    Raises ConfigError naming the file, and the entry where there is one,
    when the file is missing, is not valid YAML, or an entry lacks a name or
    description or repeats a name.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"Cannot read themes file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(
            f"Invalid YAML in themes file {path}: {error}\n"
            "Fix the syntax; each theme needs a name and a description."
        ) from error
    entries = document.get("themes") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"Themes file {path} has no themes.\n"
            "Write a 'themes:' list of entries with a name and a description."
        )
    themes = [parse_theme(path, index, entry) for index, entry in enumerate(entries, 1)]
    names = [theme.name for theme in themes]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"Themes file {path} names a theme more than once: {', '.join(repeated)}\n"
            "Give each theme a unique name."
        )
    return themes


def parse_theme(path: Path, index: int, entry) -> Theme:
    """Validate one entry of a themes file; ``index`` counts from 1."""
    where = f"Theme #{index} in {path}"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where} is {entry!r}, not a mapping with name and description."
        )
    name = entry.get("name")
    description = entry.get("description")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where} has no name: {entry!r}\nAdd a 'name:' line.")
    where = f"Theme #{index} ({name!r}) in {path}"
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(
            f"{where} has no description.\n"
            "Add a 'description:' with one sentence saying what its posts are about."
        )
    keywords = entry.get("keywords") or []
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise ConfigError(
            f"{where}: keywords must be a list of strings, got {keywords!r}."
        )
    return Theme(
        name=name.strip(),
        description=" ".join(description.split()),
        keywords=[keyword.strip() for keyword in keywords if keyword.strip()],
    )


def store_themes(
    db: sqlite_utils.Database, themes: list[Theme], source: str | None
) -> None:
    """Replace the themes table, and every post's themes, with ``themes``."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with db.conn:
        db.execute("DELETE FROM post_themes")
        db.execute("DELETE FROM themes")
        db["themes"].insert_all(
            {
                "name": theme.name,
                "description": theme.description,
                "keywords": json.dumps(theme.keywords),
                "source": source,
                "posts": 0,
                "updated": now,
            }
            for theme in themes
        )


def stored_themes(db: sqlite_utils.Database) -> list[Theme]:
    return [
        Theme(row["name"], row["description"], json.loads(row["keywords"] or "[]"))
        for row in db.query("SELECT * FROM themes ORDER BY rowid")
    ]


def assign_themes(
    db: sqlite_utils.Database,
    themes_path: str | os.PathLike | None = None,
    model_name: str | None = None,
) -> ThemesReport:
    """Score every embedded post against every theme and store the matches.

    With ``themes_path`` the themes table is replaced by that file's
    themes. Without it the stored themes are used, and an empty table is
    filled from default_themes_path() first.

    Raises ConfigError for an invalid themes file, and ModelError when the
    stored vectors were made by another model than ``model_name``.
    """
    if themes_path is not None or db["themes"].count == 0:
        path = Path(themes_path) if themes_path is not None else default_themes_path()
        store_themes(db, load_themes(path), str(path))
    themes = stored_themes(db)
    corpus = theme_scores.load_corpus(db, model_name)
    report = ThemesReport(themes=len(themes), posts=len(corpus.post_ids))
    if len(corpus.post_ids) == 0:
        report.message = "No embedded posts to assign; run 'kb ingest' first."
        return report
    scores = theme_scores.score_themes(corpus, themes)
    with db.conn:
        db.execute("DELETE FROM post_themes")
        for column, theme in enumerate(themes):
            members, threshold = theme_scores.select_members(scores[:, column])
            write_theme(
                db, theme, corpus.post_ids, scores[:, column], members, threshold
            )
            report.per_theme[theme.name] = len(members)
    report.assignments = sum(report.per_theme.values())
    from kb.weekly import rebuild_weekly

    rebuild_weekly(db)
    logger.info("themes: %s", report.per_theme)
    return report


def write_theme(
    db: sqlite_utils.Database,
    theme: Theme,
    post_ids: np.ndarray,
    scores: np.ndarray,
    members: np.ndarray,
    threshold: float,
) -> None:
    db["post_themes"].insert_all(
        {
            "post_id": int(post_ids[row]),
            "theme": theme.name,
            "score": round(float(scores[row]), 6),
        }
        for row in members
    )
    db["themes"].update(
        theme.name, {"threshold": round(threshold, 6), "posts": len(members)}
    )


def list_themes(db: sqlite_utils.Database) -> list[dict]:
    """Return the stored themes with their post counts and top companies."""
    themes = []
    for row in db.query("SELECT name, description, threshold, posts FROM themes"):
        companies = db.execute(
            """
            SELECT coalesce(f.company, f.title, f.slug), count(*) AS n
            FROM post_themes pt
            JOIN posts p ON p.id = pt.post_id
            JOIN feeds f ON f.id = p.feed_id
            WHERE pt.theme = ?
            GROUP BY 1 ORDER BY n DESC, 1 LIMIT 5
            """,
            [row["name"]],
        ).fetchall()
        themes.append({**row, "companies": [tuple(pair) for pair in companies]})
    return themes
