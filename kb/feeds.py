"""The list of sources: the ``feeds`` table, its fetch state and OPML.

A feed row carries what kb needs to fetch politely (validators, failure
count, the time of the next attempt) and what the digest shows (title,
company, category). ``record_fetch_outcome`` applies one fetch to its row;
``due_feeds`` picks the feeds to fetch now. The bundled ``data/sources.opml``
seeds an empty database, and ``import_opml``/``export_opml`` move the list
in and out as OPML, keeping kb's own outline attributes ``slug``,
``company``, ``category`` and ``status``.
"""

import importlib.resources
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import sqlite_utils
from lxml import etree

from kb.companies import company_for
from kb.errors import ConfigError
from kb.fetch import FetchResult, next_attempt_after

logger = logging.getLogger(__name__)

SOURCES_OPML = Path(__file__).resolve().parent.parent / "data" / "sources.opml"
STATUSES = ("active", "disabled", "retired")
SOURCE_COLUMNS = ("title", "homepage", "company", "category", "status")
SLUG_MAX_LENGTH = 80


@dataclass
class Source:
    """One feed outline of an OPML file."""

    url: str
    title: str | None = None
    homepage: str | None = None
    slug: str | None = None
    company: str | None = None
    category: str | None = None
    status: str | None = None


# -- fetch state -------------------------------------------------------------


def record_fetch_outcome(
    db: sqlite_utils.Database,
    feed: dict,
    result: FetchResult,
    now: datetime,
    *,
    error: str | None = None,
) -> None:
    """Update a feed's row after a fetch: validators, failures and next attempt.

    A success clears the failure count and stores the new validators, and a
    chain of 301/308 redirects moves the feed to its new URL. A 410 retires
    the feed. Any other failure schedules a retry with back-off. ``error``
    turns a successful fetch into a failure, for bytes that did not parse.
    Nothing is committed here, because the caller owns the transaction.
    """
    stamp = timestamp(now)
    failure = error or result.error
    changes: dict = {"last_fetched_at": stamp}
    if result.gone:
        logger.warning("Feed %s returned 410 Gone; it is now retired", feed["slug"])
        changes.update(
            status="retired",
            last_error=failure,
            consecutive_failures=current_failures(db, feed) + 1,
            next_fetch_after=None,
        )
    elif failure:
        failures = current_failures(db, feed) + 1
        retry_at = next_attempt_after(failures, result.retry_after, now)
        changes.update(
            consecutive_failures=failures,
            last_error=failure,
            next_fetch_after=timestamp(retry_at),
        )
    else:
        changes.update(
            last_success_at=stamp,
            etag=result.etag,
            last_modified=result.last_modified,
            consecutive_failures=0,
            last_error=None,
            next_fetch_after=None,
        )
        if result.permanent_url and result.permanent_url != feed["url"]:
            if moved_url_is_free(db, feed, result.permanent_url):
                changes["url"] = result.permanent_url
    update_feed(db, feed["id"], changes)


def moved_url_is_free(db: sqlite_utils.Database, feed: dict, url: str) -> bool:
    owner = find_feed_by(db, "url", url)
    if owner is None:
        logger.info("Feed %s moved permanently to %s", feed["slug"], url)
        return True
    logger.warning(
        "Feed %s redirects permanently to %s, which feed %s already uses; "
        "kept the old URL. Remove one of the two with 'kb feeds remove'.",
        feed["slug"],
        url,
        owner["slug"],
    )
    return False


def current_failures(db: sqlite_utils.Database, feed: dict) -> int:
    # Read the stored count: the caller's dict may predate an earlier update.
    row = db.execute(
        "SELECT consecutive_failures FROM feeds WHERE id = ?", [feed["id"]]
    ).fetchone()
    return (row[0] if row else feed.get("consecutive_failures")) or 0


def due_feeds(db: sqlite_utils.Database, now: datetime) -> list[dict]:
    """Return the active feeds whose next attempt is unset or not in the future.

    Sources known only from replayed files (``file:`` URLs) are never due.
    """
    feeds = db.query("SELECT * FROM feeds WHERE status = 'active' ORDER BY id")
    return [
        feed
        for feed in feeds
        if feed["url"].startswith(("http://", "https://"))
        and (
            not feed["next_fetch_after"]
            or parse_timestamp(feed["next_fetch_after"]) <= as_utc(now)
        )
    ]


# -- managing the list ---------------------------------------------------------


def list_feeds(db: sqlite_utils.Database) -> list[dict]:
    """Return every feed, ordered by slug, with its number of stored posts."""
    return list(
        db.query(
            "SELECT feeds.*, COUNT(posts.id) AS posts FROM feeds "
            "LEFT JOIN posts ON posts.feed_id = feeds.id "
            "GROUP BY feeds.id ORDER BY feeds.slug"
        )
    )


def add_feed(
    db: sqlite_utils.Database,
    url: str,
    *,
    title: str | None = None,
    company: str | None = None,
    homepage: str | None = None,
    slug: str | None = None,
    category: str | None = None,
) -> dict:
    """Add a feed and return its row.

    Raises ConfigError for a URL that is not http(s), a URL that is already
    listed and active, or a slug that another feed uses. Adding the URL of a
    disabled or retired feed makes it active again. URLs are compared as
    :func:`same_feed_urls` describes.
    """
    problem = http_url_problem(url)
    if problem:
        raise ConfigError(
            f"Invalid feed URL {url!r}: {problem}.\n"
            "Give the full address, for example https://example.com/feed.xml."
        )
    url = normalised_url(url)
    existing = find_feed_by_url(db, url)
    if existing is not None and existing["status"] == "active":
        raise ConfigError(
            f"Feed URL already listed: {url} is listed as {existing['url']} "
            f"(slug={existing['slug']}).\nSee it with 'kb feeds list'."
        )
    if slug is not None:
        slug = checked_slug(db, slug, owner=existing)
    with db.atomic():
        if existing is None:
            source = Source(url, title, homepage, slug, company, category)
            return insert_feed(db, source, datetime.now(timezone.utc))
        fields = dict(
            title=title,
            company=company,
            homepage=homepage,
            category=category,
            slug=slug,
        )
        return reactivate_feed(db, existing, fields)


def reactivate_feed(db: sqlite_utils.Database, feed: dict, fields: dict) -> dict:
    """Make a disabled or retired feed active again with a clean failure record."""
    changes = {
        "status": "active",
        "consecutive_failures": 0,
        "last_error": None,
        "next_fetch_after": None,
    }
    changes.update({key: value for key, value in fields.items() if value})
    update_feed(db, feed["id"], changes)
    logger.info("Feed %s was %s and is active again", feed["url"], feed["status"])
    return find_feed_by(db, "id", feed["id"])


def remove_feed(db: sqlite_utils.Database, key: str | int) -> tuple[dict, str]:
    """Remove a feed by slug, id or URL; return its row and "disabled" or "deleted".

    A feed with stored posts is only disabled, so its posts keep their
    source and company. A feed without posts is deleted, and its fetch log
    rows keep their source name with no feed id. Raises ConfigError when no
    feed matches.
    """
    feed = find_feed(db, key)
    posts = db.execute(
        "SELECT COUNT(*) FROM posts WHERE feed_id = ?", [feed["id"]]
    ).fetchone()[0]
    with db.atomic():
        if posts:
            update_feed(
                db, feed["id"], {"status": "disabled", "next_fetch_after": None}
            )
            action = "disabled"
        else:
            db.execute(
                "UPDATE fetches SET feed_id = NULL WHERE feed_id = ?", [feed["id"]]
            )
            db.execute("DELETE FROM feeds WHERE id = ?", [feed["id"]])
            action = "deleted"
    logger.info("Feed %s %s (%d stored posts)", feed["slug"], action, posts)
    return {**feed, "posts": posts}, action


def find_feed(db: sqlite_utils.Database, key: str | int) -> dict:
    """Return the feed whose slug, id or URL is ``key``; raise ConfigError if none.

    A slug match wins over an id, so "7" returns the feed whose slug is 7
    when there is one, else the feed with id 7.
    """
    text = str(key).strip()
    feed = find_feed_by(db, "slug", text)
    if feed is None and text.isdigit():
        feed = find_feed_by(db, "id", int(text))
    feed = feed or find_feed_by_url(db, text)
    if feed is None:
        raise ConfigError(
            f"Feed not found: {text!r} is not the id, slug or URL of a feed.\n"
            "See the feeds with 'kb feeds list'."
        )
    return feed


def find_feed_by(db: sqlite_utils.Database, column: str, value) -> dict | None:
    if column not in ("id", "slug", "url"):
        raise ValueError(f"cannot look feeds up by {column!r}")
    rows = list(db.query(f"SELECT * FROM feeds WHERE {column} = ?", [value]))
    return rows[0] if rows else None


def find_feed_by_url(db: sqlite_utils.Database, url: str) -> dict | None:
    """Return the feed stored under ``url`` or under one of its same_feed_urls."""
    candidates = [url.strip()]
    if http_url_problem(url) is None:
        candidates += same_feed_urls(url)
    for candidate in dict.fromkeys(candidates):
        feed = find_feed_by(db, "url", candidate)
        if feed is not None:
            return feed
    return None


def ensure_sources(
    db: sqlite_utils.Database, opml_path: str | os.PathLike | None = None
) -> int:
    """Import the bundled sources when the feeds table is empty; return feeds added."""
    if db.execute("SELECT EXISTS (SELECT 1 FROM feeds)").fetchone()[0]:
        return 0
    added, _ = import_opml(db, opml_path or default_sources_path())
    logger.info("Seeded the feeds table with %d sources", added)
    return added


def default_sources_path() -> Path:
    """Return data/sources.opml of the source tree, else the copy inside kb/."""
    if SOURCES_OPML.is_file():
        return SOURCES_OPML
    packaged = importlib.resources.files("kb").joinpath("data/sources.opml")
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(
        f"The bundled source list is missing: {SOURCES_OPML} does not exist.\n"
        "Reinstall kb from its source tree, or import a list with "
        "'kb feeds import FILE.opml'."
    )


def feed_for_slug(
    db: sqlite_utils.Database,
    slug: str,
    *,
    title: str | None = None,
    url: str | None = None,
    homepage: str | None = None,
    folder: str | os.PathLike | None = None,
) -> dict:
    """Return the feed row of a replayed source folder, creating it when missing.

    A new row takes ``url`` (the snapshot's self link or the caller's choice),
    else the ``file:`` URL of ``folder``. When another feed already has that
    URL the folder's URL is used, else the slug is added as a fragment, so
    the UNIQUE url column never rejects a replay. Does not commit.
    """
    feed = find_feed_by(db, "slug", slug)
    if feed is not None:
        return feed
    folder_url = Path(folder).resolve().as_uri() if folder else None
    candidates = [url, folder_url, f"{url or folder_url or 'file:'}#{slug}"]
    free = next(
        candidate
        for candidate in candidates
        if candidate and find_feed_by(db, "url", candidate) is None
    )
    if url and free != url:
        logger.warning(
            "Feed URL %s is taken; replayed source %s uses %s", url, slug, free
        )
    source = Source(free, title=title, homepage=homepage, slug=slug)
    return insert_feed(db, source, datetime.now(timezone.utc))


def insert_feed(db: sqlite_utils.Database, source: Source, now: datetime) -> dict:
    """Insert a new feed row from a source, filling in a slug and a company."""
    slug = source.slug or unique_slug(db, source.title or source.url)
    company = source.company or company_for(source.url, source.title)
    if company is None and source.homepage:
        company = company_for(source.homepage, source.title)
    row = {
        "slug": slug,
        "title": source.title,
        "company": company,
        "url": source.url,
        "homepage": source.homepage,
        "category": source.category,
        "status": source.status or "active",
        "consecutive_failures": 0,
        "added_at": timestamp(now),
    }
    db["feeds"].insert(row)
    return find_feed_by(db, "slug", slug)


def update_feed(db: sqlite_utils.Database, feed_id: int, changes: dict) -> None:
    # A plain UPDATE joins the caller's open transaction instead of committing.
    assignments = ", ".join(f"[{column}] = ?" for column in changes)
    db.execute(
        f"UPDATE feeds SET {assignments} WHERE id = ?", [*changes.values(), feed_id]
    )


# -- slugs and URLs ----------------------------------------------------------


def slugify(text: str) -> str:
    """Turn a title or URL into a slug: lower-case words joined by hyphens."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:SLUG_MAX_LENGTH].strip("-") or "feed"


def unique_slug(db: sqlite_utils.Database, text: str) -> str:
    base = slugify(re.sub(r"^https?://(www\.)?", "", text))
    slug, number = base, 2
    while find_feed_by(db, "slug", slug) is not None:
        slug = f"{base[: SLUG_MAX_LENGTH - 4]}-{number}"
        number += 1
    return slug


def checked_slug(db: sqlite_utils.Database, slug: str, owner: dict | None) -> str:
    """Return a normalised slug, raising ConfigError when another feed has it."""
    normalised = slugify(slug)
    holder = find_feed_by(db, "slug", normalised)
    if holder is not None and (owner is None or holder["id"] != owner["id"]):
        raise ConfigError(
            f"--slug {normalised!r} is already used by the feed {holder['url']}.\n"
            "Choose another slug, or leave it out to derive one from the title."
        )
    return normalised


def http_url_problem(url: str) -> str | None:
    """Return why ``url``, stripped of surrounding whitespace, cannot be fetched."""
    url = url.strip()
    # urlsplit silently drops tabs and line breaks, so look before it does.
    if not url.isprintable():
        return "the URL contains a line break, tab or other control character"
    try:
        parts = urlsplit(url)
    except ValueError as error:
        return f"it cannot be parsed ({error})"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs can be fetched"
    if not parts.hostname:
        return "the URL has no host name"
    if " " in parts.netloc:
        return "the host name contains a space"
    try:
        has_valid_port = parts.port != 0
    except ValueError:
        has_valid_port = False
    if not has_valid_port:
        return "the port must be a number from 1 to 65535"
    return None


def normalised_url(url: str) -> str:
    """Strip surrounding whitespace and lower-case the scheme and host of ``url``."""
    parts = urlsplit(url.strip())
    userinfo, at, host = parts.netloc.rpartition("@")
    return urlunsplit(
        parts._replace(scheme=parts.scheme.lower(), netloc=userinfo + at + host.lower())
    )


def same_feed_urls(url: str) -> list[str]:
    """Return the forms of ``url`` that name the same feed.

    Scheme and host are case-insensitive, and a path with or without a
    trailing slash is taken as the same feed, so "HTTPS://Example.com/rss/"
    and "https://example.com/rss" match.
    """
    normalised = normalised_url(url)
    parts = urlsplit(normalised)
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path + "/"
    return [normalised, urlunsplit(parts._replace(path=path))]


# -- time ----------------------------------------------------------------------


def as_utc(moment: datetime) -> datetime:
    """Return an aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def timestamp(moment: datetime) -> str:
    """Format a time as stored in the feeds table: "2026-08-20T02:00:00+00:00"."""
    return as_utc(moment).isoformat(timespec="seconds")


def parse_timestamp(text: str) -> datetime:
    return as_utc(datetime.fromisoformat(text))


# -- OPML ------------------------------------------------------------------------

# Kept from the document: entities are never expanded, no DTD or other file
# is loaded and nothing is fetched, so a "billion laughs" file or an
# external entity pointing at a local file cannot do harm.
SAFE_PARSER_OPTIONS = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)


ENTITY_DECLARATION = re.compile(rb"<!DOCTYPE[^\[>]*\[.*?<!ENTITY", re.DOTALL)


def read_opml(path: str | os.PathLike) -> list[Source]:
    """Read the feed outlines of an OPML file, in document order.

    Folder outlines (outlines without xmlUrl) name the ``category`` of the
    feeds inside them, joined with " / " when nested. kb's own ``category``
    attribute wins over the folders. ``title`` falls back to ``text``.
    Raises ConfigError, naming the file, when it cannot be read, is not
    XML, declares entities or is not OPML.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"Cannot read OPML file {path}: {error.strerror}") from error
    # Checked before parsing too, because libxml2 rejects a "billion laughs"
    # document with a less helpful amplification error.
    if ENTITY_DECLARATION.search(data):
        raise entities_error(path)
    try:
        root = etree.fromstring(data, etree.XMLParser(**SAFE_PARSER_OPTIONS))
    except etree.XMLSyntaxError as error:
        raise ConfigError(
            f"{path} is not valid XML: {error}\n"
            "An OPML file is an XML document with an <opml> root element."
        ) from error
    doctype = root.getroottree().docinfo.internalDTD
    if doctype is not None and any(True for _ in doctype.iterentities()):
        raise entities_error(path)
    body = root.find("body")
    if etree.QName(root).localname != "opml" or body is None:
        raise ConfigError(
            f"{path} is not an OPML file: its root element is "
            f"<{etree.QName(root).localname}>, not <opml> with a <body>.\n"
            "Export the subscriptions of your feed reader as OPML and import that."
        )
    return list(sources_in(body, folders=[]))


def entities_error(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} declares XML entities, which kb does not expand.\n"
        "Remove the <!DOCTYPE> declaration; OPML files do not need one."
    )


def sources_in(element, folders: list[str]):
    for outline in element.iterchildren("outline"):
        attributes = {name.lower(): value.strip() for name, value in outline.items()}
        url = attributes.get("xmlurl")
        label = attributes.get("title") or attributes.get("text")
        if url:
            yield source_from(attributes, folders)
        elif not len(outline):
            logger.debug("Skipped an OPML outline without xmlUrl: %r", label)
        yield from sources_in(outline, [*folders, label] if label else folders)


def source_from(attributes: dict, folders: list[str]) -> Source:
    slug = attributes.get("slug") or None
    title = attributes.get("title") or None
    # Our export writes text="<slug>" for a feed that has no title, so a
    # text equal to the slug is only a label, not a title.
    text = attributes.get("text") or None
    if title is None and text != slug:
        title = text
    status = attributes.get("status") or None
    if status is not None and status not in STATUSES:
        logger.warning("Ignored the unknown status %r of feed %s", status, attributes)
        status = None
    return Source(
        url=attributes["xmlurl"],
        title=title,
        homepage=attributes.get("htmlurl") or None,
        slug=slugify(slug) if slug else None,
        company=attributes.get("company") or None,
        category=attributes.get("category") or " / ".join(folders) or None,
        status=status,
    )


def import_opml(db: sqlite_utils.Database, path: str | os.PathLike) -> tuple[int, int]:
    """Add and update feeds from an OPML file; return (added, updated).

    An outline matches an existing feed by slug, else by URL. Attributes the
    outline has overwrite the stored ones; those it lacks are kept. A URL
    listed twice in the file counts once, the first time. An outline whose
    URL ``kb feeds add`` would reject is skipped with a warning. All changes
    are written in one transaction.
    """
    sources = read_opml(path)
    added = updated = 0
    seen: set[str] = set()
    now = datetime.now(timezone.utc)
    with db.atomic():
        for source in sources:
            problem = http_url_problem(source.url)
            if problem:
                logger.warning(
                    "Skipped the outline %r of %s: invalid feed URL %r: %s",
                    source.title or source.slug or source.url,
                    path,
                    source.url,
                    problem,
                )
                continue
            source.url = normalised_url(source.url)
            spellings = same_feed_urls(source.url)
            if seen.intersection(spellings):
                logger.debug("Skipped a second outline for %s in %s", source.url, path)
                continue
            seen.update(spellings)
            outcome = upsert_source(db, source, now)
            added += outcome == "added"
            updated += outcome == "updated"
    logger.info("Imported %s: %d feeds added, %d updated", path, added, updated)
    return added, updated


def upsert_source(db: sqlite_utils.Database, source: Source, now: datetime) -> str:
    """Insert or update the feed of one outline.

    Returns "added", "updated" or "unchanged".
    """
    feed = None
    if source.slug:
        feed = find_feed_by(db, "slug", source.slug)
    feed = feed or find_feed_by_url(db, source.url)
    if feed is None:
        insert_feed(db, source, now)
        return "added"
    changes = {
        column: getattr(source, column)
        for column in SOURCE_COLUMNS
        if getattr(source, column) is not None
        and getattr(source, column) != feed[column]
    }
    if source.url != feed["url"]:
        owner = find_feed_by_url(db, source.url)
        if owner is None:
            changes["url"] = source.url
        elif owner["id"] != feed["id"]:
            logger.warning(
                "OPML lists %s under slug %s, but feed %s has that URL; kept both",
                source.url,
                feed["slug"],
                owner["slug"],
            )
    if source.slug and source.slug != feed["slug"]:
        if find_feed_by(db, "slug", source.slug) is None:
            changes["slug"] = source.slug
    if not changes:
        return "unchanged"
    update_feed(db, feed["id"], changes)
    return "updated"


def export_opml(db: sqlite_utils.Database) -> str:
    """Return every feed as an OPML 2.0 document, one folder per category.

    Each outline carries kb's own ``slug``, ``company`` and ``category``
    attributes (and ``status`` unless active), so importing the result into
    this database changes nothing and into an empty one rebuilds the list.
    """
    root = etree.Element("opml", version="2.0")
    head = etree.SubElement(root, "head")
    etree.SubElement(head, "title").text = "kb sources"
    body = etree.SubElement(root, "body")
    folders: dict[str, etree._Element] = {}
    feeds = db.query(
        "SELECT * FROM feeds ORDER BY category IS NOT NULL, category, slug"
    )
    for feed in feeds:
        parent = body
        if feed["category"]:
            if feed["category"] not in folders:
                folders[feed["category"]] = etree.SubElement(
                    body, "outline", text=feed["category"], title=feed["category"]
                )
            parent = folders[feed["category"]]
        etree.SubElement(parent, "outline", outline_attributes(feed))
    return etree.tostring(
        root, pretty_print=True, xml_declaration=True, encoding="UTF-8"
    ).decode("utf-8")


def outline_attributes(feed: dict) -> dict[str, str]:
    attributes = {"text": feed["title"] or feed["slug"]}
    if feed["title"]:
        attributes["title"] = feed["title"]
    attributes.update(type="rss", xmlUrl=feed["url"])
    optional = {
        "htmlUrl": feed["homepage"],
        "slug": feed["slug"],
        "company": feed["company"],
        "category": feed["category"],
        "status": feed["status"] if feed["status"] != "active" else None,
    }
    attributes.update({name: value for name, value in optional.items() if value})
    return attributes
