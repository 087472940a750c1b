"""Split post text into overlapping chunks that fit an embedding model.

A chunk is a span of the original text, cut at token boundaries, so a chunk
never contains more tokens than the model reads. Consecutive chunks share
``overlap`` tokens, so a sentence cut at one boundary is whole in a neighbour.
"""

import re
from collections.abc import Callable, Sequence

# A tokenizer returns, for one text, the (start, end) character offsets of
# each token, in order.
OffsetTokenizer = Callable[[str], Sequence[tuple[int, int]]]

WORD = re.compile(r"\S+")


def whitespace_offsets(text: str) -> list[tuple[int, int]]:
    """Return the character offsets of the whitespace-separated words of ``text``."""
    return [match.span() for match in WORD.finditer(text)]


def split_chunks(
    text: str,
    tokenize: OffsetTokenizer,
    max_tokens: int,
    overlap: int,
    max_chunks: int | None = None,
) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens.

    Raises ValueError when ``max_tokens`` is not positive or ``overlap`` is not
    smaller than it.

    Parameters
    ----------
    text
        The text to split; blank text gives no chunks.
    tokenize
        Returns the character offsets of each token of a text.
    max_tokens
        The largest number of tokens in one chunk.
    overlap
        How many tokens each chunk repeats from the end of the one before.
    max_chunks
        Stop after this many chunks; None keeps them all.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got max_tokens={max_tokens}")
    if not 0 <= overlap < max_tokens:
        raise ValueError(
            f"overlap must be in [0, max_tokens), got overlap={overlap}, "
            f"max_tokens={max_tokens}"
        )
    offsets = list(tokenize(text))
    if not offsets:
        return []
    step = max_tokens - overlap
    chunks = []
    for start in range(0, len(offsets), step):
        window = offsets[start : start + max_tokens]
        chunks.append(text[window[0][0] : window[-1][1]])
        if start + max_tokens >= len(offsets):
            break
        if max_chunks is not None and len(chunks) >= max_chunks:
            break
    return chunks
