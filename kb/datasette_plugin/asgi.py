"""ASGI middleware of the kb plugin: security headers, read-only methods, search."""

from urllib.parse import parse_qs, urlencode

from datasette.utils import tilde_decode
from datasette.utils.asgi import Response

from kb.datasette_plugin import pages
from kb.datasette_plugin.utils import policy_for_path

READ_METHODS = ("GET", "HEAD", "OPTIONS")
# Tables whose search box leads to the relevance-ranked search query.
SEARCHABLE_TABLES = ("posts", "posts_view")


class KbMiddleware:
    """Wrap Datasette's ASGI app for the kb plugin.

    * Every response gets a Content-Security-Policy (strict on kb pages),
      X-Content-Type-Options and Referrer-Policy.
    * Requests other than GET and HEAD to a kb database get a 405, because
      Datasette 0.65.5 returns a 500 for a POST to a read-only canned query.
    * A plain table search on posts or posts_view (``?_search=`` and nothing
      else) redirects to the search query, which orders by relevance: the
      table view of Datasette 0.65 filters on the search but keeps its sort.
    """

    def __init__(self, datasette, app):
        self.datasette = datasette
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        base_url = self.datasette.setting("base_url")
        policy = policy_for_path(scope["path"], base_url)

        async def send_with_headers(event):
            if event["type"] == "http.response.start":
                event = with_security_headers(event, policy)
            await send(event)

        database, rest = split_path(scope["path"], base_url)
        if database in await pages.kb_database_names(self.datasette):
            response = early_response(scope, base_url, database, rest)
            if response is not None:
                await response.asgi_send(send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


def split_path(path: str, base_url: str) -> tuple[str, str]:
    """Split a request path into the database it names and the rest.

    ``/kb.json`` names the database ``kb`` in the json format, and
    ``/kb/posts_view`` the table posts_view of ``kb``.
    """
    relative = path[len(base_url) :] if path.startswith(base_url) else path
    first, _, rest = relative.lstrip("/").partition("/")
    name = first.rsplit(".", 1)[0] if "." in first else first
    return tilde_decode(name), rest


def early_response(scope, base_url: str, database: str, rest: str):
    """Return the response kb gives instead of Datasette's, or None."""
    if scope["method"] not in READ_METHODS:
        return Response.text(
            "This knowledge base is served read-only: only GET and HEAD requests "
            "are allowed.",
            status=405,
            headers={"Allow": "GET, HEAD"},
        )
    args = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if rest in SEARCHABLE_TABLES and set(args) == {"_search"}:
        query = urlencode({"q": args["_search"][0], "mode": "keyword"})
        return Response.redirect(f"{base_url}{database}/search?{query}")
    return None


def with_security_headers(event: dict, policy: str) -> dict:
    """Return an ASGI response-start event with kb's security headers set."""
    replaced = {b"content-security-policy", b"x-content-type-options"}
    headers = [
        (name, value)
        for name, value in event.get("headers") or []
        if name.lower() not in replaced
    ]
    headers.append((b"content-security-policy", policy.encode("ascii")))
    headers.append((b"x-content-type-options", b"nosniff"))
    headers.append((b"referrer-policy", b"no-referrer"))
    return {**event, "headers": headers}
