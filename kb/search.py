"""Search posts by keyword (FTS5), by meaning (vectors) or both (hybrid).

:func:`search` is the one entry point for the CLI, the Datasette plugin and
the notebooks. The hybrid mode fuses the ranks of both arms with reciprocal
rank fusion (RRF): a post at rank r in an arm adds ``weight / (RRF_K + r)``.
"""

import bisect
import functools
import logging
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

from kb import vectors
from kb.errors import SearchError
from kb.query import STOPWORDS, TOKEN, match_any, query_phrases, query_terms

logger = logging.getLogger(__name__)

MODES = ("hybrid", "keyword", "semantic")
# How many posts each arm ranks before fusion. On the dev queries depths of
# 20 to 50 scored the same and 100 slightly lower; vec0's cost grows with it.
ARM_DEPTH = 50
# Fusion settings chosen on the 33 dev queries: with k in 2..4 and a semantic
# weight in 1.25..1.5 hybrid scores MRR@10 0.917 to 0.939 there, so the
# middle of that range is used. A small k lets first places dominate, which
# suits known-item search, where the target is usually first in one arm.
RRF_K = 3
KEYWORD_WEIGHT = 1.0
SEMANTIC_WEIGHT = 1.3
# Title matches count three times as much as body matches in bm25. Weights
# of 1 to 3 gave the best hybrid results on the dev queries; 10 let titles
# that share one query word crowd out the target.
BM25_RANK = "bm25(3.0, 1.0)"
# A query term is common when more than this share of the posts contain it,
# and more than COMMON_TERM_MIN posts, so that a small database has none. The
# keyword arm skips the posts that contain only common terms. At 100,000
# posts, 3% scored the dev queries as well as 10% in about 40% less keyword
# time, while 2% and 1% lost targets (benchmarks/search_speed.py).
COMMON_TERM_SHARE = 0.03
COMMON_TERM_MIN = 100
FILTERED_IDS = (
    "SELECT p.id FROM posts AS p JOIN feeds AS f ON f.id = p.feed_id WHERE {where}"
)
# Embeds the query of a hybrid search, and with the numpy backend scans the
# vectors, while the calling thread runs the keyword arm. Both run at once
# because torch, numpy and SQLite release the GIL. There is one worker per
# CPU, and at least two, so that concurrent searches (such as Datasette's SQL
# threads) scan at the same time. The model's lock embeds one query at a time.
_query_encoder = ThreadPoolExecutor(
    max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="kb-query"
)
SNIPPET_CHARS = 200
SNIPPET_SCAN_CHARS = 4000
# Stop looking for a better snippet window after this many matching words.
MAX_SNIPPET_HITS = 50


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
    finish_semantic = None
    if mode in ("hybrid", "semantic"):
        finish_semantic = semantic_ranking(
            db,
            query,
            model_name,
            depth,
            filters,
            required=mode == "semantic",
            background=mode == "hybrid",
        )
    if mode in ("hybrid", "keyword"):
        keyword = keyword_ranking(db, query, depth, filters)
    semantic = finish_semantic() if finish_semantic is not None else []
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
    source = (source or "").strip()
    if source:
        clauses.append("(lower(f.slug) = lower(?) OR lower(f.company) = lower(?))")
        params += [source, source]
    start = parse_date(since, "since")
    end = parse_date(until, "until")
    if start and end and start[:10] > end[:10]:
        raise SearchError(
            f"Invalid date range: since {since} is after until {until}.\n"
            "Swap the two dates."
        )
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
    if text.isascii() and text.isdigit():
        number = int(text)
        # SQLite integers are 64-bit, so a larger id cannot name a topic.
        fits = number < 2**63
        query = "SELECT id FROM topics WHERE id = ?"
        row = db.execute(query, [number]).fetchone() if fits else None
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
    sql = FILTERED_IDS.format(where=filters.where)
    return {row[0] for row in db.execute(sql, filters.params)}


def keyword_ranking(
    db, query: str, depth: int, filters: Filters
) -> list[tuple[int, float]]:
    """Rank posts by bm25 over their title and text; return (post id, -bm25).

    A post that contains none of the query's distinctive terms (see
    :func:`split_terms`) is left out, which spares ranking the many posts
    that contain only common words. Every other post gets the bm25 score of
    the whole query. bm25 adds one share per term, so "rare AND common" and
    "rare NOT common" score their posts exactly as "rare OR common" would.
    """
    terms = query_terms(query)
    if not terms:
        return []
    distinct, common = split_terms(db, terms)
    if distinct and common:
        rare = match_any(distinct)
        usual = match_any(common)
        ranked = bm25_ranking(db, f"({rare}) AND ({usual})", depth, filters)
        ranked += bm25_ranking(db, f"({rare}) NOT ({usual})", depth, filters)
        return sorted(ranked, key=lambda item: (-item[1], item[0]))[:depth]
    return bm25_ranking(db, match_any(terms), depth, filters)


def bm25_ranking(
    db, match: str, depth: int, filters: Filters
) -> list[tuple[int, float]]:
    # "rank MATCH" lets FTS5 sort by its own rank column, about twice as fast
    # as ORDER BY bm25(...) in SQLite 3.51.
    sql = "SELECT rowid, -rank FROM posts_fts WHERE posts_fts MATCH ? AND rank MATCH ?"
    params = [match, BM25_RANK]
    if not filters.is_empty:
        sql += f" AND rowid IN ({FILTERED_IDS.format(where=filters.where)})"
        params += filters.params
    sql += " ORDER BY rank LIMIT ?"
    return [(row[0], row[1]) for row in db.execute(sql, [*params, depth])]


def split_terms(db, terms: list[str]) -> tuple[list[str], list[str]]:
    """Split query terms into distinctive ones and those that many posts contain.

    A term is common when more than COMMON_TERM_SHARE of the posts, and more
    than COMMON_TERM_MIN, contain it. Counting stops past that many matches,
    so a common term costs a bounded scan. A term that no post contains is in
    neither list, since it adds nothing to any score.
    """
    if len(terms) < 2:
        return terms, []
    newest = db.execute("SELECT max(id) FROM posts").fetchone()[0] or 0
    cap = max(COMMON_TERM_MIN, int(newest * COMMON_TERM_SHARE))
    count = (
        "SELECT count(*) FROM (SELECT 1 FROM posts_fts WHERE posts_fts MATCH ? LIMIT ?)"
    )
    distinct, common = [], []
    for term in terms:
        matches = db.execute(count, [term, cap + 1]).fetchone()[0]
        if matches > cap:
            common.append(term)
        elif matches:
            distinct.append(term)
    return distinct, common


def semantic_ranking(
    db, query, model_name, depth, filters, *, required: bool, background: bool
) -> Callable[[], list[tuple[int, float]]] | None:
    """Start the semantic arm and return a function that gives its ranking.

    Returns None when the query has no words, or when the database has no
    vectors and ``required`` is false. With ``background``, the query is
    embedded on a worker thread while the caller runs the keyword arm. With
    the numpy backend that thread also scans the vectors, because the scan
    does not use the connection.
    """
    from kb.embed import get_embedder

    if not query_terms(query):
        return None
    text = " ".join(query.replace('"', " ").split())
    embedder = get_embedder(model_name)
    if vectors.stored_model(db)[0] is None:
        if required:
            raise SearchError(
                "No post vectors in the database, so a semantic search cannot run.\n"
                "Embed the posts with: kb embed"
            )
        logger.warning("no post vectors yet: hybrid search uses keywords only")
        return None
    vectors.check_model(db, embedder.name)
    allowed = allowed_posts(db, filters)
    if allowed is not None and not allowed:
        return lambda: []
    if not background:
        ranking = vectors.nearest_posts(
            db, embedder.encode_query(text), depth, allowed=allowed
        )
        return lambda: ranking
    scan = vectors.matrix_scanner(db)
    if scan is not None:
        pending = _query_encoder.submit(
            lambda: scan(embedder.encode_query(text), depth, allowed)
        )
        return pending.result
    pending = _query_encoder.submit(embedder.encode_query, text)
    return lambda: vectors.nearest_posts(db, pending.result(), depth, allowed=allowed)


def phrase_matches(db, query: str, filters: Filters) -> set[int]:
    """Return the posts that contain every quoted phrase of ``query``."""
    phrases = query_phrases(query)
    if not phrases:
        return set()
    sql = "SELECT rowid FROM posts_fts WHERE posts_fts MATCH ?"
    if not filters.is_empty:
        sql += f" AND rowid IN ({FILTERED_IDS.format(where=filters.where)})"
    rows = db.execute(sql, [" AND ".join(phrases), *filters.params])
    return {row[0] for row in rows}


def fuse(
    keyword: list[tuple[int, float]],
    semantic: list[tuple[int, float]],
    exact: set[int],
) -> list[tuple[int, float]]:
    """Fuse two rankings with RRF; posts holding every quoted phrase come first.

    When one arm is empty, the other's own scores are kept.
    """
    if not semantic or not keyword:
        ranking = keyword or semantic
        return sorted(ranking, key=lambda item: item[0] not in exact)
    scores: dict[int, float] = {}
    for weight, ranking in ((KEYWORD_WEIGHT, keyword), (SEMANTIC_WEIGHT, semantic)):
        for rank, (post_id, _) in enumerate(ranking, start=1):
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
        "coalesce(p.content_text, p.summary, '') "
        "FROM posts AS p JOIN feeds AS f ON f.id = p.feed_id "
        f"WHERE p.id IN ({placeholders})",
        ids,
    )
    posts = {row[0]: row for row in rows}
    keyword_ranks = {post_id: rank for rank, (post_id, _) in enumerate(keyword, 1)}
    semantic_ranks = {post_id: rank for rank, (post_id, _) in enumerate(semantic, 1)}
    results = []
    for post_id, score in fused:
        _, url, title, company, slug, published, text = posts[post_id]
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
                snippet=make_snippet(text, query),
            )
        )
    return results


def make_snippet(text: str | None, query: str, width: int = SNIPPET_CHARS) -> str:
    """Cut about ``width`` characters around the densest query matches in ``text``.

    Returns HTML-escaped text with each matching word wrapped in ``<mark>``;
    with no match, the start of the text. A word matches a query term when it
    starts with the term less its last three letters (at least four letters
    are kept), a rough stand-in for the porter stemmer of the FTS5 index:
    "shedding" marks "shedder" and "shedding", "databases" marks "database".
    """
    # NOTE: only the start of a long post is searched for matches, to keep
    # snippets cheap, so a word that first appears later is not shown.
    text = " ".join((text or "")[:SNIPPET_SCAN_CHARS].split())
    pattern = term_pattern(query)
    hits = []
    if pattern is not None:
        for match in pattern.finditer(text):
            hits.append(match.start())
            if len(hits) >= MAX_SNIPPET_HITS:
                break
    start = window_start(text, hits, width)
    end = text.rfind(" ", start, start + width) if start + width < len(text) else -1
    end = len(text) if end <= start else end
    excerpt = highlight(text[start:end], pattern)
    prefix = "… " if start > 0 else ""
    suffix = " …" if end < len(text) or len(text) >= SNIPPET_SCAN_CHARS - 1 else ""
    return prefix + excerpt + suffix


def window_start(text: str, hits: list[int], width: int) -> int:
    """Return where to start the snippet: a little before the densest hits."""
    if not hits:
        return 0
    best, best_count = hits[0], 0
    for position, hit in enumerate(hits):
        count = bisect.bisect_left(hits, hit + width, lo=position) - position
        if count > best_count:
            best, best_count = hit, count
    # Start at a word boundary, up to 30 characters before the first match.
    space = text.rfind(" ", 0, max(0, best - 30))
    return 0 if space < 0 else space + 1


@functools.lru_cache(maxsize=256)
def term_pattern(query: str) -> re.Pattern | None:
    stems = set()
    for term in query_terms(query):
        for token in TOKEN.findall(term):
            token = token.lower()
            if token in STOPWORDS:
                continue
            stems.add(token[: max(4, len(token) - 3)] if len(token) > 4 else token)
    if not stems:
        return None
    alternatives = "|".join(sorted(map(re.escape, stems), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})\w*", re.IGNORECASE)


def highlight(text: str, pattern: re.Pattern | None) -> str:
    """Escape ``text`` for HTML and wrap each match of ``pattern`` in ``<mark>``.

    Matching runs on the raw text, so a query word such as "amp" never marks
    part of an escaped "&amp;".
    """
    pieces, done = [], 0
    for match in pattern.finditer(text) if pattern is not None else ():
        pieces.append(escape_html(text[done : match.start()]))
        pieces.append(f"<mark>{escape_html(match.group(0))}</mark>")
        done = match.end()
    pieces.append(escape_html(text[done:]))
    return "".join(pieces)


def escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
