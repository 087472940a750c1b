"""Readable topic labels from class-based TF-IDF.

Each cluster's documents are treated as one document. A term's weight in a
cluster is its frequency there (normalised by the cluster's length) times
``log(1 + A / f)``, where ``A`` is the mean number of terms per cluster and
``f`` the term's frequency over all clusters, the weighting BERTopic
popularised as c-TF-IDF. Terms frequent in one cluster and rare elsewhere
rise to the top.
"""

import logging

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

logger = logging.getLogger(__name__)

# Words that fill feed text without saying what a post is about: feed and
# newsletter furniture ("read more", "continue reading") and the generic verbs
# of product announcements.
FEED_STOP_WORDS = {
    "also", "announce", "announced", "announcing", "article", "blog", "business",
    "com", "continue", "excited", "free", "help", "helps", "href", "http",
    "https", "introducing", "just", "learn", "like", "make", "makes", "new",
    "news", "post", "posts", "read", "reading", "said", "says", "use", "used",
    "uses", "using", "way", "ways", "week", "weeks", "world", "www", "year",
    "years", "today", "time", "including", "work", "able", "need", "want",
    "better", "different", "know", "look", "let", "lets", "really", "thing",
    "things", "good", "great", "important", "based", "dear", "friends", "got",
    "going", "come", "comes", "came", "day", "days", "ll", "ve", "don", "lot",
    "lots", "think", "people", "actually", "probably", "maybe", "pretty",
}  # fmt: skip
STOP_WORDS = sorted(ENGLISH_STOP_WORDS | FEED_STOP_WORDS)
# Tokens start with a letter, so years, versions and counts are left out.
TOKEN_PATTERN = r"(?u)\b[^\W\d_][\w\-]*[^\W_]\b"
LABEL_TERMS = 3
# A term in at least this share of one feed's posts is that feed's
# boilerplate, such as "the batch" in every issue of a newsletter.
BOILERPLATE_SHARE = 0.5
BOILERPLATE_MIN_POSTS = 5
BOILERPLATE_SAMPLE = 200
MAX_VOCABULARY = 50_000


def cluster_terms(
    documents: list[str],
    labels: np.ndarray,
    k: int,
    *,
    n_terms: int = 10,
    sources: list | None = None,
) -> list[list[tuple[str, float]]]:
    """Return the most distinctive terms of each cluster, best first.

    Parameters
    ----------
    documents : list of str, of length n
        The text of each row (title and body).
    labels : ndarray of shape (n,)
        Cluster of each row, 0..k-1, or negative for unassigned rows, which
        are left out.
    k : int
        Number of clusters.
    n_terms : int, default=10
        Terms to return per cluster.
    sources : list, optional
        The feed of each row. Terms in most posts of one feed are that
        feed's boilerplate (its name, a newsletter's greeting) and are
        left out of the terms.

    Returns
    -------
    list of length k
        For each cluster, up to ``n_terms`` (term, weight) pairs. Clusters
        whose text contains no usable term get an empty list.
    """
    if k == 0:
        return []
    cluster_text = [[] for _ in range(k)]
    for document, label in zip(documents, labels, strict=True):
        if label >= 0:
            cluster_text[label].append(document or "")
    joined = [" ".join(texts) for texts in cluster_text]
    vectorizer = CountVectorizer(
        stop_words=STOP_WORDS,
        token_pattern=TOKEN_PATTERN,
        ngram_range=(1, 2),
        max_features=MAX_VOCABULARY,
        lowercase=True,
    )
    try:
        counts = vectorizer.fit_transform(joined).toarray().astype(np.float64)
    except ValueError:
        # CountVectorizer raises ValueError when no cluster contains a usable term.
        logger.info("no terms to label %d clusters", k)
        return [[] for _ in range(k)]
    weights = ctfidf(counts)
    if sources is not None:
        weights[:, boilerplate_columns(vectorizer, documents, sources)] = 0
    vocabulary = vectorizer.get_feature_names_out()
    terms = []
    for row in weights:
        top = np.argsort(-row, kind="stable")[: n_terms * 3]
        ranked = [(str(vocabulary[i]), float(row[i])) for i in top if row[i] > 0]
        terms.append(drop_redundant_terms(ranked)[:n_terms])
    return terms


def boilerplate_columns(
    vectorizer: CountVectorizer, documents: list[str], sources: list
) -> np.ndarray:
    """Return the vocabulary columns that are some feed's boilerplate.

    A term is boilerplate when at least BOILERPLATE_SHARE of one feed's posts
    contain it, and so is a bigram that contains such a word. Only feeds
    with at least BOILERPLATE_MIN_POSTS posts count, and at most
    BOILERPLATE_SAMPLE posts of each feed are read.
    """
    by_source: dict = {}
    for document, source in zip(documents, sources, strict=True):
        by_source.setdefault(source, []).append(document or "")
    columns = np.zeros(len(vectorizer.vocabulary_), dtype=bool)
    for texts in by_source.values():
        if len(texts) < BOILERPLATE_MIN_POSTS:
            continue
        present = vectorizer.transform(texts[:BOILERPLATE_SAMPLE]) > 0
        share = np.asarray(present.mean(axis=0)).ravel()
        columns |= share >= BOILERPLATE_SHARE
    # A bigram that contains a boilerplate word, such as "digest kubernetes"
    # after "Weekly digest: Kubernetes ...", is boilerplate too.
    vocabulary = vectorizer.get_feature_names_out()
    words = {term for term in vocabulary[columns] if " " not in term}
    for index, term in enumerate(vocabulary):
        if " " in term and words & set(term.split()):
            columns[index] = True
    return np.flatnonzero(columns)


def ctfidf(counts: np.ndarray) -> np.ndarray:
    """Weight a (clusters, terms) count matrix by class-based TF-IDF."""
    lengths = counts.sum(axis=1, keepdims=True)
    term_frequency = counts / np.where(lengths == 0, 1, lengths)
    total = counts.sum(axis=0)
    mean_length = counts.sum() / max(len(counts), 1)
    idf = np.log1p(mean_length / np.where(total == 0, 1, total))
    return term_frequency * idf


def drop_redundant_terms(ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Drop terms that repeat words of a better-ranked term.

    For example, after "load balancing" neither "load" nor "balancing" adds
    anything, and after "rust" the bigram "rust code" adds little.
    """
    kept: list[tuple[str, float]] = []
    seen_words: set[str] = set()
    for term, weight in ranked:
        words = set(term.split())
        if words <= seen_words:
            continue
        if any(set(other.split()) <= words for other, _ in kept) and len(words) > 1:
            continue
        kept.append((term, weight))
        seen_words |= words
    return kept


def label_from_terms(terms: list[tuple[str, float]], size: int = LABEL_TERMS) -> str:
    """Join the first few terms into a label such as "rust, memory safety"."""
    if not terms:
        return "(no terms)"
    return ", ".join(term for term, _ in terms[:size])
