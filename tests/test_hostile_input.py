"""Hostile feeds, OPML files and search text: nothing expands, leaks or runs.

XML documents with entity bombs and external entities are parsed directly
and through one fetch-mode ingest. Their external targets live on the fault
server, which must receive no request for them. A feed full of script is
ingested and then shown through Datasette, where no script or javascript:
link may appear. Arbitrary search text goes through kb.search, ``kb search``
and every saved query and kb page without a server error.
"""

import asyncio
import json
import shutil
import time
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from faultserver import fault_server_fixture  # noqa: F401 - the fault_server fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb.cli import cli
from kb.db import open_db
from kb.errors import ConfigError, FeedError
from kb.feeds import add_feed, import_opml
from kb.fetch import FetchSettings
from kb.ingest import ingest_feeds
from kb.parse import is_web_link, parse_feed

SECRET = "kb-secret-5f1c"
FAST = FetchSettings(connect_timeout=1, read_timeout=2, deadline=5)
# Parsing any of these documents must take far less than this, because an
# entity bomb that expanded would take minutes and gigabytes.
PARSE_SECONDS = 2.0

LAUGHS_ENTITIES = "".join(
    f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
)
BILLION_LAUGHS = f"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY lol0 "lol">{LAUGHS_ENTITIES}]>
<rss version="2.0"><channel><title>Laughs &lol9;</title>
<link>http://127.0.0.1/laughs</link>
<item><title>Item &lol9;</title><link>http://127.0.0.1/laughs/1</link>
<guid>laughs-1</guid><description>Body &lol9;</description></item>
</channel></rss>"""

# One 100 KB entity used 10,000 times: 1 GB if expanded, no nesting needed.
QUADRATIC_BLOWUP = f"""<?xml version="1.0"?>
<!DOCTYPE feed [<!ENTITY big "{"A" * 100_000}">]>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Quadratic</title>
<id>urn:quadratic</id><updated>2026-08-01T00:00:00Z</updated>
<entry><title>Blow-up</title><id>urn:quadratic:1</id>
<link href="http://127.0.0.1/quadratic/1"/><updated>2026-08-01T00:00:00Z</updated>
<content>{"&big;" * 10_000}</content></entry></feed>"""


def external_entity_feed(secret_path, url_of) -> str:
    """Return an RSS document whose entities point at a local file and the server."""
    return f"""<?xml version="1.0"?>
<!DOCTYPE rss [
<!ENTITY file SYSTEM "file://{secret_path}">
<!ENTITY web SYSTEM "{url_of("/entity")}">
<!ENTITY % remote SYSTEM "{url_of("/remote.dtd")}">
%remote;
]>
<rss version="2.0"><channel><title>External &file;</title>
<link>http://127.0.0.1/xxe</link>
<item><title>File &file; web &web; remote &leak;</title>
<link>http://127.0.0.1/xxe/1</link><guid>xxe-1</guid>
<description>&file; &web; &leak;</description></item>
</channel></rss>"""


def external_dtd_feed(url_of) -> str:
    """Return an Atom document that names an external DTD and XInclude target."""
    return f"""<?xml version="1.0"?>
<!DOCTYPE feed SYSTEM "{url_of("/feed.dtd")}">
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:xi="http://www.w3.org/2001/XInclude">
<title>External DTD</title><id>urn:dtd</id><updated>2026-08-01T00:00:00Z</updated>
<entry><title>Include</title><id>urn:dtd:1</id>
<link href="http://127.0.0.1/dtd/1"/><updated>2026-08-01T00:00:00Z</updated>
<content><xi:include href="{url_of("/include")}" parse="text"/></content>
</entry></feed>"""


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture
def attack_targets(fault_server):
    """Serve what an external entity would fetch, so any fetch is recorded."""
    fault_server.feed("/entity", SECRET.encode(), content_type="text/plain")
    fault_server.feed(
        "/remote.dtd",
        f'<!ENTITY leak "{SECRET}">'.encode(),
        content_type="application/xml-dtd",
    )
    fault_server.feed(
        "/feed.dtd", b'<!ENTITY title "dtd">', content_type="application/xml-dtd"
    )
    fault_server.feed("/include", SECRET.encode(), content_type="text/plain")
    return ["/entity", "/remote.dtd", "/feed.dtd", "/include"]


def attack_documents(secret_file, fault_server) -> dict[str, str]:
    return {
        "billion-laughs": BILLION_LAUGHS,
        "quadratic-blowup": QUADRATIC_BLOWUP,
        "external-entities": external_entity_feed(secret_file, fault_server.url),
        "external-dtd": external_dtd_feed(fault_server.url),
    }


def parsed_text(parsed) -> str:
    """Join every text field of a parsed feed, to search it for leaks."""
    parts = [parsed.title or ""]
    for entry in parsed.entries:
        parts += [entry.title or "", entry.summary or "", entry.content_text]
        parts.append(entry.content_html or "")
    return "\n".join(parts)


# -- XML attacks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["billion-laughs", "quadratic-blowup", "external-entities", "external-dtd"],
)
def test_xml_attack_parses_inert(name, secret_file, fault_server, attack_targets):
    document = attack_documents(secret_file, fault_server)[name]
    started = time.monotonic()
    try:
        parsed = parse_feed(document.encode(), name=name)
    except FeedError:
        parsed = None  # rejecting the document is as safe as parsing it inert
    elapsed = time.monotonic() - started
    assert elapsed < PARSE_SECONDS
    if parsed is not None:
        text = parsed_text(parsed)
        assert SECRET not in text
        assert "lollollol" not in text
        assert "AAAAAAAAAA" * 1000 not in text
        assert len(text) < len(document)
    for path in attack_targets:
        assert fault_server.hits(path) == 0


def test_xml_attacks_in_one_ingest(fresh_db, secret_file, fault_server, attack_targets):
    documents = attack_documents(secret_file, fault_server)
    for name, document in documents.items():
        add_feed(fresh_db, fault_server.feed(f"/{name}.xml", document.encode()))
    add_feed(fresh_db, fault_server.feed("/good.xml"))
    started = time.monotonic()
    report = ingest_feeds(fresh_db, settings=FAST)
    assert time.monotonic() - started < 5 * PARSE_SECONDS
    assert len(report.outcomes) == len(documents) + 1
    requested = {request.path for request in fault_server.requests}
    assert requested == {f"/{name}.xml" for name in documents} | {"/good.xml"}
    stored = fresh_db.execute(
        "select group_concat(coalesce(title, '') || ' ' || coalesce(content_text, '')"
        " || ' ' || coalesce(content_html, ''), ' ') from posts"
    ).fetchone()[0]
    assert SECRET not in stored
    assert "lollollol" not in stored
    assert len(stored) < sum(len(document) for document in documents.values())
    assert fresh_db.execute("select count(*) from posts").fetchone()[0] >= 1


OPML_HEAD = '<?xml version="1.0"?>\n'
OPML_BODY = (
    '<opml version="2.0"><head><title>t</title></head><body>'
    '<outline type="rss" text="&x;" xmlUrl="http://127.0.0.1:1/feed.xml"/>'
    "</body></opml>"
)


@pytest.mark.parametrize(
    "doctype",
    [
        '<!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa"><!ENTITY x "&a;&a;&a;&a;&a;">]>',
        '<!DOCTYPE opml [<!ENTITY x SYSTEM "file://{secret}">]>',
        '<!DOCTYPE opml [<!ENTITY x SYSTEM "{url}">]>',
        '<!DOCTYPE opml SYSTEM "{url}">',
    ],
)
def test_opml_attack_rejected(fresh_db, tmp_path, secret_file, fault_server, doctype):
    entity_url = fault_server.feed("/opml-entity", SECRET.encode())
    declaration = doctype.format(secret=secret_file, url=entity_url)
    path = tmp_path / "attack.opml"
    path.write_text(OPML_HEAD + declaration + OPML_BODY)
    try:
        import_opml(fresh_db, path)
    except ConfigError as error:
        assert str(path) in str(error)
    titles = [row["title"] or "" for row in fresh_db.query("select title from feeds")]
    assert all(SECRET not in title and "aaaaa" not in title for title in titles)
    assert fault_server.hits("/opml-entity") == 0


# -- script in feeds, shown through Datasette -----------------------------------

MARKER = "kbpwned"
HOSTILE_CONTENT = """
<p onclick="kbPwned(8)">Quarterly failover drill.</p>
<script>kbPwned(9)</script>
<img src="x" onerror="kbPwned(10)">
<a href="javascript:kbPwned(11)">click</a>
<a href="&#106;avascript:kbPwned(12)">entity</a>
<a href="jav&#x09;ascript:kbPwned(13)">tab</a>
<iframe src="javascript:kbPwned(14)"></iframe>
<svg onload="kbPwned(15)"><circle r="1"/></svg>
<math><mi xlink:href="javascript:kbPwned(16)">m</mi></math>
<form action="javascript:kbPwned(17)"><button>go</button></form>
<meta http-equiv="refresh" content="0;url=javascript:kbPwned(18)">
<base href="javascript:kbPwned(19)//">
<object data="javascript:kbPwned(20)"></object>
<embed src="javascript:kbPwned(21)">
<style>@import 'javascript:kbPwned(22)';</style>
<div style="background:url(javascript:kbPwned(23))">styled</div>
<a href="data:text/html,&lt;script&gt;kbPwned(24)&lt;/script&gt;">data</a>
"""
HOSTILE_LINKS = [
    "javascript:kbPwned(2)",
    "JaVaScRiPt:kbPwned(3)",
    "vbscript:kbPwned(4)",
    "data:text/html,kbPwned(5)",
    "jav&#x09;ascript:kbPwned(6)",
]


@pytest.mark.parametrize(
    "link, expected",
    [
        ("https://blog.example.com/post", True),
        ("/relative/post", True),
        ("javascript:alert(1)", False),
        ("JaVaScRiPt:alert(1)", False),
        ("jav\tascript:alert(1)", False),  # browsers drop the tab
        ("\x01 javascript:alert(1)", False),  # and leading control characters
        ("vbscript:msgbox(1)", False),
        ("data:text/html,<script>alert(1)</script>", False),
        ("mailto:someone@example.com", False),
    ],
)
def test_is_web_link(link, expected):
    assert is_web_link(link) is expected


def hostile_rss() -> bytes:
    """Return an RSS feed whose every field carries script marked ``kbPwned``."""
    items = [
        f"""<item>
<title>&lt;script&gt;kbPwned(1)&lt;/script&gt; Hostile {number}</title>
<link>{link}</link><guid>hostile-{number}</guid>
<author>&lt;img src=x onerror=kbPwned(7)&gt;</author>
<pubDate>Mon, 03 Aug 2026 10:00:00 GMT</pubDate>
<description>&lt;img src=x onerror=kbPwned(25)&gt; failover drill summary</description>
<content:encoded><![CDATA[{HOSTILE_CONTENT}]]></content:encoded></item>"""
        for number, link in enumerate(HOSTILE_LINKS)
    ]
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0" '
        'xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>'
        "<title>&lt;script&gt;kbPwned(0)&lt;/script&gt; Blog</title>"
        "<link>javascript:kbPwned(0)</link>" + "".join(items) + "</channel></rss>"
    ).encode()


def unsafe_url(value: str) -> bool:
    """Tell whether a URL would run script, as a browser reads it."""
    # Browsers drop ASCII tabs and newlines anywhere in a URL and strip
    # leading control characters and spaces, so "jav\tascript:" still runs.
    squeezed = "".join(char for char in value if char > " ").lower()
    return squeezed.startswith(("javascript:", "vbscript:", "data:text/html"))


def executable_payloads(html: str) -> list[str]:
    """Return every place in ``html`` where the marked script could run."""
    from bs4 import BeautifulSoup

    found = []
    for element in BeautifulSoup(html, "lxml").find_all(True):
        source = str(element).lower()
        if element.name in ("script", "style") and MARKER in source:
            found.append(source[:120])
        if element.name in ("iframe", "object", "embed", "base", "frame"):
            found.append(source[:120])
        if (
            element.name == "meta"
            and element.get("http-equiv", "").lower() == "refresh"
        ):
            found.append(source[:120])
        for name, value in element.attrs.items():
            value = " ".join(value) if isinstance(value, list) else value
            if name.startswith("on") and MARKER in value.lower():
                found.append(f"{name}={value}")
            elif unsafe_url(value) or (name == "style" and "javascript:" in value):
                found.append(f"{name}={value}")
    return found


@pytest.fixture(scope="module")
def hostile_kb(tmp_path_factory):
    """A database that ingested the hostile feed over HTTP and embedded it."""
    from faultserver import FaultServer

    from kb.embed import embed_posts

    path = tmp_path_factory.mktemp("hostile") / "kb.db"
    server = FaultServer().start()
    try:
        db = open_db(path)
        add_feed(db, server.feed("/hostile.xml", hostile_rss()), slug="hostile")
        report = ingest_feeds(db, settings=FAST)
        assert report.failed == 0
        embed_posts(db, "hash:64")
        db.close()
    finally:
        server.close()
    return path


def test_hostile_feed_stored_inert(hostile_kb):
    db = open_db(hostile_kb)
    posts = list(db.query("select * from posts"))
    feed = next(db.query("select * from feeds where slug = 'hostile'"))
    db.close()
    assert len(posts) == len(HOSTILE_LINKS)
    assert not unsafe_url(feed["homepage"] or "")
    for post in posts:
        assert post["url"] is None or post["url"].startswith("http")
        assert post["link"] is None or post["link"].startswith("http")
        assert executable_payloads(post["content_html"] or "") == []
        assert "<" not in (post["summary"] or "").replace("<img", "")


@pytest.fixture(scope="module")
def hostile_datasette(hostile_kb):
    from kb.serve import build_datasette, start

    datasette = build_datasette(hostile_kb, model="hash:64")
    start(datasette)
    return datasette


def fetch_page(datasette, path: str):
    return asyncio.run(datasette.client.get(path, follow_redirects=True))


def post_ids(path) -> list[int]:
    db = open_db(path)
    ids = [row["id"] for row in db.query("select id from posts order by id")]
    db.close()
    return ids


HOSTILE_PAGES = [
    "/-/kb/post/{id}",
    "/kb/posts/{id}",
    "/kb/posts_view?_search=failover",
    "/-/kb/search?q=failover+hostile",
    "/-/kb/search?q=failover&mode=keyword",
    "/kb/search?q=failover+hostile&mode=keyword",
    "/kb/search?q=hostile&mode=semantic",
    "/-/kb/digest?date=2026-08-03",
    "/kb/daily_digest?date=2026-08-03",
    "/kb/feeds",
    "/kb/feed_health",
]


@pytest.mark.parametrize("template", HOSTILE_PAGES)
def test_hostile_post_shown_inert(hostile_kb, hostile_datasette, template):
    for post_id in post_ids(hostile_kb)[:2] if "{id}" in template else [None]:
        response = fetch_page(hostile_datasette, template.format(id=post_id))
        assert response.status_code == 200
        assert MARKER in response.text.lower()  # the post is on the page
        assert executable_payloads(response.text) == []


def test_hostile_digest_atom_inert(hostile_datasette):
    import xml.etree.ElementTree as ET

    response = fetch_page(hostile_datasette, "/kb/daily_digest.atom?date=2026-08-03")
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    atom = "{http://www.w3.org/2005/Atom}"
    entries = root.findall(f"{atom}entry")
    assert len(entries) == len(HOSTILE_LINKS)
    for entry in entries:
        for link in entry.findall(f"{atom}link"):
            assert not unsafe_url(link.get("href", ""))
        content = entry.findtext(f"{atom}content") or ""
        assert executable_payloads(content) == []


# -- arbitrary search text -----------------------------------------------------

# Words and characters with a meaning in FTS5 queries, SQL, HTML or URLs.
SPECIAL_TOKENS = [
    '"', "'", "*", "^", ":", "(", ")", "-", "+", "NEAR", "NEAR(", "AND", "OR",
    "NOT", "title:", "content_text:", "{title}", "%", "_", "\\", ";", "--",
    "<script>", "&amp;", "%00", "\x00", "\u202e", "😀", "ß", "İ",
    "'; drop table posts; --",
]  # fmt: skip
SEARCH_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.one_of(st.sampled_from(SPECIAL_TOKENS), st.text(max_size=10)), max_size=12
    ).map(" ".join),
)
SEARCH_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MODES = ["hybrid", "keyword", "semantic"]


@pytest.fixture(scope="module")
def embedded_corpus(corpus_db_path, tmp_path_factory):
    """A copy of the corpus database with vectors from the hash:64 test model.

    Nothing searches this file. Each user gets its own copy, because a search
    through the library may write (it can add a vec0 index to the file).
    """
    from kb.embed import embed_posts

    path = tmp_path_factory.mktemp("embedded") / "kb.db"
    shutil.copy(corpus_db_path, path)
    db = open_db(path)
    embed_posts(db, "hash:64")
    db.close()
    return path


@pytest.fixture(scope="module")
def search_db_path(embedded_corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "kb.db"
    shutil.copy(embedded_corpus, path)
    return path


@pytest.fixture(scope="module")
def search_db(search_db_path):
    db = open_db(search_db_path)
    yield db
    db.close()


@SEARCH_SETTINGS
@given(
    query=SEARCH_TEXT,
    mode=st.sampled_from(MODES),
    source=st.none() | SEARCH_TEXT,
    since=st.none() | SEARCH_TEXT,
)
def test_search_any_text(search_db, query, mode, source, since):
    from kb.errors import SearchError
    from kb.search import search

    try:
        results = search(
            search_db,
            query,
            mode=mode,
            source=source,
            since=since,
            model_name="hash:64",
        )
    except SearchError as error:
        # Only a filter can be invalid: any query text is a valid query.
        assert since and str(error)
        return
    assert len(results) <= 10
    assert all(isinstance(result.post_id, int) for result in results)


@SEARCH_SETTINGS
@given(query=SEARCH_TEXT, mode=st.sampled_from(MODES))
def test_search_cli_any_text(search_db_path, query, mode):
    arguments = ["search", "--mode", mode, "--model", "hash:64"]
    arguments += ["--db", str(search_db_path), "--json", "--", query]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert isinstance(json.loads(result.stdout), list)


@pytest.fixture(scope="module")
def search_datasette(embedded_corpus, tmp_path_factory):
    from kb.serve import build_datasette, start

    path = tmp_path_factory.mktemp("serve") / "kb.db"
    shutil.copy(embedded_corpus, path)
    datasette = build_datasette(path, model="hash:64")
    start(datasette)
    return datasette


def saved_queries() -> dict[str, list[str]]:
    """Return each saved query of metadata.yml with its parameter names."""
    from kb.serve import load_metadata

    queries = load_metadata()["databases"]["kb"]["queries"]
    return {name: query.get("params", []) for name, query in queries.items()}


KB_PAGES = {
    "/-/kb/search": ["q", "mode", "company", "since", "until", "topic"],
    "/-/kb/digest": ["date"],
}


def assert_no_server_error(response) -> None:
    assert response.status_code < 500, response.text[-2000:]
    assert "Traceback" not in response.text


@SEARCH_SETTINGS
@given(
    query=st.sampled_from(sorted(saved_queries())),
    values=st.lists(SEARCH_TEXT, min_size=6, max_size=6),
    extension=st.sampled_from(["", ".json"]),
)
def test_saved_queries_any_text(search_datasette, query, values, extension):
    params = dict(zip(saved_queries()[query], values, strict=False))
    path = f"/kb/{query}{extension}?{urlencode(params)}"
    assert_no_server_error(fetch_page(search_datasette, path))


@SEARCH_SETTINGS
@given(
    page=st.sampled_from(sorted(KB_PAGES)),
    values=st.lists(SEARCH_TEXT, min_size=6, max_size=6),
)
def test_kb_pages_any_text(search_datasette, page, values):
    params = dict(zip(KB_PAGES[page], values, strict=False))
    assert_no_server_error(fetch_page(search_datasette, f"{page}?{urlencode(params)}"))


@SEARCH_SETTINGS
@given(post_id=SEARCH_TEXT)
def test_post_page_any_id(search_datasette, post_id):
    from urllib.parse import quote

    response = fetch_page(search_datasette, f"/-/kb/post/{quote(post_id, safe='')}")
    assert_no_server_error(response)
