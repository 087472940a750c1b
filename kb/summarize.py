"""Extractive summaries of posts: split the text into sentences, keep the central ones.

A summary is three or four sentences quoted from the post, in the post's order.
Sentences are scored by TF-IDF cosine similarity to the centroid of the post's
sentences, with a bonus for sharing words with the title and for appearing early.
The selection then prefers covering three roles that a reader of an engineering
post looks for: the problem, what the team did, and the result or tradeoff.

Boilerplate never reaches the scorer: code blocks, image captions, share and
navigation lists, acknowledgement sections, author bios, "originally published"
footers, hiring and sign-up prompts are dropped first.
"""

import logging
import re
from dataclasses import dataclass

import numpy as np
from bs4 import BeautifulSoup
from sklearn.feature_extraction.text import TfidfVectorizer

logger = logging.getLogger(__name__)

MIN_SENTENCES = 3
MAX_SENTENCES = 4
MAX_SUMMARY_CHARS = 750
MIN_WORDS = 6
MIN_WORDS_FALLBACK = 3
MAX_WORDS = 60
TITLE_WEIGHT = 0.3
LEAD_WEIGHT = 0.1
# Sentences at least this similar repeat each other, so only the better is kept.
MAX_OVERLAP = 0.6

# Abbreviations whose final period does not end a sentence. "etc." is left
# out because it often ends a sentence.
ABBREVIATIONS = frozenset(
    """a.k.a al approx cf co corp dept dr e.g eg est fig figs i.e ie inc jr ltd mr
    mrs ms mt no nos p.s ph.d prof pp sr st u.k u.s vol vs""".split()
)
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
SENTENCE_START = re.compile(r"[\"'“‘(\[]?[A-Z0-9]")
# Scraped feeds sometimes join paragraphs with no space: "across the
# web.Agents are". A space goes between a lowercase word's final stop and a
# capitalised word. "Node.js" and "v2.Beta" do not match.
GLUED_SENTENCES = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z]+\b)")
SENTENCE_FINAL = re.compile(r"[.!?][\"'”’)\]]*$")

BLOCK_TAGS = ["p", "li", "blockquote", "dd", "td"]
HEADING_TAGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
DROPPED_TAGS = [
    "pre",
    "script",
    "style",
    "figure",
    "figcaption",
    "img",
    "picture",
    "video",
    "audio",
    "iframe",
    "svg",
    "table",
    "nav",
    "aside",
    "footer",
    "form",
    "button",
    "noscript",
]
# A heading like these starts the back matter: nothing after it is summarised.
BACK_MATTER = re.compile(
    r"^(acknowledge?ments?|about the authors?|references|footnotes|credits|"
    r"further reading|related (posts|articles|reading)|appendix|"
    r"(join|work with) us|we('re| are) hiring|careers?)\b",
    re.IGNORECASE,
)
# A block whose text is mostly link text is a share bar, a menu or a link list.
MAX_LINK_DENSITY = 0.6

BOILERPLATE = re.compile(
    r"originally published (in|on|at)\b"
    r"|appeared first on\b"
    r"|\bsign up\b"
    r"|\bsubscribe (to|for) (our|this)\b"
    r"|\bsubscribe to the (newsletter|blog|podcast|channel|mailing list)\b"
    r"|\bfollow (us|me)\b"
    r"|\bfollow\b.{0,40}\b(twitter|linkedin|mastodon|bluesky|facebook|youtube)\b"
    r"|^(download|try|get started)\b.{0,80}\b(today|now)\b"
    r"|^editor[’']?s note"
    r"|\bshare (this|on)\b"
    r"|opens in (a )?new window"
    r"|we('re| are) hiring|join (our|the) team|open (roles|positions)"
    r"|related positions|check out our (jobs|careers|open)"
    r"|\binterested in (working|joining)\b|if this (type|kind) of work interests"
    r"|more stories like this|continue reading|read (the )?more\b|click here"
    r"|^learn more\b|^read on\b"
    r"|would like to thank|special thanks|\bthanks to\b|\backnowledg"
    r"|all product names, logos"
    r"|let us know in the comments|leave a comment"
    r"|this (post|article) (was|is) (also )?(cross-?)?posted"
    r"|listen to the (full )?(episode|podcast)|download or listen"
    r"|^(figure|fig\.|image|photo|source|credit|caption)\s*\d*\s*[:.(]"
    r"|^(photo|image) (by|courtesy)\b"
    r"|^about the author"
    r"|^(\w+ ){1,3}(is|was) an? ([\w-]+ ){0,4}(engineer|scientist|manager|developer|"
    r"researcher|architect|director|designer|intern|lead|founder)\b",
    re.IGNORECASE,
)
# A sentence that points at a figure or table makes no sense without it:
# "As shown in Figure 2 below, Ray is at the top of the stack."
FIGURE_REFERENCE = re.compile(
    r"\b(as )?shown (in|below|above)\b"
    r"|\bsee (figure|fig\.|table|diagram)"
    r"|\b(figure|fig\.|diagram|chart|table|screenshot|graph)s?( \d+)? (below|above)\b",
    re.IGNORECASE,
)
# Characters that are rare in prose and common in code and shell commands.
CODE_CHARACTERS = set("{}[]();=<>_$\\|`#*/")
MAX_CODE_CHARACTER_SHARE = 0.08
CODE_PATTERN = re.compile(
    r"(=>|::|->|\)\s*[{;]|^\s*[$>]\s|^(import|from|def|func|class|return|const|let|"
    r"var|public|private|SELECT|curl|npm|pip|git|kubectl|docker)\s)"
)

PROBLEM_CUES = re.compile(
    r"\b(problem|challeng|difficult|bottleneck|pain|struggl|limitation|"
    r"could ?n[o']t|did ?n[o']t scale|slow|outage|incident|failure|fail|"
    r"need(ed)? to|hard to|costly|expensive|complex)",
    re.IGNORECASE,
)
ACTION_CUES = re.compile(
    r"\bwe (built|designed|created|introduced|developed|moved|migrated|replaced|"
    r"added|implemented|wrote|rewrote|launched|used|switched|adopted|made|trained|"
    r"released|changed|decided|chose|extended|deployed)\b"
    r"|\b(introduc|approach|solution|architecture)",
    re.IGNORECASE,
)
RESULT_CUES = re.compile(
    r"\d+(\.\d+)?\s?(%|x\b|×|ms\b|percent|times)"
    r"|\b(result|reduc|improv|faster|lower|saved|increas|tradeoff|trade-off|"
    r"at the cost|downside|however|outcome|now (runs|serves|handles))",
    re.IGNORECASE,
)
ROLES = (PROBLEM_CUES, ACTION_CUES, RESULT_CUES)
# A role is only filled by a sentence scoring at least this share of the best.
MIN_ROLE_SCORE_SHARE = 0.5


@dataclass(frozen=True)
class Summary:
    """Sentences quoted from a post, in the post's order.

    ``note`` explains an empty or short summary, such as a post whose feed
    carries only a title.
    """

    sentences: list[str]
    note: str | None = None


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences.

    A sentence ends at ``.``, ``!``, ``?`` or ``…`` (with any closing quotes or
    brackets) followed by white space and a capital letter or a digit. Periods
    inside version numbers (``Python 3.11``), URLs and file names are never
    followed by white space, so they do not split. A period after a known
    abbreviation (``e.g.``, ``Dr.``), after a single letter (``J. Smith``) or
    after an initialism (``U.S.``) does not split either.
    """
    text = GLUED_SENTENCES.sub(" ", " ".join(text.split()))
    sentences = []
    start = 0
    for match in SENTENCE_END.finditer(text):
        following = text[match.end() :]
        if not SENTENCE_START.match(following):
            continue
        if ends_with_abbreviation(text[start : match.start() + 1]):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def ends_with_abbreviation(fragment: str) -> bool:
    """Return whether ``fragment``, ending in a period, ends in an abbreviation."""
    if not fragment.endswith("."):
        return False
    words = fragment[:-1].split()
    if not words:
        return False
    word = words[-1].lstrip("\"'“‘([").lower()
    if word in ABBREVIATIONS:
        return True
    # "J. Smith" and "U.S. Army": a single letter, or letters joined by periods.
    return bool(re.fullmatch(r"[a-z]|([a-z]\.)+[a-z]", word))


def extract_paragraphs(html: str) -> list[str]:
    """Return the prose paragraphs of sanitised post HTML, without boilerplate.

    Code blocks, figures and captions, tables and media are removed. Blocks
    whose text is mostly links (share bars, menus) are skipped, and a heading
    such as "Acknowledgements" or "About the author" ends the prose.
    """
    soup = BeautifulSoup(html, "lxml")
    for tag in soup.find_all(DROPPED_TAGS):
        tag.decompose()
    blocks = soup.find_all(BLOCK_TAGS + HEADING_TAGS)
    if not blocks:
        return [line for line in soup.get_text("\n").splitlines() if line.strip()]
    paragraphs = []
    for line_break in soup.find_all("br"):
        line_break.replace_with(" ")
    for block in blocks:
        # Inline tags join without a separator: "<a>DoorDash</a>, Deel".
        text = " ".join(block.get_text().split())
        if block.name in HEADING_TAGS:
            if BACK_MATTER.match(text):
                break
            continue
        # Take only innermost blocks, so a <li> that wraps a <p> counts once.
        if block.find(BLOCK_TAGS) or not text:
            continue
        if link_density(block, text) > MAX_LINK_DENSITY:
            continue
        paragraphs.append(text)
    return paragraphs


def link_density(block, text: str) -> float:
    """Return the share of a block's text that sits inside links."""
    linked = sum(len(" ".join(a.get_text(" ").split())) for a in block.find_all("a"))
    return linked / max(len(text), 1)


def post_paragraphs(
    content_html: str | None, content_text: str | None, summary: str | None
) -> list[str]:
    """Return a post's paragraphs from the best source it has.

    Sanitised HTML is preferred because its structure shows code blocks,
    captions and link lists. Without HTML, the plain text is split on line
    breaks, and without text the feed's summary is used.
    """
    if content_html and content_html.strip():
        paragraphs = extract_paragraphs(content_html)
        if paragraphs:
            return paragraphs
    for text in (content_text, summary):
        if text and text.strip():
            return [line for line in text.splitlines() if line.strip()]
    return []


def is_boilerplate(sentence: str) -> bool:
    """Return whether a sentence is a footer, a prompt, a credit or a caption."""
    return bool(BOILERPLATE.search(sentence))


def looks_like_code(text: str) -> bool:
    """Return whether a line of text reads as code or a shell command rather than prose.

    For example ``const x = f(y);`` and ``$ pip install kb`` are code, while
    ``We moved the queue (Kafka) to a new cluster.`` is prose.
    """
    if CODE_PATTERN.search(text):
        return True
    symbols = sum(character in CODE_CHARACTERS for character in text)
    return symbols / max(len(text), 1) > MAX_CODE_CHARACTER_SHARE


def candidate_sentences(paragraphs: list[str], *, strict: bool = True) -> list[str]:
    """Return the sentences fit to quote: prose of a readable length.

    ``strict=False`` also accepts questions and sentences of MIN_WORDS_FALLBACK
    words or more, for posts that have nothing else.
    """
    candidates = []
    for paragraph in paragraphs:
        if looks_like_code(paragraph) and not paragraph.rstrip().endswith("."):
            continue
        for sentence in split_sentences(paragraph):
            if is_quotable(sentence, strict=strict):
                candidates.append(sentence)
    return candidates


def is_quotable(sentence: str, *, strict: bool = True) -> bool:
    """Return whether a sentence is complete, readable prose and not boilerplate."""
    words = len(sentence.split())
    min_words = MIN_WORDS if strict else MIN_WORDS_FALLBACK
    if not min_words <= words <= MAX_WORDS:
        return False
    # A feed summary cut off mid-sentence ends in an ellipsis or "[…]", and a
    # paragraph that leads into a list ends in a colon.
    if sentence.endswith(("…", "...", "[…]", "[...]")):
        return False
    final = SENTENCE_FINAL.search(sentence)
    if final is None:
        return False
    # Questions are mostly rhetorical or interview prompts ("What is your
    # favourite paper?"), which say little about the post on their own.
    if strict and final.group().startswith("?"):
        return False
    # A sentence split out of a parenthesis: "(In fact, we turned it on."
    if sentence.count("(") != sentence.count(")"):
        return False
    # A lowercase start is the tail of a sentence that markup cut in two.
    if strict and sentence[0].islower():
        return False
    if FIGURE_REFERENCE.search(sentence):
        return False
    return not is_boilerplate(sentence) and not looks_like_code(sentence)


def summarize(
    title: str,
    paragraphs: list[str],
    vectorizer: TfidfVectorizer | None = None,
    *,
    max_sentences: int = MAX_SENTENCES,
    max_chars: int = MAX_SUMMARY_CHARS,
) -> Summary:
    """Choose up to ``max_sentences`` central sentences of a post.

    Parameters
    ----------
    title
        The post's title, which lends a bonus to sentences that share its words.
    paragraphs
        The post's prose, as returned by :func:`post_paragraphs`.
    vectorizer
        A fitted TF-IDF vectorizer whose IDF comes from a background of posts.
        Without one, a vectorizer is fitted on the post's own sentences.
    max_sentences
        The maximum number of sentences, default 4. At least 3 are kept when
        the post has them and ``max_chars`` allows.
    max_chars
        The length bound of the summary in characters, default 750. A first
        sentence longer than the bound is still kept.
    """
    if not paragraphs:
        return Summary([], "The feed carries no text for this post, only its title.")
    # Short feed summaries ("Faster builds with remote caching.") fall below
    # the usual minimum length, so a post without longer sentences gets them.
    sentences = candidate_sentences(paragraphs) or candidate_sentences(
        paragraphs, strict=False
    )
    if not sentences:
        return Summary(
            [],
            "The post has no prose sentences to quote: its text is "
            "code, lists or fragments.",
        )
    if len(sentences) <= MIN_SENTENCES:
        chosen = fit_length(sentences, list(range(len(sentences))), max_chars)
        return Summary([sentences[index] for index in chosen])
    scores, similarity = score_sentences(title, sentences, vectorizer)
    chosen = choose_sentences(sentences, scores, similarity, max_sentences, max_chars)
    return Summary([sentences[index] for index in sorted(chosen)])


def score_sentences(
    title: str, sentences: list[str], vectorizer: TfidfVectorizer | None
) -> tuple[np.ndarray, np.ndarray]:
    """Score sentences by centrality, title overlap and position.

    Returns the scores of shape (n_sentences,) and the cosine similarities
    between sentences, of shape (n_sentences, n_sentences).
    """
    count = len(sentences)
    if vectorizer is None:
        vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        try:
            vectorizer.fit(sentences + [title])
        except ValueError:
            # Every word is a stop word ("It is what it is."): keep the order.
            return np.linspace(1.0, 0.0, count), np.eye(count)
    # The vectors stay sparse: the background vocabulary has 10^5 terms.
    vectors = vectorizer.transform(sentences)
    centroid = np.asarray(vectors.mean(axis=0)).ravel()
    norm = np.linalg.norm(centroid)
    centrality = vectors @ (centroid / norm) if norm else np.zeros(count)
    title_vector = vectorizer.transform([title])
    title_overlap = (vectors @ title_vector.T).toarray().ravel()
    lead = 1.0 - np.arange(count) / count
    scores = centrality + TITLE_WEIGHT * title_overlap + LEAD_WEIGHT * lead
    return scores, (vectors @ vectors.T).toarray()


def choose_sentences(
    sentences: list[str],
    scores: np.ndarray,
    similarity: np.ndarray,
    max_sentences: int,
    max_chars: int,
) -> list[int]:
    """Pick sentence indexes: one per role where a good one exists, then the best.

    A sentence too similar to one already chosen is skipped, and no pick may
    push the summary past ``max_chars``.
    """
    order = [int(index) for index in np.argsort(-scores, kind="stable")]
    best = scores[order[0]]
    preferred = []
    for cue in ROLES:
        for index in order:
            if scores[index] < MIN_ROLE_SCORE_SHARE * best:
                break
            if cue.search(sentences[index]):
                preferred.append(index)
                break
    chosen: list[int] = []
    length = 0
    for index in dict.fromkeys(preferred + order):
        if len(chosen) >= max_sentences:
            break
        size = len(sentences[index]) + 1
        if chosen and length + size > max_chars:
            continue
        if any(similarity[index, other] > MAX_OVERLAP for other in chosen):
            continue
        chosen.append(index)
        length += size
    return chosen


def fit_length(sentences: list[str], indexes: list[int], max_chars: int) -> list[int]:
    """Keep indexes in order while the sentences fit in ``max_chars``."""
    kept = []
    length = 0
    for index in indexes:
        size = len(sentences[index]) + 1
        if kept and length + size > max_chars:
            break
        kept.append(index)
        length += size
    return kept
