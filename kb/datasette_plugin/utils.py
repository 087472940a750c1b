"""Helpers for the kb Datasette plugin: HTML cleaning and security headers."""

import markupsafe
import nh3

PLUGIN_NAME = "kb"
PAGE_PREFIX = "/-/kb/"

# kb pages carry no script at all, so the policy allows none. Images and media
# from other hosts are blocked too: a reader's browser then contacts no host
# but this server, and a tracking pixel in a feed stays inert.
KB_PAGE_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Datasette's own pages run inline scripts (menus, the SQL editor), so they
# keep 'unsafe-inline' for scripts and styles but still load nothing from other
# hosts. Feed content on those pages is escaped by Jinja's autoescaping.
DATASETTE_PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "form-action 'self'; base-uri 'self'; frame-ancestors 'none'"
)

# Tags and attributes kept when a post's HTML is shown on the post page. Images
# are dropped because the page policy would block them anyway.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del",
    "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
    "small", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "u", "ul", "var",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
}
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}


def sanitize_html(html: str | None) -> markupsafe.Markup:
    """Clean a post's stored HTML again for display and mark it safe for Jinja.

    Ingest already sanitises ``content_html``; this second pass keeps the page
    safe even for a database written by another tool or an older kb.
    """
    cleaned = nh3.clean(
        html or "",
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return markupsafe.Markup(cleaned)


def clean_snippet(snippet: str | None) -> markupsafe.Markup:
    """Keep only the <mark> tags of a search snippet and mark it safe for Jinja.

    kb.search returns snippets as escaped text with <mark> around matched
    words; cleaning again keeps a snippet from any other source inert.
    """
    cleaned = nh3.clean(snippet or "", tags={"mark"}, attributes={})
    return markupsafe.Markup(cleaned)


def policy_for_path(path: str, base_url: str = "/") -> str:
    """Return the Content-Security-Policy header value for a request path."""
    if path.startswith(base_url.rstrip("/") + PAGE_PREFIX):
        return KB_PAGE_POLICY
    return DATASETTE_PAGE_POLICY


def is_kb_connection(conn) -> bool:
    """Return True when a SQLite connection is open on a kb database."""
    row = conn.execute(
        "select 1 from sqlite_master where type = 'table' and name = 'kb_migrations'"
    ).fetchone()
    return row is not None
