"""Render a digest as Markdown, HTML, JSON or an Atom feed of daily digests.

Titles and summaries come from feeds, so every renderer treats them as
untrusted text. HTML output is escaped by Jinja2's autoescaping, and Markdown
output backslash-escapes the characters that would become markup. Links are
kept only for http and https URLs, so a ``javascript:`` link is dropped.
"""

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from datetime import date as Date
from urllib.parse import quote, urlsplit

import jinja2

from kb.digest_model import DeepDive, Digest, Pattern, PostRef

ATOM_NAMESPACE = "http://www.w3.org/2005/Atom"
FEED_ID = "tag:kb.local,2026:digest"
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#|!~])")

environment = jinja2.Environment(
    loader=jinja2.PackageLoader("kb", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def safe_url(url: str | None) -> str | None:
    """Return ``url`` when it is an absolute http(s) URL, else None."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url.strip()


def display_date(value: str | None) -> str:
    """Return the day of an ISO 8601 timestamp as "16 April 2026"."""
    if not value:
        return "undated"
    try:
        day = Date.fromisoformat(value[:10])
    except ValueError:
        return value
    return f"{day.day} {day:%B %Y}"


environment.filters["safe_url"] = safe_url
environment.filters["display_date"] = display_date


def render_html(digest: Digest, *, standalone: bool = True) -> str:
    """Render the digest as HTML: a complete page, or only its ``<article>``.

    With ``standalone=False`` the result is a fragment to embed in another
    page, such as an Atom entry or a Datasette template.
    """
    template = environment.get_template(
        "digest.html" if standalone else "digest_body.html"
    )
    return template.render(digest=digest)


def render_json(digest: Digest) -> str:
    """Render the digest as indented JSON with every field of the dataclasses."""
    data = dataclasses.asdict(digest)
    data["is_empty"] = digest.is_empty
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def escape_markdown(text: str) -> str:
    r"""Backslash-escape Markdown markup: ``<b>`` becomes ``\<b\>``."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def markdown_link(title: str, url: str | None) -> str:
    """Return ``[title](url)``, or the escaped title alone when the URL is unsafe."""
    url = safe_url(url)
    if url is None:
        return escape_markdown(title)
    # Parentheses and spaces would end the link target early.
    target = quote(url, safe=":/?#[]@!$&'*+,;=%-._~")
    return f"[{escape_markdown(title)}]({target})"


def render_markdown(digest: Digest) -> str:
    """Render the digest as CommonMark."""
    lines = [f"# {escape_markdown(digest.title)}", "", escape_markdown(digest.overview)]
    if digest.is_empty:
        return "\n".join(lines) + "\n"
    lines += ["", "## Signal of the Day", ""]
    lines += markdown_dive(digest.signal)
    lines += [f"*Why this post:* {escape_markdown(digest.signal_reason)}", ""]
    if digest.deep_dives:
        lines += ["## Deep Dives", "", escape_markdown(digest.selection_rule), ""]
        for dive in digest.deep_dives:
            lines += markdown_dive(dive)
    if digest.more_posts:
        lines += ["## Also Published", ""]
        lines += [f"- {markdown_post(post)}" for post in digest.more_posts]
        hidden = digest.more_count - len(digest.more_posts)
        if hidden > 0:
            lines.append(f"- and {hidden} more")
        lines.append("")
    lines += ["## Patterns Across Companies", "", escape_markdown(digest.patterns_text)]
    lines.append("")
    lines += [markdown_pattern(pattern) for pattern in digest.patterns]
    if digest.patterns:
        lines.append("")
    if digest.patterns_source:
        lines.append(f"*{escape_markdown(digest.patterns_source)}*")
    return "\n".join(lines).rstrip("\n") + "\n"


def markdown_dive(dive: DeepDive) -> list[str]:
    """Return the Markdown lines of one summarised post."""
    post = dive.post
    lines = [
        f"### {markdown_link(post.title, post.url)}",
        "",
        f"**{escape_markdown(post.company)}** · {display_date(post.published)}",
        "",
    ]
    if dive.sentences:
        lines += [escape_markdown(" ".join(dive.sentences)), ""]
    if dive.note:
        lines += [f"*{escape_markdown(dive.note)}*", ""]
    return lines


def markdown_post(post: PostRef) -> str:
    """Return a post as a link followed by its company."""
    return f"{markdown_link(post.title, post.url)} ({escape_markdown(post.company)})"


def markdown_pattern(pattern: Pattern) -> str:
    """Return one pattern as a list item with its companies and post links."""
    posts = "; ".join(markdown_post(post) for post in pattern.posts)
    name = escape_markdown(pattern.name)
    detail = f" ({escape_markdown(pattern.description)})" if pattern.description else ""
    return f"- **{name}**{detail}: {posts}"


def atom_entry(digest: Digest, entry_url: str | None = None) -> dict:
    """Return one digest as the ``atom_*`` columns that datasette-atom reads.

    ``entry_url`` may contain ``{date}``, which is replaced by the digest's
    date, to link each entry to its page.
    """
    entry = {
        "atom_id": f"{FEED_ID}:{digest.date}:{digest.days}",
        "atom_title": digest.title,
        "atom_updated": digest_updated(digest),
        "atom_content_html": render_html(digest, standalone=False),
    }
    if entry_url:
        entry["atom_link"] = entry_url.format(date=digest.date)
    return entry


def digest_updated(digest: Digest) -> str:
    """Return when a digest last changed: its newest post, else its last day."""
    stamps = [dive.post.published for dive in all_dives(digest) if dive.post.published]
    stamps += [post.published for post in digest.more_posts if post.published]
    newest = max(stamps, default=f"{digest.date}T00:00:00+00:00")
    return newest.replace("+00:00", "Z")


def all_dives(digest: Digest) -> list[DeepDive]:
    """Return the Signal of the Day followed by the Deep Dives."""
    return ([digest.signal] if digest.signal else []) + digest.deep_dives


def render_atom(
    digests: list[Digest],
    *,
    feed_url: str | None = None,
    entry_url: str | None = None,
) -> str:
    """Render digests as an Atom 1.0 feed with one entry per digest.

    Parameters
    ----------
    digests
        The digests, usually one per day from :func:`kb.digest.build_digests`.
    feed_url
        The feed's own address, written as its ``rel="self"`` link.
    entry_url
        An address with ``{date}`` for each entry's ``rel="alternate"`` link.
    """
    ET.register_namespace("", ATOM_NAMESPACE)
    feed = ET.Element(f"{{{ATOM_NAMESPACE}}}feed")
    entries = [atom_entry(digest, entry_url) for digest in digests]
    add_text(feed, "id", FEED_ID)
    add_text(feed, "title", "Engineering @ Scale")
    add_text(feed, "subtitle", "Daily digest of engineering blogs, built by kb")
    updated = max((entry["atom_updated"] for entry in entries), default=None)
    add_text(feed, "updated", updated or "1970-01-01T00:00:00Z")
    add_text(ET.SubElement(feed, f"{{{ATOM_NAMESPACE}}}author"), "name", "kb")
    if feed_url:
        ET.SubElement(feed, f"{{{ATOM_NAMESPACE}}}link", rel="self", href=feed_url)
    for entry in entries:
        element = ET.SubElement(feed, f"{{{ATOM_NAMESPACE}}}entry")
        add_text(element, "id", entry["atom_id"])
        add_text(element, "title", entry["atom_title"])
        add_text(element, "updated", entry["atom_updated"])
        if "atom_link" in entry:
            ET.SubElement(
                element,
                f"{{{ATOM_NAMESPACE}}}link",
                rel="alternate",
                href=entry["atom_link"],
            )
        content = add_text(element, "content", entry["atom_content_html"])
        content.set("type", "html")
    ET.indent(feed)
    return ET.tostring(feed, encoding="unicode", xml_declaration=True) + "\n"


def add_text(parent: ET.Element, name: str, text: str) -> ET.Element:
    """Append an Atom child element holding ``text`` and return it."""
    element = ET.SubElement(parent, f"{{{ATOM_NAMESPACE}}}{name}")
    element.text = text
    return element
