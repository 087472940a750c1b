"""The kb pages served inside Datasette: search, post and digest."""

import logging
import weakref

import markupsafe
from datasette.utils.asgi import NotFound, Response

from kb.datasette_plugin import functions
from kb.datasette_plugin.connections import search_db
from kb.datasette_plugin.utils import clean_snippet, sanitize_html
from kb.digest import build_digest
from kb.errors import KbError

logger = logging.getLogger(__name__)

RESULTS_PER_PAGE = 20
RELATED_LIMIT = 8
MAX_FILTER_CHARS = 200
MAX_DIGEST_DAYS = 31


# Per Datasette instance: the names of its databases when last checked, and
# which of them carry the kb schema. Checked again when databases change.
_kb_names: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


async def kb_database_names(datasette) -> list[str]:
    """Return the names of the served databases that carry the kb schema."""
    served = tuple(name for name in datasette.databases if not name.startswith("_"))
    cached = _kb_names.get(datasette)
    if cached is not None and cached[0] == served:
        return cached[1]
    names = []
    for name in served:
        if "kb_migrations" in await datasette.databases[name].table_names():
            names.append(name)
    _kb_names[datasette] = (served, names)
    return names


async def kb_database(datasette, request):
    """Return the first kb database the actor may read, else raise NotFound."""
    names = await kb_database_names(datasette)
    if not names:
        raise NotFound("No kb database is served here. Start it with 'kb serve'.")
    name = names[0]
    await datasette.ensure_permissions(
        request.actor,
        [("view-table", (name, "posts")), ("view-database", name), "view-instance"],
    )
    return datasette.databases[name]


async def index_page(datasette, request):
    return Response.redirect(datasette.urls.path("/-/kb/search"))


async def search_page(datasette, request):
    db = await kb_database(datasette, request)
    form, problems = read_search_form(request)
    results = []
    if form["q"] and not problems:
        try:
            results = await search_posts(db, datasette, form)
        except KbError as error:
            logger.info("search page: %s", error)
            problems.append(str(error))
    context = {
        "form": form,
        "problems": problems,
        "results": results,
        "modes": functions.SEARCH_MODES,
        "companies": await company_names(db),
        "topics": await topic_labels(db),
        "database": db.name,
    }
    return await render(
        datasette, request, "kb_search.html", context, status=400 if problems else 200
    )


def read_search_form(request) -> tuple[dict, list[str]]:
    """Read the search form from the query string and list what is invalid."""
    args = request.args
    form = {
        "q": (args.get("q") or "").strip()[: functions.MAX_QUERY_CHARS],
        "mode": (args.get("mode") or "hybrid").strip().lower(),
        "company": (args.get("company") or "").strip()[:MAX_FILTER_CHARS],
        "topic": (args.get("topic") or "").strip()[:MAX_FILTER_CHARS],
        "since": (args.get("since") or "").strip()[:MAX_FILTER_CHARS],
        "until": (args.get("until") or "").strip()[:MAX_FILTER_CHARS],
    }
    problems = []
    if form["mode"] not in functions.SEARCH_MODES:
        problems.append(
            f"Invalid search mode {form['mode']!r}: choose one of "
            f"{', '.join(functions.SEARCH_MODES)}."
        )
        form["mode"] = "hybrid"
    for field in ("since", "until"):
        try:
            functions.parse_day(form[field])
        except ValueError:
            problems.append(
                f"Invalid {field} date {form[field]!r}: use YYYY-MM-DD, "
                "such as 2025-01-31."
            )
    return form, problems


async def search_posts(db, datasette, form: dict) -> list[dict]:
    """Run a search for the form and return result rows for the template."""

    def run(conn):
        return functions.run_search(
            db.path,
            datasette,
            query=form["q"],
            mode=form["mode"],
            company=form["company"] or None,
            since=functions.parse_day(form["since"]),
            until=functions.parse_day(form["until"]),
            limit=RESULTS_PER_PAGE,
            topic=form["topic"] or None,
        )

    found = await db.execute_fn(run)
    posts = await posts_by_id(db, [result["post_id"] for result in found])
    topics = await topics_by_post(db, list(posts))
    rows = []
    for result in found:
        post = posts.get(result["post_id"])
        if post is None:
            continue
        rows.append(
            {
                **post,
                **result,
                "snippet_html": clean_snippet(result["snippet"]),
                "topics": topics.get(post["id"], []),
            }
        )
    return rows


async def posts_by_id(db, post_ids: list[int]) -> dict[int, dict]:
    """Return posts with their company, keyed by id."""
    if not post_ids:
        return {}
    marks = ", ".join("?" for _ in post_ids)
    rows = await db.execute(
        "select posts.id, posts.title, posts.url, posts.published, posts.author, "
        "coalesce(feeds.company, feeds.title, feeds.slug) as company "
        "from posts join feeds on feeds.id = posts.feed_id "
        f"where posts.id in ({marks})",
        post_ids,
    )
    return {row["id"]: dict(row) for row in rows}


async def topics_by_post(db, post_ids: list[int]) -> dict[int, list[dict]]:
    """Return the topics of each post, best first, keyed by post id."""
    if not post_ids or not await has_tables(db, "topics", "post_topics"):
        return {}
    marks = ", ".join("?" for _ in post_ids)
    rows = await db.execute(
        "select post_topics.post_id, topics.id, topics.label "
        "from post_topics join topics on topics.id = post_topics.topic_id "
        f"where post_topics.post_id in ({marks}) "
        "order by post_topics.post_id, post_topics.score desc",
        post_ids,
    )
    topics: dict[int, list[dict]] = {}
    for row in rows:
        topics.setdefault(row["post_id"], []).append(
            {"id": row["id"], "label": row["label"]}
        )
    return topics


async def company_names(db) -> list[str]:
    rows = await db.execute(
        "select distinct coalesce(company, title, slug) as company from feeds "
        "order by company collate nocase"
    )
    return [row["company"] for row in rows if row["company"]]


async def topic_labels(db) -> list[str]:
    if not await has_tables(db, "topics"):
        return []
    rows = await db.execute(
        "select label from topics where label is not null order by label collate nocase"
    )
    return [row["label"] for row in rows]


async def has_tables(db, *names: str) -> bool:
    tables = set(await db.table_names())
    return all(name in tables for name in names)


async def post_page(datasette, request):
    db = await kb_database(datasette, request)
    raw_id = request.url_vars["post_id"]
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise NotFound(f"Invalid post id {raw_id!r}: use a number, as in /-/kb/post/1.")
    post_id = int(raw_id)
    rows = await db.execute(
        "select posts.*, coalesce(feeds.company, feeds.title, feeds.slug) "
        "as company, feeds.slug as feed_slug, feeds.homepage "
        "from posts join feeds on feeds.id = posts.feed_id where posts.id = ?",
        [post_id],
    )
    post = rows.first()
    if post is None:
        raise NotFound(f"Post {post_id} not found.")
    post = dict(post)
    context = {
        "post": post,
        "content_html": sanitize_html(post["content_html"]),
        "topics": (await topics_by_post(db, [post_id])).get(post_id, []),
        "themes": await post_themes(db, post_id),
        "related": await related_posts(db, post_id, post["company"]),
        "database": db.name,
    }
    return await render(datasette, request, "kb_post.html", context)


async def post_themes(db, post_id: int) -> list[dict]:
    if not await has_tables(db, "post_themes"):
        return []
    description = "null"
    if await has_tables(db, "themes"):
        description = (
            "(select description from themes where themes.name = post_themes.theme)"
        )
    rows = await db.execute(
        f"select theme, score, {description} as description from post_themes "
        "where post_id = ? order by score desc",
        [post_id],
    )
    return [dict(row) for row in rows]


async def related_posts(db, post_id: int, company: str | None) -> list[dict]:
    """Return posts related to ``post_id`` that other companies wrote."""
    if not await has_tables(db, "related_posts"):
        return []
    rows = await db.execute(
        "select posts.id, posts.title, posts.published, related_posts.score, "
        "coalesce(feeds.company, feeds.title, feeds.slug) as company "
        "from related_posts join posts on posts.id = related_posts.related_id "
        "join feeds on feeds.id = posts.feed_id "
        "where related_posts.post_id = ? "
        "and coalesce(feeds.company, feeds.title, feeds.slug) "
        "is not coalesce(?, '') "
        "order by related_posts.rank limit ?",
        [post_id, company, RELATED_LIMIT],
    )
    return [dict(row) for row in rows]


async def digest_page(datasette, request):
    db = await kb_database(datasette, request)
    raw_date = (request.args.get("date") or "").strip()[:MAX_FILTER_CHARS]
    raw_days = (request.args.get("days") or "1").strip()[:MAX_FILTER_CHARS]
    problems = []
    days = 1
    if raw_days.isdigit() and 1 <= int(raw_days) <= MAX_DIGEST_DAYS:
        days = int(raw_days)
    else:
        problems.append(
            f"Invalid days {raw_days!r}: use a whole number from 1 to "
            f"{MAX_DIGEST_DAYS}."
        )
    day = raw_date or await latest_day(db)
    digest = None
    if day and not problems:
        try:
            digest = await db.execute_fn(
                lambda conn: build_digest(search_db(db.path), day, days)
            )
        except KbError as error:
            logger.info("digest page: %s", error)
            problems.append(str(error))
    context = {
        "digest": digest,
        "day": day,
        "days": days,
        "problems": problems,
        "database": db.name,
    }
    return await render(
        datasette, request, "kb_digest.html", context, status=400 if problems else 200
    )


async def latest_day(db) -> str | None:
    """Return the day (YYYY-MM-DD) of the newest post, None for no posts."""
    # max() before date() reads one entry of the posts_published index, where
    # max(date(published)) scans every post; both agree because ingest stores
    # every time as UTC ISO 8601 text, which sorts in time order.
    row = (await db.execute("select date(max(published)) as day from posts")).first()
    return row["day"] if row else None


async def render(datasette, request, template, context, status=200) -> Response:
    html = await datasette.render_template(template, context, request=request)
    return Response.html(html, status=status)


async def render_query_cell(datasette, database, column, value):
    """Render a query result cell on a kb database, or return None for the default.

    A ``snippet`` from kb_search keeps its <mark> highlights, and a ``post_id``
    links to the post page.
    """
    if database not in await kb_database_names(datasette):
        return None
    if column == "snippet" and isinstance(value, str) and "<mark>" in value:
        return clean_snippet(value)
    if column == "post_id" and isinstance(value, int):
        url = datasette.urls.path(f"/-/kb/post/{value}")
        return markupsafe.Markup(f'<a href="{url}">{value}</a>')
    return None


ROUTES = [
    (r"^/-/kb/?$", index_page),
    (r"^/-/kb/search$", search_page),
    # Any id reaches the view, so a bad one gets a message that says why.
    (r"^/-/kb/post/(?P<post_id>[^/]*)$", post_page),
    (r"^/-/kb/digest$", digest_page),
]
