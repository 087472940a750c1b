"""Turn the bytes of a feed into clean entries: text, sanitised HTML, UTC dates.

feedparser does the format work (RSS 0.9x to 2.0, RSS 1.0/RDF, Atom, legacy
encodings, entities, CDATA, ``xml:base`` and relative links). This module adds
what a knowledge base needs on top: canonical links, one plain-text body per
post, sanitised HTML, dates that are either real or absent, and a clear
ParseError for bytes that are not a feed at all.
"""

import calendar
import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import feedparser
import nh3
from bs4 import BeautifulSoup
from lxml import etree
from lxml import html as lxml_html

from kb.errors import ParseError

logger = logging.getLogger(__name__)

# Query parameters that only track where a click came from. Medium appends
# ?source=rss----2615bd06b42e---4 to every link of its feeds.
TRACKING_PARAMETERS = {
    "fbclid",
    "gclid",
    "dclid",
    "msclkid",
    "yclid",
    "mc_cid",
    "mc_eid",
    "mkt_tok",
    "_hsenc",
    "_hsmi",
    "igshid",
    "ref",
    "ref_src",
    "source",
    "sr_share",
    "cmpid",
    "ocid",
}
TRACKING_PREFIXES = ("utm_", "pk_", "hsa_", "ns_", "wt_")

# Dates before this are placeholders such as the Unix epoch, not publication
# dates (an RSS item with <dc:date>0</dc:date> parses as 1970-01-01).
EARLIEST_PLAUSIBLE_YEAR = 1991
# Clock skew and time zones put honest dates at most a day or two ahead.
LATEST_PLAUSIBLE_AHEAD = timedelta(days=7)
SUMMARY_CHARS = 600
# An href or src whose value is not already absolute. The lookahead covers the
# optional quote too, so a quoted absolute URL never matches by backtracking.
RELATIVE_ATTRIBUTE = re.compile(
    r"""\b(?:href|src)\s*=\s*(?!["']?(?:[a-zA-Z][a-zA-Z0-9+.-]*:|#))"""
)
DROPPED_ELEMENTS = (
    ".//script|.//style|.//noscript|.//template|.//svg|.//iframe|.//comment()"
)
BLOCK_TAGS = (
    "p div br li ul ol h1 h2 h3 h4 h5 h6 pre blockquote table tr section "
    "article header footer figure figcaption hr dd dt"
).split()


@dataclass
class ParsedEntry:
    """One entry of a feed, cleaned and ready to store."""

    guid: str | None
    link: str | None
    url: str | None
    title: str | None
    author: str | None
    published: str | None
    updated: str | None
    summary: str | None
    content_html: str | None
    content_text: str
    content_hash: str
    fingerprint: str
    word_count: int


@dataclass
class ParsedFeed:
    """A parsed feed document: its metadata, its entries and any warnings."""

    title: str | None
    homepage: str | None
    self_url: str | None
    version: str
    entries: list[ParsedEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_feed(
    data: bytes,
    *,
    name: str,
    base_url: str | None = None,
    content_type: str | None = None,
) -> ParsedFeed:
    """Parse feed bytes into a ParsedFeed.

    Raises ParseError, naming ``name`` and the reason, when the bytes hold no
    feed: an HTML page, an empty body, or XML too broken to recover anything.
    A document that is not well-formed but still yields entries is accepted,
    and the parser's complaint is kept in ``warnings``.

    Parameters
    ----------
    data
        The raw bytes, as fetched or read from disk.
    name
        The URL or file name, used in messages.
    base_url
        The URL the bytes came from, against which relative links resolve.
    content_type
        The HTTP Content-Type header, which may declare the encoding.
    """
    if not data or not data.strip():
        raise ParseError(f"{name}: empty document, not a feed")
    headers = {}
    if base_url:
        headers["content-location"] = base_url
    if content_type:
        headers["content-type"] = content_type
    parsed = feedparser.parse(data, response_headers=headers, sanitize_html=True)
    warnings = []
    if parsed.bozo:
        warnings.append(f"{name}: {describe_bozo(parsed.bozo_exception)}")
    if not parsed.version and not parsed.entries:
        raise ParseError(f"{name}: not a feed ({not_a_feed_reason(data, parsed)})")
    feed = parsed.feed
    result = ParsedFeed(
        title=detail_text(feed, "title") or None,
        homepage=feed.get("link"),
        self_url=self_link(feed),
        version=parsed.version or "unknown",
        warnings=warnings,
    )
    # Links still relative after xml:base resolve against the channel link,
    # as readers do: <link>/en/news/10743874</link> in an RSS item.
    link_base = base_url or absolute(result.homepage) or absolute(result.self_url)
    # feedparser already resolved links inside content against base_url.
    content_base = None if base_url else link_base
    for entry in parsed.entries:
        try:
            result.entries.append(
                parse_entry(
                    entry, name=name, link_base=link_base, content_base=content_base
                )
            )
        except (TypeError, ValueError) as error:
            result.warnings.append(f"{name}: skipped an entry: {error}")
    if not result.entries and parsed.bozo:
        raise ParseError(
            f"{name}: no entries recovered, {describe_bozo(parsed.bozo_exception)}"
        )
    return result


def parse_entry(
    entry,
    *,
    name: str,
    link_base: str | None = None,
    content_base: str | None = None,
) -> ParsedEntry:
    """Build a ParsedEntry from one feedparser entry."""
    link = entry_link(entry)
    if link and link_base and not absolute(link):
        link = urljoin(link_base, link)
    if link and urlsplit(link).scheme.lower() not in ("http", "https"):
        # A javascript:, data: or still-relative link must never reach a page.
        link = None
    title = detail_text(entry, "title") or None
    if link and not is_web_link(link):
        # A javascript: link would run the feed's script wherever the post
        # is linked: a digest, an Atom feed, a notebook.
        logger.warning("%s: dropped the non-web link %r of %r", name, link, title)
        link = None
    published = entry_date(entry, "published") or entry_date(entry, "created")
    updated = entry_date(entry, "updated")
    body_html = best_html(entry)
    if body_html and content_base:
        body_html = resolve_relative_links(body_html, content_base)
    content_html = sanitize(body_html) if body_html else None
    content_text = html_to_text(body_html) if body_html else ""
    summary_html = entry.get("summary") or ""
    summary_text = (
        content_text if summary_html == body_html else html_to_text(summary_html)
    )
    summary = shorten(summary_text or content_text, SUMMARY_CHARS)
    guid = (entry.get("id") or "").strip() or None
    author = plain_text(entry.get("author")) or None
    return ParsedEntry(
        guid=guid,
        link=link,
        url=canonical_url(link) if link else None,
        title=title,
        author=author,
        published=published or updated,
        updated=updated,
        summary=summary or None,
        content_html=content_html,
        content_text=content_text,
        content_hash=content_hash(title, author, content_text),
        fingerprint=fingerprint(title, published or updated),
        word_count=len(content_text.split()),
    )


def canonical_url(link: str) -> str:
    """Return the canonical form of a post link.

    The scheme and host are lower-cased, the default port, the fragment,
    tracking parameters and trailing slashes of the path are removed; other
    query parameters and the case of the path are kept::

        HTTPS://Blog.Example.com/Post/?utm_source=rss#top
        -> https://blog.example.com/Post
    """
    parts = urlsplit(link.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if parts.port and not (
        (scheme == "http" and parts.port == 80)
        or (scheme == "https" and parts.port == 443)
    ):
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}@{host}"
    path = parts.path.rstrip("/")
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key.lower() not in TRACKING_PARAMETERS
        and not key.lower().startswith(TRACKING_PREFIXES)
    ]
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def entry_link(entry) -> str | None:
    """Return the entry's HTML link, preferring rel=alternate text/html links."""
    for link in entry.get("links", []):
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            if link.get("type", "text/html") in ("text/html", "application/xhtml+xml"):
                return link["href"].strip()
    link = entry.get("link")
    if link:
        return link.strip()
    # RSS items without <link> often carry a permalink guid.
    guid = entry.get("id") or ""
    if entry.get("guidislink") and guid.startswith(("http://", "https://")):
        return guid.strip()
    return None


def is_web_link(link: str) -> bool:
    """Return True unless a browser would read ``link`` as a non-http(s) URL.

    Browsers drop tabs and newlines anywhere in a URL and control characters
    and spaces at its start, so "jav\tascript:alert(1)" is a javascript: URL.
    Relative links are web links.
    """
    squeezed = "".join(char for char in link if char > " ")
    return urlsplit(squeezed).scheme.lower() in ("", "http", "https")


def absolute(url: str | None) -> str | None:
    """Return ``url`` when it is an absolute http(s) URL, else None."""
    if url and urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc:
        return url
    return None


def self_link(feed) -> str | None:
    """Return the feed's own URL from an atom:link rel="self", if it has one."""
    for link in feed.get("links", []):
        if link.get("rel") == "self" and link.get("href"):
            return link["href"].strip()
    return None


def entry_date(entry, key: str) -> str | None:
    """Return the entry's ``key`` date as UTC ISO 8601, or None when absent or bogus."""
    parsed = entry.get(f"{key}_parsed")
    if not parsed:
        return None
    if parsed.tm_year < EARLIEST_PLAUSIBLE_YEAR:
        return None
    # feedparser normalises every date to UTC in a time.struct_time.
    moment = datetime.fromtimestamp(calendar.timegm(parsed), tz=timezone.utc)
    if moment > datetime.now(timezone.utc) + LATEST_PLAUSIBLE_AHEAD:
        # A date such as 9999-12-31 is a placeholder, not a publication date.
        return None
    return moment.isoformat()


def best_html(entry) -> str:
    """Return the longest body the entry carries: full content or summary."""
    candidates = [content.get("value") or "" for content in entry.get("content", [])]
    candidates.append(entry.get("summary") or "")
    html = max(candidates, key=len)
    if not html:
        return ""
    detail_types = [content.get("type") for content in entry.get("content", [])]
    if "text/plain" in detail_types and "<" not in html:
        return "<p>" + nh3.clean_text(html) + "</p>"
    return html


def resolve_relative_links(html: str, base: str) -> str:
    """Make href and src attributes absolute against ``base``.

    feedparser already resolves them against xml:base or the document URL;
    this covers a saved file whose only base is the channel link.
    """
    if not RELATIVE_ATTRIBUTE.search(html):
        return html
    soup = BeautifulSoup(html, "lxml")
    for attribute in ("href", "src"):
        for element in soup.find_all(attrs={attribute: True}):
            value = element[attribute].strip()
            if not value.startswith(("#", "mailto:", "data:")):
                element[attribute] = urljoin(base, value)
    body = soup.body
    return body.decode_contents() if body else str(soup)


def sanitize(html: str) -> str:
    """Return ``html`` with scripts, event handlers and unsafe URLs removed."""
    return nh3.clean(
        html,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def html_to_text(html: str) -> str:
    """Return the readable text of an HTML fragment, one paragraph per line."""
    if not html:
        return ""
    if "<" not in html and "&" not in html:
        return normalize_space(html)
    try:
        root = lxml_html.fragment_fromstring(html, create_parent="div")
    except (etree.ParserError, ValueError):
        return normalize_space(BeautifulSoup(html, "lxml").get_text(" "))
    for element in root.xpath(DROPPED_ELEMENTS):
        element.drop_tree()
    for element in root.iter(*BLOCK_TAGS):
        element.text = "\n" + (element.text or "")
        element.tail = "\n" + (element.tail or "")
    lines = (normalize_space(line) for line in root.text_content().splitlines())
    return "\n".join(line for line in lines if line)


def detail_text(element, key: str) -> str:
    """Return a title as plain text, stripping markup only when it is HTML.

    feedparser marks each text construct with a type. An RSS title of
    ``First &lt;post&gt;`` is text/plain "First <post>" and keeps its brackets.
    """
    value = element.get(key)
    detail = element.get(f"{key}_detail") or {}
    if value and "html" in (detail.get("type") or ""):
        return plain_text(value)
    return normalize_space(value or "")


def plain_text(value: str | None) -> str:
    """Return a one-line plain text from a title or author that may hold markup."""
    if not value:
        return ""
    if "<" in value and re.search(r"<[a-zA-Z/!]", value):
        value = BeautifulSoup(value, "lxml").get_text(" ")
    return normalize_space(value)


def normalize_space(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\xa0", " ")).strip()


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters at a word boundary."""
    text = normalize_space(text)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def content_hash(*parts: str | None) -> str:
    """Return a hash of the fields whose change makes a post count as edited."""
    joined = "\x1f".join(part or "" for part in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def fingerprint(title: str | None, date: str | None) -> str:
    """Return the identity of an entry that has neither a usable guid nor a link."""
    text = f"{normalize_space(title or '').lower()}\x1f{date or ''}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def describe_bozo(error: Exception | None) -> str:
    """Return a readable reason for a feedparser bozo exception."""
    if error is None:
        return "not well-formed"
    message = str(getattr(error, "getMessage", lambda: error)()) or type(error).__name__
    if isinstance(error, feedparser.CharacterEncodingOverride):
        return f"mis-encoded: {message}"
    line = getattr(error, "getLineNumber", lambda: None)()
    where = f" at line {line}" if line else ""
    return f"not well-formed XML{where}: {message}"


def not_a_feed_reason(data: bytes, parsed) -> str:
    head = data[:512].lstrip().lower()
    if re.search(rb"<(!doctype html|html|head|body)[\s>]", head):
        return "it is an HTML page"
    if parsed.bozo:
        return describe_bozo(parsed.bozo_exception)
    return "no RSS, RDF or Atom root element"


def now_utc() -> str:
    """Return the current UTC time as ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
