"""Score posts against theme descriptions and pick each theme's members.

A post's score for a theme adds two standardised signals, each a z-score
over the corpus (so that their scales match):

* the cosine similarity of the post's first chunk (its title and opening)
  to the vector of the theme's name and description;
* the TF-IDF cosine between the post (title counted twice, then text) and
  the theme's name, description and keywords, over stemmed words and
  bigrams. It rewards the rare terms a theme is named by ("on-device",
  "postmortem"), which the small embedding model rates low.

Scoring runs twice (pseudo-relevance feedback): the FEEDBACK_POSTS best
posts of the first pass move both theme queries towards their mean, which
brings in the words and vectors that member posts share but the one-sentence
description lacks.

A newsletter issue whose title lists several headlines (``is_digest``) is
matched on its text only, because the headlines name other subjects than
the editorial the issue is about.

A post joins a theme when its score reaches MEMBER_SHARE of the mean score
of the theme's FEEDBACK_POSTS best posts, and at least MIN_MEMBER_Z. A cut
relative to the best posts follows each theme's own score distribution:
a broad theme, whose members sit among many related posts, gets lower
z-scores than a narrow one.
"""

import logging
import re
from dataclasses import dataclass

import numpy as np
import sqlite_utils
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

logger = logging.getLogger(__name__)

# Weights of the first-chunk and TF-IDF signals.
FIRST_CHUNK_WEIGHT = 1.0
LEXICAL_WEIGHT = 1.5
# Best posts of the first pass that the theme queries move towards, and how
# far: the weight of their mean next to the unit-length original query.
FEEDBACK_POSTS = 10
VECTOR_FEEDBACK = 0.3
LEXICAL_FEEDBACK = 0.3
# A member scores at least this share of the mean of the best posts' scores,
# and at least MIN_MEMBER_Z standard deviations above the corpus mean.
# NOTE: chosen on three labelled themes over 1,275 posts, where 0.42 and
# 0.46 each miss 0.7 precision or recall on one theme; other themes and
# much larger corpora may need another share.
MEMBER_SHARE = 0.44
MIN_MEMBER_Z = 2.0
# Characters of post text read for the TF-IDF signal.
TEXT_CHARS = 5_000
# A title with this many comma- or semicolon-separated headlines (of two
# words or more, not starting in lower case) is a newsletter issue.
DIGEST_HEADLINES = 3


@dataclass
class Corpus:
    """Embedded posts, aligned by row.

    Attributes
    ----------
    post_ids : ndarray of shape (n,)
    post_vectors : ndarray of shape (n, dim)
        Mean of each post's chunk vectors, L2-normalised.
    first_chunks : ndarray of shape (n, dim)
        Vector of each post's first chunk (its title and opening).
    documents : list of str, of length n
        Title, title again and the first TEXT_CHARS of the text of each post.
        A newsletter issue (see is_digest) has the text only.
    model : str
        Name of the model that made the vectors.
    """

    post_ids: np.ndarray
    post_vectors: np.ndarray
    first_chunks: np.ndarray
    documents: list[str]
    model: str


@dataclass
class LexicalIndex:
    """TF-IDF rows of the corpus documents and the vectorizer that made them."""

    vectorizer: TfidfVectorizer | None
    matrix: sparse.csr_matrix | None

    def queries(self, texts: list[str]) -> sparse.csr_matrix | None:
        """Return the TF-IDF rows of ``texts``, or None for an empty index."""
        return None if self.vectorizer is None else self.vectorizer.transform(texts)

    def scores(self, queries, n_documents: int, n_queries: int) -> np.ndarray:
        """Return the dot product of every document row with every query row.

        Returns zeros of shape (n_documents, n_queries) for an empty index.
        """
        if self.matrix is None or queries is None:
            return np.zeros((n_documents, n_queries), dtype=np.float32)
        return np.asarray((self.matrix @ queries.T).todense(), dtype=np.float32)


def load_corpus(db: sqlite_utils.Database, model_name: str | None = None) -> Corpus:
    """Load the post vectors, first-chunk vectors and text of every embedded post.

    Raises ModelError when the stored vectors were made by another model than
    ``model_name``.
    """
    from kb.vectors import load_post_vectors, stored_model, unpack_rows

    post_ids, post_vectors = load_post_vectors(db, model_name)
    model, dim = stored_model(db)
    row_of = {int(post_id): row for row, post_id in enumerate(post_ids)}
    # A post without a chunk row keeps its post vector as its first chunk.
    first_chunks = post_vectors.copy()
    chunks = db.execute(
        "SELECT post_id, vector FROM vectors WHERE chunk = 0 ORDER BY post_id"
    ).fetchall()
    chunks = [chunk for chunk in chunks if chunk[0] in row_of]
    if chunks:
        rows = [row_of[chunk[0]] for chunk in chunks]
        first_chunks[rows] = unpack_rows([chunk[1] for chunk in chunks], dim or 0)
    documents = [""] * len(post_ids)
    for post in db.query("SELECT id, title, content_text FROM posts"):
        row = row_of.get(post["id"])
        if row is not None:
            documents[row] = lexical_document(post["title"], post["content_text"])
    return Corpus(post_ids, post_vectors, first_chunks, documents, model or "")


def lexical_document(title: str | None, text: str | None) -> str:
    """Return the text matched word by word: title twice, then the text.

    A newsletter issue keeps only its text, whose opening is its editorial.
    """
    text = (text or "")[:TEXT_CHARS]
    if is_digest(title):
        return text
    title = title or ""
    return f"{title}\n{title}\n{text}"


def is_digest(title: str | None) -> bool:
    """Return whether ``title`` lists several headlines, as a newsletter issue does.

    "Pop Song Generators, 3D Mesh Generators, Real-World Benchmarks" is one;
    "Reproducible, Verifiable, Verified Builds" (one-word parts) and
    "Shutdowns, power outages, and conflict" (lower-case parts) are not.
    """
    parts = re.split(r"[,;]\s+", title or "")
    headlines = [
        part for part in parts if len(part.split()) >= 2 and not part[0].islower()
    ]
    return len(headlines) >= DIGEST_HEADLINES


def score_themes(corpus: Corpus, themes: list) -> np.ndarray:
    """Score every post against every theme, with one round of feedback.

    Parameters
    ----------
    corpus : Corpus
    themes : list of kb.themes.Theme

    Returns
    -------
    ndarray of shape (n_posts, n_themes)
        The weighted sum of the standardised signals, standardised again,
        so a score is in standard deviations above the corpus mean.
    """
    from kb.embed import get_embedder

    n = len(corpus.post_ids)
    if not themes or n == 0:
        return np.zeros((n, len(themes)), dtype=np.float32)
    vector_queries = get_embedder(corpus.model or None).encode(
        [t.query for t in themes]
    )
    index = lexical_index(corpus.documents)
    lexical_queries = index.queries([" ".join([t.query, *t.keywords]) for t in themes])
    first_pass = combine(corpus, index, vector_queries, lexical_queries)
    best = best_rows(first_pass, FEEDBACK_POSTS)
    vector_queries = vector_feedback(corpus, vector_queries, best)
    if lexical_queries is not None:
        lexical_queries = lexical_feedback(index.matrix, lexical_queries, best)
    return combine(corpus, index, vector_queries, lexical_queries)


def combine(corpus: Corpus, index: LexicalIndex, vector_queries, lexical_queries):
    """Return the standardised weighted sum of the two signals for each query."""
    lexical = index.scores(lexical_queries, len(corpus.documents), len(vector_queries))
    combined = FIRST_CHUNK_WEIGHT * standardise(
        corpus.first_chunks @ vector_queries.T
    ) + LEXICAL_WEIGHT * standardise(lexical)
    return standardise(combined)


def best_rows(scores: np.ndarray, count: int) -> np.ndarray:
    """Return, for each column, the rows of its ``count`` highest scores.

    Returns an array of shape (min(count, n_rows), n_columns), in no order.
    """
    count = min(count, scores.shape[0])
    return np.argpartition(-scores, count - 1, axis=0)[:count]


def vector_feedback(
    corpus: Corpus, queries: np.ndarray, best: np.ndarray
) -> np.ndarray:
    """Move each query vector towards the mean vector of its best posts."""
    moved = np.empty_like(queries)
    for column, rows in enumerate(best.T):
        mean = (corpus.post_vectors[rows] + corpus.first_chunks[rows]).mean(axis=0)
        moved[column] = queries[column] + VECTOR_FEEDBACK * unit(mean)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def lexical_feedback(
    matrix: sparse.csr_matrix, queries: sparse.csr_matrix, best: np.ndarray
) -> sparse.csr_matrix:
    """Add to each TF-IDF query the mean TF-IDF row of its best posts (Rocchio)."""
    moved = []
    for column, rows in enumerate(best.T):
        query = queries[column].toarray().ravel()
        mean = np.asarray(matrix[rows].mean(axis=0)).ravel()
        moved.append(unit(query) + LEXICAL_FEEDBACK * unit(mean))
    return sparse.csr_matrix(np.vstack(moved))


def unit(vector: np.ndarray) -> np.ndarray:
    """Scale ``vector`` to length 1; a zero vector stays zero."""
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


def lexical_index(documents: list[str]) -> LexicalIndex:
    """Fit TF-IDF over stemmed words and bigrams of ``documents``.

    The index is empty when no word occurs in two documents, as in a corpus
    of one post.
    """
    vectorizer = TfidfVectorizer(
        tokenizer=stemmed_words,
        lowercase=False,
        token_pattern=None,
        ngram_range=(1, 2),
        min_df=2,
        sublinear_tf=True,
    )
    try:
        matrix = vectorizer.fit_transform(documents)
    except ValueError:
        # Raised when no term is left after min_df.
        return LexicalIndex(None, None)
    return LexicalIndex(vectorizer, matrix.tocsr())


def lexical_scores(documents: list[str], themes: list) -> np.ndarray:
    """Return the TF-IDF cosine of each document to each theme's text.

    Returns an array of shape (n_documents, n_themes); all zeros when no
    word occurs in two documents.
    """
    index = lexical_index(documents)
    queries = index.queries([" ".join([t.query, *t.keywords]) for t in themes])
    return index.scores(queries, len(documents), len(themes))


def standardise(scores: np.ndarray) -> np.ndarray:
    """Turn each column into z-scores; a constant column becomes zeros."""
    spread = scores.std(axis=0)
    return (scores - scores.mean(axis=0)) / np.where(spread == 0, 1, spread)


def member_cut(scores: np.ndarray) -> float:
    """Return the lowest score of a member: MEMBER_SHARE of the best posts' mean.

    ``scores`` are one theme's z-scores from score_themes; the cut is never
    below MIN_MEMBER_Z.
    """
    if len(scores) == 0:
        return MIN_MEMBER_Z
    best = scores[best_rows(scores[:, None], FEEDBACK_POSTS)[:, 0]]
    return max(MIN_MEMBER_Z, MEMBER_SHARE * float(best.mean()))


def select_members(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the rows at or above member_cut, best first, and the cut."""
    cut = member_cut(scores)
    rows = np.flatnonzero(scores >= cut)
    return rows[np.argsort(-scores[rows], kind="stable")], cut


# Tried in order; the first whose removal leaves 4 letters or more is cut, so
# "outage" and "outages" both become "outag".
STEM_SUFFIXES = (
    "ations", "ation", "ating", "ated", "ates", "ate", "ings", "ing", "ies",
    "es", "ed", "s", "e",
)  # fmt: skip
WORD = re.compile(r"[a-z][a-z0-9\-]+")


def stem(word: str) -> str:
    """Cut a common English suffix, so "benchmarking" matches "benchmarks"."""
    for suffix in STEM_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def stemmed_words(text: str) -> list[str]:
    """Return the stemmed words of ``text`` that are not English stop words."""
    return [
        stem(word)
        for word in WORD.findall(text.lower())
        if word not in ENGLISH_STOP_WORDS
    ]
