"""Turn any user text into a safe SQLite FTS5 query.

FTS5 gives meaning to quotes, ``*``, ``^``, ``:``, parentheses, ``-`` and the
words AND, OR, NOT and NEAR, so raw user text can raise a syntax error or
mean something else. :func:`fts_query` keeps only letters and digits, quotes
every term, and joins the terms with OR, so bm25 ranks posts by how many of
the words they hold and how rare those words are.
"""

import re

# FTS5's unicode61 tokenizer splits on everything that is not a letter or a
# digit; the underscore is a separator too ("parse_json" is two tokens).
TOKEN = re.compile(r"[^\W_]+")
# A query keeps its first 64 terms. bm25 scores every term separately, so
# the cost of a search grows with its terms, and a pasted page has thousands.
MAX_TERMS = 64
QUOTED = re.compile(r'"([^"]*)"')
# Characters that end a word, besides white space: "NEAR(flags" is two words,
# while "cf-html" and "parse_json" are one word of two tokens each.
# "Uber's" should find "Uber", not only the two tokens "uber s" in a row.
POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
WORD_BREAK = re.compile(r"[\s()\[\]{},;!?\"]+")

# Words too common to help ranking, dropped unless the query has nothing else.
STOPWORDS = frozenset(
    """a about after all also an and any are as at be been but by can could did do
    does for from had has have how i if in into is it its may more most my no not
    of on or our over so some such than that the their them then there these they
    this those through to too up us very was we were what when where which while
    who why will with would you your""".split()
)


def phrase(words: list[str]) -> str:
    """Quote tokens as one FTS5 string: a single term, or a phrase of several."""
    return '"' + " ".join(words) + '"'


def query_terms(text: str) -> list[str]:
    """Return the FTS5 strings of ``text``: one per word, one per quoted phrase.

    Words ending in ``*`` become prefix queries; other operators are words.

    A word that contains separators, such as ``cf-html`` or ``parse_json()``,
    becomes a phrase of its tokens, so it matches the same tokens in a row.
    """
    terms, plain = [], []
    for match in QUOTED.finditer(text):
        tokens = TOKEN.findall(match.group(1))
        if tokens:
            terms.append(phrase(tokens))
    # An unbalanced quote is left over here; it is not a letter, so it goes.
    for word in WORD_BREAK.split(QUOTED.sub(" ", text)):
        tokens = TOKEN.findall(POSSESSIVE.sub("", word))
        if tokens:
            plain.append((tokens, word.endswith("*")))
    kept = [
        (tokens, prefix)
        for tokens, prefix in plain
        if len(tokens) > 1 or prefix or tokens[0].lower() not in STOPWORDS
    ]
    for tokens, prefix in kept if kept or terms else plain:
        # A trailing star requests a prefix match: "prox*" matches "proxy".
        terms.append(phrase(tokens) + (" *" if prefix else ""))
    unique = {}
    for term in terms:
        unique.setdefault(term.lower(), term)
    return list(unique.values())[:MAX_TERMS]


def fts_query(text: str) -> str:
    """Return an FTS5 MATCH expression for any ``text``; empty when it has no words.

    Examples: ``C++ templates`` gives ``"C" OR "templates"``; ``"exact phrase"
    NEAR x`` gives ``"exact phrase" OR "NEAR" OR "x"``.
    """
    return match_any(query_terms(text or ""))


def match_any(terms: list[str]) -> str:
    """Join FTS5 terms into an expression that matches a row containing any of them."""
    return " OR ".join(terms)


def query_phrases(text: str) -> list[str]:
    """Return the quoted phrases of ``text`` as FTS5 phrase strings."""
    phrases = []
    for match in QUOTED.finditer(text or ""):
        tokens = TOKEN.findall(match.group(1))
        if tokens:
            phrases.append(phrase(tokens))
    return phrases
