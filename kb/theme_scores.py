"""Score posts against theme descriptions and pick each theme's members.

A post's score for a theme adds three standardised signals, each a z-score
over the corpus (so that their scales match):

* the cosine similarity of the post vector (the mean of its chunk vectors)
  to the vector of the theme's name and description;
* the same for the post's first chunk, its title and opening, which a long
  post's mean vector dilutes;
* the TF-IDF cosine between the post (title counted twice, then text) and
  the theme's name, description and keywords, over stemmed words and
  bigrams. It rewards the rare terms a theme is named by ("on-device",
  "postmortem"), which the small embedding model rates low.

A post joins a theme when its score is MEMBER_Z standard deviations above
the corpus mean for that theme: the cut follows each theme's own score
distribution instead of a fixed similarity, which differs between themes
and models.
"""

import logging
import re
from dataclasses import dataclass

import numpy as np
import sqlite_utils
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

logger = logging.getLogger(__name__)

# Weights of the post vector, first chunk and TF-IDF signals.
POST_WEIGHT = 0.5
FIRST_CHUNK_WEIGHT = 1.0
LEXICAL_WEIGHT = 1.5
MEMBER_Z = 3.0
# Characters of post text read for the TF-IDF signal.
TEXT_CHARS = 5_000


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
    model : str
        Name of the model that made the vectors.
    """

    post_ids: np.ndarray
    post_vectors: np.ndarray
    first_chunks: np.ndarray
    documents: list[str]
    model: str


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
            title = post["title"] or ""
            text = (post["content_text"] or "")[:TEXT_CHARS]
            documents[row] = f"{title}\n{title}\n{text}"
    return Corpus(post_ids, post_vectors, first_chunks, documents, model or "")


def score_themes(corpus: Corpus, themes: list) -> np.ndarray:
    """Score every post against every theme.

    Parameters
    ----------
    corpus : Corpus
    themes : list of kb.themes.Theme

    Returns
    -------
    ndarray of shape (n_posts, n_themes)
        The weighted sum of the three standardised signals, standardised
        again, so a score is in standard deviations above the corpus mean.
    """
    from kb.embed import get_embedder

    n = len(corpus.post_ids)
    if not themes or n == 0:
        return np.zeros((n, len(themes)), dtype=np.float32)
    queries = get_embedder(corpus.model or None).encode([t.query for t in themes])
    combined = (
        POST_WEIGHT * standardise(corpus.post_vectors @ queries.T)
        + FIRST_CHUNK_WEIGHT * standardise(corpus.first_chunks @ queries.T)
        + LEXICAL_WEIGHT * standardise(lexical_scores(corpus.documents, themes))
    )
    return standardise(combined)


def lexical_scores(documents: list[str], themes: list) -> np.ndarray:
    """Return the TF-IDF cosine of each document to each theme's text.

    Returns an array of shape (n_documents, n_themes); all zeros when no
    document has a word that two documents share.
    """
    vectorizer = TfidfVectorizer(
        tokenizer=stemmed_words,
        lowercase=False,
        token_pattern=None,
        ngram_range=(1, 2),
        min_df=2,
        sublinear_tf=True,
    )
    queries = [" ".join([t.query, *t.keywords]) for t in themes]
    try:
        matrix = vectorizer.fit_transform(documents)
    except ValueError:
        # Raised when no term is left after min_df, as in a corpus of one post.
        return np.zeros((len(documents), len(themes)), dtype=np.float32)
    return (matrix @ vectorizer.transform(queries).T).toarray().astype(np.float32)


def standardise(scores: np.ndarray) -> np.ndarray:
    """Turn each column into z-scores; a constant column becomes zeros."""
    spread = scores.std(axis=0)
    return (scores - scores.mean(axis=0)) / np.where(spread == 0, 1, spread)


def select_members(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """Pick the rows scoring at least MEMBER_Z; return them (best first) and the cut.

    ``scores`` are z-scores from score_themes, so the cut is MEMBER_Z
    standard deviations above the corpus mean.
    """
    rows = np.flatnonzero(scores >= MEMBER_Z)
    return rows[np.argsort(-scores[rows], kind="stable")], MEMBER_Z


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
