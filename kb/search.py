"""Search posts by keyword (FTS5), by meaning (vectors) or both (hybrid).

:func:`search` is the one entry point for the CLI, the Datasette plugin and
the notebooks. The hybrid mode fuses the ranks of both arms with reciprocal
rank fusion (RRF): a post at rank r in an arm adds ``weight / (RRF_K + r)``.
"""

import logging
import re
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

from kb import vectors
from kb.errors import SearchError
from kb.query import fts_query, query_phrases

logger = logging.getLogger(__name__)

MODES = ("hybrid", "keyword", "semantic")
# How many posts each arm ranks before fusion.
ARM_DEPTH = 100
RRF_K = 60
KEYWORD_WEIGHT = 1.0
SEMANTIC_WEIGHT = 1.0
# Title matches count ten times as much as body matches in bm25.
BM25 = "bm25(posts_fts, 10.0, 1.0)"
SNIPPET_TOKENS = 24
FALLBACK_SNIPPET_CHARS = 200


@dataclass
class SearchResult:
    """One post found by :func:`search`, with the rank it got in each arm.

    ``keyword_rank`` and ``semantic_rank`` are 1-based, or None when the post
    was not in that arm's top ``ARM_DEPTH``. ``snippet`` is HTML-escaped text
    with the matched words wrapped in ``<mark>`` tags.
    """

    post_id: int
    url: str
    title: str | None
    company: str | None
    source: str
    published: str | None
    score: float
    keyword_rank: int | None
    semantic_rank: int | None
    snippet: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Filters:
    """The SQL condition on ``posts AS p JOIN feeds AS f`` that filters apply."""

    where: str
    params: list

    @property
    def is_empty(self) -> bool:
        return not self.params


def search(
    db,
    query: str,
    *,
    mode: str = "hybrid",
    limit: int = 10,
    source: str | None = None,
    since: str | date | None = None,
    until: str | date | None = None,
    topic: int | str | None = None,
    model_name: str | None = None,
) -> list[SearchResult]:
    """Search the posts of ``db`` for ``query``, best first.

    Raises SearchError for an unknown mode, a limit below 1, an invalid date,
    an unknown topic, or a semantic search on a database with no vectors;
    ModelError when the stored vectors come from another model.

    Parameters
    ----------
    db
        A sqlite_utils.Database opened with :func:`kb.db.open_db`.
    query
        Any text. Words are matched as typed, "quoted phrases" as phrases,
        and FTS5 operators (AND, OR, NOT, NEAR, ``*``) as plain words.
    mode
        ``hybrid`` (default), ``keyword`` or ``semantic``.
    limit
        The largest number of results.
    source
        Keep posts whose feed slug or company is this, ignoring case.
    since, until
        Keep posts published on or after ``since`` and on or before ``until``
        (``YYYY-MM-DD`` or a full ISO 8601 time, UTC).
    topic
        Keep posts assigned to this topic id or label (the post_topics table).
    model_name
        The embedding model, as for :func:`kb.embed.get_embedder`.
    """
    if mode not in MODES:
        raise SearchError(
            f"Invalid search mode {mode!r}: expected one of {', '.join(MODES)}."
        )
    if limit < 1:
        raise SearchError(f"Invalid limit={limit}: it must be at least 1.")
    filters = build_filters(db, source, since, until, topic)
    depth = max(limit, ARM_DEPTH) if mode == "hybrid" else limit
    keyword = []
    semantic = []
    if mode in ("hybrid", "keyword"):
        keyword = keyword_ranking(db, query, depth, filters)
    if mode in ("hybrid", "semantic"):
        semantic = semantic_ranking(
            db, query, depth, filters, model_name, required=mode == "semantic"
        )
    fused = fuse(keyword, semantic, phrase_matches(db, query, filters))
    return describe(db, query, fused[:limit], keyword, semantic)


def parse_date(value: str | date | None, name: str) -> str | None:
    """Return ``value`` as an ISO 8601 date, or time in UTC; raise SearchError.

    A bare date stays a date (``2024-05-31``), so it covers the whole day in
    either bound. A time without a zone is taken as UTC.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        return utc_iso(datetime.fromisoformat(text))
    except ValueError:
        raise SearchError(
            f"Invalid {name} date {value!r}: use YYYY-MM-DD, such as 2024-05-31."
        ) from None


def utc_iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def build_filters(db, source, since, until, topic) -> Filters:
    """Translate the source, date and topic filters into one SQL condition."""
    clauses, params = [], []
    if source:
        clauses.append("(lower(f.slug) = lower(?) OR lower(f.company) = lower(?))")
        params += [source.strip(), source.strip()]
    start = parse_date(since, "since")
    end = parse_date(until, "until")
    if start:
        clauses.append("p.published >= ?")
        params.append(start)
    if end:
        # A bare date means the whole day: compare on the date part only.
        clauses.append("substr(p.published, 1, ?) <= ?")
        params += [len(end), end]
    if topic is not None and topic != "":
        clauses.append("p.id IN (SELECT post_id FROM post_topics WHERE topic_id = ?)")
        params.append(topic_id(db, topic))
    return Filters(" AND ".join(clauses) or "1", params)


def topic_id(db, topic: int | str) -> int:
    """Resolve a topic id or label to an id, or raise SearchError."""
    if "topics" not in db.table_names():
        raise SearchError(
            f"Cannot filter on topic {topic!r}: the database has no topics yet.\n"
            "Fit topics first, or search without a topic."
        )
    text = str(topic).strip()
    if text.isdigit():
        row = db.execute("SELECT id FROM topics WHERE id = ?", [int(text)]).fetchone()
    else:
        row = db.execute(
            "SELECT id FROM topics WHERE lower(label) = lower(?)", [text]
        ).fetchone()
    if row is None:
        raise SearchError(
            f"Unknown topic {topic!r}: no topic has that id or label.\n"
            "List topics with: SELECT id, label FROM topics"
        )
    return row[0]


def allowed_posts(db, filters: Filters) -> set[int] | None:
    if filters.is_empty:
        return None
    sql = (
        "SELECT p.id FROM posts AS p JOIN feeds AS f ON f.id = p.feed_id "
        f"WHERE {filters.where}"
    )
    return {row[0] for row in db.execute(sql, filters.params)}


def keyword_ranking(db, query: str, depth: int, filters: Filters) -> list[int]:
    """Rank posts by bm25 over their title and text; return post ids."""
    match = fts_query(query)
    if not match:
        return []
    sql = (
        "SELECT posts_fts.rowid FROM posts_fts "
        "JOIN posts AS p ON p.id = posts_fts.rowid "
        "JOIN feeds AS f ON f.id = p.feed_id "
        f"WHERE posts_fts MATCH ? AND {filters.where} "
        f"ORDER BY {BM25} LIMIT ?"
    )
    return [row[0] for row in db.execute(sql, [match, *filters.params, depth])]


def semantic_ranking(
    db, query: str, depth: int, filters: Filters, model_name, *, required: bool
) -> list[int]:
    """Rank posts by the cosine similarity of their best vector; return post ids."""
    from kb.embed import get_embedder

    text = " ".join(query.replace('"', " ").split())
    if not text:
        return []
    embedder = get_embedder(model_name)
    if vectors.stored_model(db)[0] is None:
        if required:
            raise SearchError(
                "No post vectors in the database, so a semantic search cannot run.\n"
                "Embed the posts with: kb embed"
            )
        logger.warning("no post vectors yet: hybrid search uses keywords only")
        return []
    vectors.check_model(db, embedder.name)
    query_vector = embedder.encode([text])[0]
    allowed = allowed_posts(db, filters)
    nearest = vectors.nearest_posts(db, query_vector, depth, allowed=allowed)
    return [post_id for post_id, _ in nearest]


def phrase_matches(db, query: str, filters: Filters) -> set[int]:
    """Return the posts that contain every quoted phrase of ``query``."""
    phrases = query_phrases(query)
    if not phrases:
        return set()
    match = " AND ".join(phrases)
    sql = (
        "SELECT posts_fts.rowid FROM posts_fts "
        "JOIN posts AS p ON p.id = posts_fts.rowid "
        "JOIN feeds AS f ON f.id = p.feed_id "
        f"WHERE posts_fts MATCH ? AND {filters.where}"
    )
    return {row[0] for row in db.execute(sql, [match, *filters.params])}


def fuse(
    keyword: list[int], semantic: list[int], exact: set[int]
) -> list[tuple[int, float]]:
    """Fuse two rankings with RRF; posts holding every quoted phrase come first."""
    scores: dict[int, float] = {}
    for weight, ranking in ((KEYWORD_WEIGHT, keyword), (SEMANTIC_WEIGHT, semantic)):
        for rank, post_id in enumerate(ranking, start=1):
            scores[post_id] = scores.get(post_id, 0.0) + weight / (RRF_K + rank)
    return sorted(
        scores.items(), key=lambda item: (item[0] not in exact, -item[1], item[0])
    )


def describe(db, query, fused, keyword, semantic) -> list[SearchResult]:
    """Load the post fields and snippets of the fused results."""
    if not fused:
        return []
    ids = [post_id for post_id, _ in fused]
    placeholders = ", ".join("?" * len(ids))
    rows = db.execute(
        "SELECT p.id, p.url, p.title, f.company, f.slug, p.published, "
        "substr(coalesce(p.content_text, p.summary, ''), 1, ?) "
        "FROM posts AS p JOIN feeds AS f ON f.id = p.feed_id "
        f"WHERE p.id IN ({placeholders})",
        [FALLBACK_SNIPPET_CHARS, *ids],
    )
    posts = {row[0]: row for row in rows}
    snippets = keyword_snippets(db, query, ids)
    keyword_ranks = {post_id: rank for rank, post_id in enumerate(keyword, start=1)}
    semantic_ranks = {post_id: rank for rank, post_id in enumerate(semantic, start=1)}
    results = []
    for post_id, score in fused:
        _, url, title, company, slug, published, start = posts[post_id]
        snippet = snippets.get(post_id) or escape_html(start)
        results.append(
            SearchResult(
                post_id=post_id,
                url=url,
                title=title,
                company=company,
                source=slug,
                published=published,
                score=round(score, 6),
                keyword_rank=keyword_ranks.get(post_id),
                semantic_rank=semantic_ranks.get(post_id),
                snippet=snippet,
            )
        )
    return results


# Control characters that cannot occur in feed text mark the matches inside an
# FTS5 snippet until the text around them is escaped.
OPEN_MARK, CLOSE_MARK = "\x02", "\x03"


def keyword_snippets(db, query: str, ids: list[int]) -> dict[int, str]:
    """Return highlighted body snippets of the posts whose text matches ``query``."""
    match = fts_query(query)
    if not match:
        return {}
    placeholders = ", ".join("?" * len(ids))
    # Column 1 is content_text: the title is shown apart from the snippet.
    rows = db.execute(
        f"SELECT rowid, snippet(posts_fts, 1, '{OPEN_MARK}', '{CLOSE_MARK}', '…', "
        f"{SNIPPET_TOKENS}) FROM posts_fts "
        f"WHERE posts_fts MATCH ? AND rowid IN ({placeholders})",
        [match, *ids],
    )
    snippets = {}
    for post_id, text in rows:
        if text and OPEN_MARK in text:
            marked = escape_html(text).replace(OPEN_MARK, "<mark>")
            snippets[post_id] = marked.replace(CLOSE_MARK, "</mark>")
    return snippets


def escape_html(text: str | None) -> str:
    text = re.sub(r"\s+", " ", text or "").strip()
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
