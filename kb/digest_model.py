"""The data of a digest: the posts it cites, its summaries and its patterns.

The digest classes are plain dataclasses, so ``dataclasses.asdict`` gives the
JSON form. :class:`Background` is the TF-IDF model they are computed with.
"""

from dataclasses import dataclass, field

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer


@dataclass
class Background:
    """TF-IDF weights fitted on a background of posts.

    ``terms`` of shape (n_terms,) is the vocabulary of ``vectorizer`` in
    column order, and ``document_frequency`` of the same shape counts the
    background posts that contain each term.
    """

    vectorizer: TfidfVectorizer
    terms: np.ndarray
    document_frequency: np.ndarray


@dataclass
class PostRef:
    """A post as the digest cites it."""

    post_id: int
    title: str
    url: str | None
    company: str
    feed: str
    published: str | None


@dataclass
class DeepDive:
    """A post with its extractive summary and its signal score."""

    post: PostRef
    sentences: list[str]
    note: str | None
    signal_score: float


@dataclass
class Pattern:
    """A theme, topic or term that posts from several companies share."""

    name: str
    kind: str
    description: str
    companies: list[str]
    posts: list[PostRef] = field(default_factory=list)


@dataclass
class Digest:
    """One digest: the window it covers and its three sections."""

    title: str
    date: str
    start: str
    days: int
    post_count: int
    companies: list[str]
    overview: str
    signal: DeepDive | None
    signal_reason: str
    deep_dives: list[DeepDive] = field(default_factory=list)
    more_posts: list[PostRef] = field(default_factory=list)
    more_count: int = 0
    selection_rule: str = ""
    patterns: list[Pattern] = field(default_factory=list)
    patterns_text: str = ""
    patterns_source: str = ""

    @property
    def is_empty(self) -> bool:
        """Whether no post was published in the window."""
        return self.post_count == 0


def post_ref(post: dict) -> PostRef:
    """Return the citation of a post row."""
    return PostRef(
        post_id=post["id"],
        title=post["title"],
        url=post["url"] or post["link"],
        company=post["company"],
        feed=post["feed"],
        published=post["published"],
    )


def post_document(post: dict) -> str:
    """Return the text that stands for a post when comparing posts."""
    text = post["content_text"] or post["summary"] or ""
    return f"{post['title']} {post['title']} {text}"
