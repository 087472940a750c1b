"""Patterns Across Companies: themes, topics or terms shared by several companies.

A pattern is a theme (``post_themes``), a topic (``post_topics``) or, when
neither table exists or neither links two companies, a salient term: one of
the top TF-IDF terms of posts from at least two companies. Only patterns that
at least two companies touched in the window are kept.
"""

import json
import logging

import numpy as np
import sqlite_utils

from kb.digest_model import Background, Pattern, post_document, post_ref

logger = logging.getLogger(__name__)

MIN_COMPANIES = 2
MAX_PATTERNS = 5
# How many of each post's top TF-IDF terms count as its salient terms.
TERMS_PER_POST = 15
# A term found in fewer background posts cannot be shared. One-off bigrams
# such as "rl single" (from "SFT and RL on Single-Host TPUs") would otherwise
# crowd shared terms out of a post's top terms.
MIN_TERM_DOCUMENTS = 2
MAX_TERMS_PER_PATTERN = 3
MAX_DESCRIBED_TERMS = 6
# Words that are frequent in feed text but say nothing about the subject.
GENERIC_TERMS = frozenset(
    """blog post posts article today new announced announcing introducing
    introduces introduce learn read week year years month time way ways team
    teams company companies work working use using used make makes like just
    including help helps need needs want better best good great lot lots
    world people thing things know latest update updates com www http https""".split()
)


def find_patterns(
    db: sqlite_utils.Database,
    posts: list[dict],
    background: Background,
    days: int,
) -> tuple[list[Pattern], str, str]:
    """Find the patterns that at least two companies share in a window.

    Returns the patterns (most companies first), a paragraph that names them
    with their companies, and a sentence that names their source, which is
    empty when the paragraph already states that nothing was shared.
    """
    refs = {post["id"]: post_ref(post) for post in posts}
    kinds = assigned_kinds(db)
    patterns = []
    if "themes" in kinds:
        patterns += theme_patterns(db, refs)
    if "topics" in kinds:
        patterns += topic_patterns(db, refs)
    if patterns:
        used = sorted({f"{pattern.kind}s" for pattern in patterns})
        source = f"Patterns come from the {' and '.join(used)} assigned to these posts."
    else:
        patterns = term_patterns(posts, refs, background)
        source = terms_source(kinds, bool(patterns))
    patterns = rank_patterns(patterns)[:MAX_PATTERNS]
    for pattern in patterns:
        pattern.companies.sort()
    paragraph = patterns_paragraph(patterns, days, searched_kinds=bool(kinds))
    return patterns, paragraph, source


def terms_source(kinds: list[str], has_patterns: bool) -> str:
    """Return the sentence that explains why patterns come from salient terms."""
    if not kinds:
        return (
            "This knowledge base has no topics or themes assigned yet, so only "
            "salient terms that posts share were compared."
        )
    if has_patterns:
        return (
            f"No {' or '.join(kinds)} linked two companies in this window, so "
            "these patterns come from salient terms that posts share."
        )
    return ""


def assigned_kinds(db: sqlite_utils.Database) -> list[str]:
    """Return which of "themes" and "topics" have posts assigned to them.

    The tables come from a later migration and are filled by separate steps,
    so either may be missing or empty.
    """
    kinds = []
    for kind, tables in (
        ("themes", ("themes", "post_themes")),
        ("topics", ("topics", "post_topics")),
    ):
        if all(db[table].exists() for table in tables) and db[tables[1]].count:
            kinds.append(kind)
    return kinds


def theme_patterns(db: sqlite_utils.Database, refs: dict) -> list[Pattern]:
    """Return the themes that posts from two or more companies belong to."""
    rows = db.execute(
        f"""
        SELECT post_themes.post_id, post_themes.theme, themes.description
        FROM post_themes LEFT JOIN themes ON themes.name = post_themes.theme
        WHERE post_themes.post_id IN ({placeholders(refs)})
        ORDER BY post_themes.score DESC
        """,
        list(refs),
    ).fetchall()
    return group_patterns(rows, refs, "theme")


def topic_patterns(db: sqlite_utils.Database, refs: dict) -> list[Pattern]:
    """Return the topics that posts from two or more companies are assigned to."""
    rows = db.execute(
        f"""
        SELECT post_topics.post_id, topics.label, topics.terms
        FROM post_topics JOIN topics ON topics.id = post_topics.topic_id
        WHERE post_topics.post_id IN ({placeholders(refs)})
        ORDER BY post_topics.score DESC
        """,
        list(refs),
    ).fetchall()
    return group_patterns(rows, refs, "topic")


def placeholders(values) -> str:
    """Return ``?, ?, ?`` with one mark per value."""
    return ", ".join("?" for _ in values)


def group_patterns(rows, refs: dict, kind: str) -> list[Pattern]:
    """Group (post_id, name, description) rows by name, keeping shared ones."""
    groups: dict[str, Pattern] = {}
    for post_id, name, description in rows:
        if not name:
            continue
        pattern = groups.setdefault(
            name, Pattern(str(name), kind, describe(description, str(name)), [], [])
        )
        ref = refs[post_id]
        if ref not in pattern.posts:
            pattern.posts.append(ref)
        if ref.company not in pattern.companies:
            pattern.companies.append(ref.company)
    return [
        pattern
        for pattern in groups.values()
        if len(pattern.companies) >= MIN_COMPANIES
    ]


def describe(value, name: str) -> str:
    """Return a theme description or a topic's terms as one line of text.

    A topic's label is made of its first terms ("kafka, consumer, lag"), so
    the terms in ``name`` are left out of the description.
    """
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith("["):
        # Topic terms are stored as a JSON list: ["kafka", "stream", ...].
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, list):
        label = {term.strip() for term in name.split(",")}
        terms = [str(term) for term in value if str(term) not in label]
        return ", ".join(terms[:MAX_DESCRIBED_TERMS])
    return " ".join(str(value).split())


def term_patterns(
    posts: list[dict], refs: dict, background: Background
) -> list[Pattern]:
    """Return terms that rank among the top terms of posts from two companies."""
    documents = [post_document(post) for post in posts]
    vectors = background.vectorizer.transform(documents)
    excluded = company_words(posts)
    patterns: dict[str, Pattern] = {}
    weights: dict[str, float] = {}
    for row, post in enumerate(posts):
        vector = vectors.getrow(row)
        top = np.argsort(-vector.data, kind="stable")[:TERMS_PER_POST]
        for position in top:
            column = vector.indices[position]
            term = str(background.terms[column])
            frequency = background.document_frequency[column]
            if frequency < MIN_TERM_DOCUMENTS or not is_salient(term, excluded):
                continue
            pattern = patterns.setdefault(term, Pattern(term, "term", "", [], []))
            weights[term] = weights.get(term, 0.0) + float(vector.data[position])
            pattern.posts.append(refs[post["id"]])
            if post["company"] not in pattern.companies:
                pattern.companies.append(post["company"])
    shared = [p for p in patterns.values() if len(p.companies) >= MIN_COMPANIES]
    shared.sort(key=lambda p: (-len(p.companies), -weights[p.name], p.name))
    return merge_same_posts(drop_overlapping_terms(shared))


def company_words(posts: list[dict]) -> set[str]:
    """Return the lowercase words of company and feed names in the window."""
    words = set()
    for post in posts:
        words.update(post["company"].lower().split())
        words.update(post["feed"].lower().split("-"))
    return words


def is_salient(term: str, excluded: set[str]) -> bool:
    """Return whether a term can name a pattern: no numbers, no generic words."""
    words = term.split()
    if any(word in excluded or word in GENERIC_TERMS for word in words):
        return False
    return all(len(word) >= 3 and not word.isdigit() for word in words)


def drop_overlapping_terms(patterns: list[Pattern]) -> list[Pattern]:
    """Keep the first of terms that share a word ("agents" after "ai agents")."""
    kept: list[Pattern] = []
    seen_words: set[str] = set()
    for pattern in patterns:
        words = set(pattern.name.split())
        if words & seen_words:
            continue
        kept.append(pattern)
        seen_words |= words
    return kept


def merge_same_posts(patterns: list[Pattern]) -> list[Pattern]:
    """Merge terms found in the same posts into one pattern ("search, index").

    Up to MAX_TERMS_PER_PATTERN names are kept, best first.
    """
    merged: dict[frozenset, Pattern] = {}
    for pattern in patterns:
        key = frozenset(ref.post_id for ref in pattern.posts)
        kept = merged.get(key)
        if kept is None:
            merged[key] = pattern
        elif kept.name.count(", ") < MAX_TERMS_PER_PATTERN - 1:
            kept.name = f"{kept.name}, {pattern.name}"
    return list(merged.values())


def rank_patterns(patterns: list[Pattern]) -> list[Pattern]:
    """Order patterns by companies, then posts, then kind and name, most first."""
    kind_order = {"theme": 0, "topic": 1, "term": 2}
    return sorted(
        patterns,
        key=lambda p: (-len(p.companies), -len(p.posts), kind_order[p.kind], p.name),
    )


def join_names(names: list[str]) -> str:
    """Join names as English prose: "A", "A and B", "A, B and C"."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def patterns_paragraph(
    patterns: list[Pattern], days: int, *, searched_kinds: bool = True
) -> str:
    """Return the paragraph that names each pattern with its companies.

    ``searched_kinds`` states whether themes and topics were compared as well
    as salient terms, so that an empty result names what was compared.
    """
    span = "day" if days == 1 else "window"
    if not patterns:
        compared = "theme, topic or salient term" if searched_kinds else "salient term"
        return f"No {compared} was shared by two companies this {span}."
    clauses = []
    for pattern in patterns:
        # Themes are named by a person. Topic labels and terms are lists of
        # words, which read better quoted.
        label = pattern.name if pattern.kind == "theme" else f"“{pattern.name}”"
        posts = len(pattern.posts)
        clauses.append(
            f"{label} came up at {join_names(pattern.companies)} "
            f"({posts} {'post' if posts == 1 else 'posts'})"
        )
    count = len(patterns)
    opening = (
        f"One thread ran across companies this {span}: "
        if count == 1
        else f"{count} threads ran across companies this {span}. "
    )
    if count == 1:
        return opening + clauses[0] + "."
    sentences = [clause[0].upper() + clause[1:] + "." for clause in clauses]
    return opening + " ".join(sentences)
