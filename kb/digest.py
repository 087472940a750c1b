"""The daily digest "Engineering @ Scale", built from the posts in a date window.

A digest has three sections. The Signal of the Day is the post most related
to what other companies published in the window. Deep Dives are extractive
summaries of the next posts by the same score, capped per company. Patterns
Across Companies are themes, topics or shared terms that at least two
companies touched.
Everything is computed from the database, and nothing calls a network service.
"""

import logging
import math
import threading
from datetime import date as Date
from datetime import datetime, timedelta

import numpy as np
import sqlite_utils
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from kb import summarize
from kb.digest_model import Background, DeepDive, Digest, post_document, post_ref
from kb.digest_patterns import find_patterns, join_names
from kb.digest_render import render_atom, render_html, render_json, render_markdown
from kb.errors import ConfigError

__all__ = [
    "Digest",
    "build_digest",
    "build_digests",
    "digest_text",
    "fit_background",
    "render_atom",
    "render_html",
    "render_json",
    "render_markdown",
]

logger = logging.getLogger(__name__)

DIGEST_NAME = "Engineering @ Scale"
MAX_POSTS = 8
MAX_PER_COMPANY = 2
MAX_DAYS = 366
# The posts beyond the cap are listed by title, up to this many.
MAX_LISTED = 25
# IDF weights come from the most recent posts published up to the window's
# end, so a digest for a past date does not change when newer posts arrive.
BACKGROUND_POSTS = 2000
BACKGROUND_WORDS = 200
# A post with less text than this counts for less in the signal score: a
# one-line feed summary is weak evidence of what a post is about.
FULL_TEXT_WORDS = 500
# A background contains its whole vocabulary: 8 MB for the 51,000 terms of
# the 1,275-post test corpus. Only the few most recently used are kept.
BACKGROUND_CACHE_SIZE = 4
BACKGROUND_CACHE: dict[tuple, Background] = {}
# Datasette builds digests in worker threads.
BACKGROUND_LOCK = threading.Lock()


def parse_date(value: str | Date) -> Date:
    """Return ``value`` as a date, accepting ``YYYY-MM-DD`` strings.

    Raises ConfigError naming the value when it is not a valid date.
    """
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, Date):
        return value
    try:
        return Date.fromisoformat(value.strip())
    except (AttributeError, ValueError) as error:
        raise ConfigError(
            f"Invalid digest date {value!r}: {error}.\n"
            "Give the date as YYYY-MM-DD, for example 2026-04-16."
        ) from error


def window_start(end: Date, days: int) -> Date:
    """Return the first day of the ``days``-day window that ends on ``end``.

    Raises ConfigError when ``days`` is not between 1 and MAX_DAYS.
    """
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ConfigError(
            f"Invalid digest window days={days!r}: it must be a whole number "
            f"from 1 to {MAX_DAYS}."
        )
    return end - timedelta(days=days - 1)


def build_digest(
    db: sqlite_utils.Database,
    date: str | Date,
    days: int = 1,
    max_posts: int = MAX_POSTS,
    max_per_company: int = MAX_PER_COMPANY,
    *,
    background: Background | None = None,
) -> Digest:
    """Build the digest of the posts published in ``[date - days + 1, date]``.

    Raises ConfigError for an invalid date, window or cap.

    Parameters
    ----------
    db
        The knowledge base, migrated by :func:`kb.db.open_db`.
    date
        The last day of the window (UTC), as a date or ``YYYY-MM-DD``.
    days
        The window's length in days, default 1.
    max_posts
        The maximum number of posts given a summary, the Signal of the Day
        included, default 8. The rest are listed by title.
    max_per_company
        The maximum number of summarised posts from one company, default 2.
    background
        TF-IDF weights from :func:`fit_background`, to share between several
        digests. By default they are fitted on the posts up to ``date``.
    """
    end = parse_date(date)
    start = window_start(end, days)
    if max_posts < 1 or max_per_company < 1:
        raise ConfigError(
            f"Invalid digest caps max_posts={max_posts}, "
            f"max_per_company={max_per_company}: both must be at least 1."
        )
    posts = load_window_posts(db, start, end)
    logger.info("digest %s..%s: %d posts", start, end, len(posts))
    title = digest_title(start, end)
    if not posts:
        return empty_digest(title, start, end, days)
    if background is None:
        background = cached_background(db, end)
    vectors, method = post_vectors(db, posts, background.vectorizer)
    scores, relatedness = signal_scores(posts, vectors)
    order = sorted(
        range(len(posts)),
        key=lambda index: (-scores[index], posts[index]["published"] or "", index),
    )
    chosen, rest = apply_caps(posts, order, max_posts, max_per_company)
    dives = [
        deep_dive(posts[index], scores[index], background.vectorizer)
        for index in chosen
    ]
    patterns, patterns_text, patterns_source = find_patterns(
        db, posts, background, days
    )
    signal_index = chosen[0]
    companies = sorted({post["company"] for post in posts})
    return Digest(
        title=title,
        date=end.isoformat(),
        start=start.isoformat(),
        days=days,
        post_count=len(posts),
        companies=companies,
        overview=overview(len(posts), companies, days),
        signal=dives[0],
        signal_reason=signal_reason(
            posts, signal_index, relatedness[signal_index], method
        ),
        deep_dives=dives[1:],
        more_posts=[post_ref(posts[index]) for index in rest[:MAX_LISTED]],
        more_count=len(rest),
        selection_rule=selection_rule(bool(rest), max_posts, max_per_company),
        patterns=patterns,
        patterns_text=patterns_text,
        patterns_source=patterns_source,
    )


def build_digests(
    db: sqlite_utils.Database, date: str | Date, count: int, **options
) -> list[Digest]:
    """Build one-day digests for the ``count`` days ending on ``date``, newest first.

    The digests share one background fitted on the posts up to ``date``, so
    they can differ slightly from digests built one at a time. Raises
    ConfigError for an invalid date or count; ``options`` go to
    :func:`build_digest`.
    """
    end = parse_date(date)
    start = window_start(end, count)
    background = options.pop("background", None) or cached_background(db, end)
    return [
        build_digest(
            db, start + timedelta(days=offset), background=background, **options
        )
        for offset in reversed(range(count))
    ]


def digest_title(start: Date, end: Date) -> str:
    """Return the title with the date: one day, or the range of a longer window."""
    if start == end:
        return f"{DIGEST_NAME}: {end:%A} {end.day} {end:%B %Y}"
    if (start.year, start.month) == (end.year, end.month):
        return f"{DIGEST_NAME}: {start.day}–{end.day} {end:%B %Y}"
    return f"{DIGEST_NAME}: {start.day} {start:%B %Y} – {end.day} {end:%B %Y}"


def empty_digest(title: str, start: Date, end: Date, days: int) -> Digest:
    """Return the short digest of a window with no posts."""
    return Digest(
        title=title,
        date=end.isoformat(),
        start=start.isoformat(),
        days=days,
        post_count=0,
        companies=[],
        overview=overview(0, [], days),
        signal=None,
        signal_reason="",
        patterns_text="No posts, so no patterns across companies.",
    )


def overview(count: int, companies: list[str], days: int) -> str:
    """Return the opening line: how many posts from which companies."""
    span = "on this day" if days == 1 else f"in these {days} days"
    if count == 0:
        return (
            f"No post in the knowledge base was published {span}, so there is "
            "nothing to digest. Ingest more feeds or choose another date."
        )
    posts = "1 post" if count == 1 else f"{count} posts"
    sources = "1 company" if len(companies) == 1 else f"{len(companies)} companies"
    return f"{posts} from {sources} {span}: {join_names(companies)}."


def load_window_posts(db: sqlite_utils.Database, start: Date, end: Date) -> list[dict]:
    """Return the posts published from ``start`` to ``end`` inclusive, with company.

    ``published`` is stored as UTC ISO 8601, so comparing strings with the
    day after ``end`` selects whole days and uses the index on ``published``.
    A post that two feeds of one company carry under different links (same
    title) is kept once, with its longer text.
    """
    rows = db.execute(
        """
        SELECT posts.id, posts.title, posts.url, posts.link, posts.published,
               posts.summary, posts.content_html, posts.content_text,
               posts.word_count, feeds.slug AS feed,
               COALESCE(NULLIF(TRIM(feeds.company), ''), NULLIF(TRIM(feeds.title), ''),
                        feeds.slug) AS company
        FROM posts JOIN feeds ON feeds.id = posts.feed_id
        WHERE posts.published >= ? AND posts.published < ?
        ORDER BY posts.published, posts.id
        """,
        [start.isoformat(), (end + timedelta(days=1)).isoformat()],
    )
    columns = [column[0] for column in rows.description]
    unique: dict[tuple[str, str], dict] = {}
    for values in rows.fetchall():
        post = dict(zip(columns, values, strict=True))
        title = " ".join((post["title"] or "").split())
        post["title"] = title or "(untitled)"
        # Untitled posts cannot be matched by title, so each one is kept.
        key = (post["company"], title.casefold() or f"#{post['id']}")
        kept = unique.get(key)
        if kept is None or (post["word_count"] or 0) > (kept["word_count"] or 0):
            unique[key] = post
    return list(unique.values())


def cached_background(db: sqlite_utils.Database, end: Date) -> Background:
    """Return the background for ``end``, reusing one fitted on the same posts.

    Fitting is most of the cost of a digest, and a server may build the same
    day's digest on every request. A cached background is reused while the
    database file, ``end``, the number of posts, the highest post id and the
    highest run id are unchanged, so an ingest run invalidates it. A post
    edited outside an ingest run keeps the old weights until then. In-memory
    databases are never cached.
    """
    path = db.execute("PRAGMA database_list").fetchone()[2]
    if not path:
        return fit_background(db, end)
    posts, newest_post = db.execute("SELECT COUNT(*), MAX(id) FROM posts").fetchone()
    newest_run = db.execute("SELECT MAX(id) FROM runs").fetchone()[0]
    key = (path, end, posts, newest_post, newest_run)
    with BACKGROUND_LOCK:
        background = BACKGROUND_CACHE.get(key)
    if background is None:
        # Fit outside the lock: two threads may both fit, and one result wins.
        background = fit_background(db, end)
    with BACKGROUND_LOCK:
        BACKGROUND_CACHE.pop(key, None)
        BACKGROUND_CACHE[key] = background
        while len(BACKGROUND_CACHE) > BACKGROUND_CACHE_SIZE:
            BACKGROUND_CACHE.pop(next(iter(BACKGROUND_CACHE)))
    return background


def fit_background(db: sqlite_utils.Database, end: str | Date) -> Background:
    """Fit TF-IDF weights on the posts published up to ``end``.

    The documents are the title and the first BACKGROUND_WORDS words of the
    BACKGROUND_POSTS most recent posts, with unigrams and bigrams, so a term
    common across the knowledge base ("data", "team") weighs little.
    """
    end = parse_date(end)
    rows = db.execute(
        """
        SELECT title, COALESCE(NULLIF(content_text, ''), summary) FROM posts
        WHERE published < ? ORDER BY published DESC LIMIT ?
        """,
        [(end + timedelta(days=1)).isoformat(), BACKGROUND_POSTS],
    ).fetchall()
    documents = [
        f"{title or ''} " + " ".join((text or "").split()[:BACKGROUND_WORDS])
        for title, text in rows
    ]
    vectorizer = TfidfVectorizer(
        stop_words="english", ngram_range=(1, 2), sublinear_tf=True
    )
    try:
        matrix = vectorizer.fit_transform(documents or [""])
    except ValueError:
        # No posts yet, or only stop words: fall back to a one-word vocabulary.
        matrix = vectorizer.fit_transform(["post"])
    frequency = np.bincount(matrix.indices, minlength=len(vectorizer.vocabulary_))
    return Background(vectorizer, vectorizer.get_feature_names_out(), frequency)


def post_vectors(
    db: sqlite_utils.Database, posts: list[dict], vectorizer: TfidfVectorizer
) -> tuple[np.ndarray | sparse.spmatrix, str]:
    """Return one L2-normalised vector per post and the name of the method.

    Stored post embeddings are used when every post in the window has one,
    since they compare meaning rather than shared words. Otherwise the posts
    get TF-IDF vectors from the background ``vectorizer``.

    Returns the vectors of shape (n_posts, dim), dense for embeddings and a
    sparse matrix for TF-IDF, and the method: "embedding" or "TF-IDF".
    """
    embeddings = stored_embeddings(db, [post["id"] for post in posts])
    if embeddings is not None:
        return embeddings, "embedding"
    # TF-IDF stays sparse: a week's posts over the background vocabulary
    # would take tens of megabytes as a dense array.
    return vectorizer.transform([post_document(post) for post in posts]), "TF-IDF"


def stored_embeddings(
    db: sqlite_utils.Database, post_ids: list[int]
) -> np.ndarray | None:
    """Return the stored post vectors for ``post_ids`` in order, or None.

    None means that embeddings are not available: the vector module or its
    tables are missing, or at least one of the posts has no vector yet.
    """
    if not db["vectors"].exists():
        return None
    try:
        from kb.vectors import load_post_vectors
    except ImportError:
        return None
    ids, vectors = load_post_vectors(db)
    rows = {int(post_id): row for row, post_id in enumerate(ids)}
    if not vectors.size or any(post_id not in rows for post_id in post_ids):
        logger.info("some posts have no embedding: comparing posts by TF-IDF")
        return None
    return vectors[[rows[post_id] for post_id in post_ids]]


def signal_scores(posts: list[dict], vectors) -> tuple[np.ndarray, np.ndarray]:
    """Score each post by how related it is to the other companies' posts.

    Relatedness is the mean cosine similarity to the window's posts from other
    companies, or to all other posts when one company wrote them all. The
    signal score multiplies it by a text weight that grows from 0.5 (a bare
    title) to 1 (FULL_TEXT_WORDS words or more), on a log scale.

    Returns the signal scores and the relatedness, each of shape (n_posts,).
    """
    similarity = vectors @ vectors.T
    if sparse.issparse(similarity):
        similarity = similarity.toarray()
    companies = np.array([post["company"] for post in posts])
    count = len(posts)
    relatedness = np.zeros(count)
    for index in range(count):
        others = companies != companies[index]
        if not others.any():
            others = np.arange(count) != index
        if others.any():
            relatedness[index] = similarity[index, others].mean()
    words = np.array([post["word_count"] or 0 for post in posts], dtype=float)
    weight = 0.5 + 0.5 * np.minimum(1.0, np.log1p(words) / math.log1p(FULL_TEXT_WORDS))
    return relatedness * weight, relatedness


def apply_caps(
    posts: list[dict], order: list[int], max_posts: int, max_per_company: int
) -> tuple[list[int], list[int]]:
    """Split post indexes, best first, into the summarised ones and the rest."""
    chosen: list[int] = []
    rest: list[int] = []
    per_company: dict[str, int] = {}
    for index in order:
        company = posts[index]["company"]
        if len(chosen) < max_posts and per_company.get(company, 0) < max_per_company:
            chosen.append(index)
            per_company[company] = per_company.get(company, 0) + 1
        else:
            rest.append(index)
    return chosen, rest


def deep_dive(post: dict, score: float, vectorizer: TfidfVectorizer) -> DeepDive:
    """Summarise one post for the digest."""
    paragraphs = summarize.post_paragraphs(
        post["content_html"], post["content_text"], post["summary"]
    )
    summary = summarize.summarize(post["title"], paragraphs, vectorizer)
    return DeepDive(post_ref(post), summary.sentences, summary.note, round(score, 4))


def signal_reason(
    posts: list[dict], index: int, relatedness: float, method: str
) -> str:
    """Return the sentence that states why a post is the Signal of the Day."""
    if len(posts) == 1:
        return "It is the only post published in this window."
    company = posts[index]["company"]
    others = {post["company"] for post in posts} - {company}
    if not others:
        return (
            "It is the post most related to the other posts in this window, all "
            f"from {company} (mean {method} cosine similarity {relatedness:.2f})."
        )
    return (
        f"It is the post most related to what {len(others)} other "
        f"{'company' if len(others) == 1 else 'companies'} published in this "
        f"window (mean {method} cosine similarity {relatedness:.2f}), counting "
        "posts with little text for less."
    )


def selection_rule(is_capped: bool, max_posts: int, max_per_company: int) -> str:
    """Return the sentence that states how posts were chosen for summaries."""
    if not is_capped:
        return "Every post in the window is summarised, highest signal score first."
    return (
        f"Posts are ranked by signal score. The top {max_posts} get a summary, "
        f"with at most {max_per_company} per company, and the rest are listed "
        "by title."
    )


def digest_text(
    db: sqlite_utils.Database,
    date: str | Date,
    days: int = 1,
    output_format: str = "markdown",
    max_posts: int = MAX_POSTS,
) -> str:
    """Build the digest of a window and render it in ``output_format``.

    ``markdown``, ``html`` and ``json`` render one digest of the whole window.
    ``atom`` renders a feed with one single-day digest per day of the window
    that has posts. Raises ConfigError for an unknown format, date or window.
    """
    if output_format == "atom":
        digests = build_digests(db, date, days, max_posts=max_posts)
        return render_atom([digest for digest in digests if not digest.is_empty])
    renderers = {
        "markdown": render_markdown,
        "html": render_html,
        "json": render_json,
    }
    if output_format not in renderers:
        raise ConfigError(
            f"Unknown digest format {output_format!r}.\n"
            f"Choose one of: {', '.join([*renderers, 'atom'])}."
        )
    digest = build_digest(db, date, days, max_posts=max_posts)
    return renderers[output_format](digest)
