"""One ``kb ingest`` over feeds that fail in every way a server can, next to good ones.

Every feed of the run points at the fault server on 127.0.0.1. A bad feed
must end in a correct ingest or in a per-feed error that names its URL and
the reason, in both ``fetches.error`` and ``feeds.last_error``. The good
feeds must still ingest, and the run must end within its deadline.
"""

import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
from faultserver import (
    FaultServer,
    fault_server_fixture,  # noqa: F401 - the fault_server fixture
)

from kb.db import open_db
from kb.feeds import add_feed
from kb.fetch import FetchSettings
from kb.ingest import ingest_feeds

MB = 1024 * 1024
DEADLINE = 10.0
# Time for the good feeds to parse and the run to write its rows after the
# slowest feed hits its deadline, with room for a loaded 2-core machine.
RUN_SLACK = 10.0
# The read timeout is much shorter than the deadline, so a stalled server
# meets the timeout and a trickling one the deadline, even when decoding
# the capped bodies keeps a busy machine from running the client on time.
SETTINGS = FetchSettings(
    connect_timeout=2,
    read_timeout=2,
    deadline=DEADLINE,
    max_bytes=2 * MB,
    # Every feed is on 127.0.0.1, so a per-host cap of 2 would queue the
    # hanging feeds behind each other and measure the cap, not the deadline.
    max_concurrency=32,
    max_per_host=32,
)
RETRY_AFTER_SECONDS = 3 * 24 * 3600


def rss(name: str, count: int) -> bytes:
    """Return an RSS document of ``count`` items whose links are unique to ``name``."""
    items = "".join(
        f"<item><title>{name} post {number}</title>"
        f"<link>http://127.0.0.1/{name}/{number}</link>"
        f"<guid>{name}-{number}</guid>"
        f"<description>Text of {name} post {number}.</description></item>"
        for number in range(count)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
        f"<title>{name}</title><link>http://127.0.0.1/{name}</link>"
        f"{items}</channel></rss>"
    ).encode()


def closed_port_url() -> str:
    """Return a URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/feed.xml"


# Each bad feed, the fault it meets, and words its error must contain.
FAILURES = {
    "slow-past-timeout": "read timed out",
    "hang": "read timed out",
    "trickle": "deadline",
    "reset": "Connection reset",
    "reset-after-headers": "Connection reset",
    "truncated": "without sending complete message body",
    "http-500": "HTTP 500",
    "http-429": "HTTP 429",
    "redirect-loop": "redirect loop",
    "redirect-chain": "more than 5 redirects",
    "gzip-bomb": "cap",
    "huge-body": "cap",
    "huge-declared": "Content-Length",
    "html-page": "HTML page",
    "refused": "Connection refused",
}
# Feeds served oddly that must still ingest, with their post counts.
SUCCESSES = {
    "good-plain": 3,
    "good-gzip": 2,
    "slow-within-timeout": 1,
    "wrong-content-type": 2,
    "lying-encoding": 1,
}


def register_routes(server) -> dict[str, str]:
    """Register one route per case and return its URL by feed slug."""
    urls = {
        "good-plain": server.feed("/good.xml", rss("good-plain", 3)),
        "good-gzip": server.feed("/gzip.xml", rss("good-gzip", 2), compress=True),
        "slow-within-timeout": server.slow(
            "/slow-ok", 0.3, rss("slow-within-timeout", 1)
        ),
        "wrong-content-type": server.feed(
            "/text.xml", rss("wrong-content-type", 2), content_type="text/plain"
        ),
        "lying-encoding": server.lying_encoding("/lying.xml"),
        "slow-past-timeout": server.slow("/slow-late", 30),
        "hang": server.hang("/hang"),
        "trickle": server.trickle("/trickle", interval=0.05),
        "reset": server.reset("/reset"),
        "reset-after-headers": server.reset("/reset-late", after_headers=True),
        "truncated": server.truncated("/truncated", rss("truncated", 5)),
        "http-500": server.respond("/500", 500, b"internal error\n"),
        "http-429": server.retry_after("/429", 429, str(RETRY_AFTER_SECONDS)),
        "redirect-loop": server.redirect("/loop-a", 302, "/loop-b"),
        "redirect-chain": server.redirect("/hop-0", 301, "/hop-1"),
        "gzip-bomb": server.gzip_bomb("/bomb", 100 * MB),
        "huge-body": server.huge("/huge", 100 * MB),
        "huge-declared": server.huge("/huge-declared", 100 * MB, declare_length=True),
        "html-page": server.html_page("/moved"),
        "refused": closed_port_url(),
    }
    server.redirect("/loop-b", 302, "/loop-a")
    for hop in range(1, 10):
        server.redirect(f"/hop-{hop}", 301, f"/hop-{hop + 1}")
    return urls


@pytest.fixture(scope="module")
def module_server():
    server = FaultServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, module_server):
    """Run one ingest over every case; return the db, report, URLs and wall time.

    The run is shared by the tests of this module, which only read it.
    """
    db = open_db(tmp_path_factory.mktemp("faults") / "kb.db")
    urls = register_routes(module_server)
    for slug, url in urls.items():
        add_feed(db, url, slug=slug)
    started = time.monotonic()
    report = ingest_feeds(db, settings=SETTINGS)
    elapsed = time.monotonic() - started
    yield db, report, urls, elapsed
    db.close()


def feed_row(db, slug: str) -> dict:
    return next(db.query("select * from feeds where slug = ?", [slug]))


def fetch_row(db, slug: str) -> dict:
    return next(
        db.query(
            "select fetches.* from fetches join feeds on feeds.id = fetches.feed_id "
            "where feeds.slug = ?",
            [slug],
        )
    )


def post_titles(db, slug: str) -> list[str]:
    rows = db.query(
        "select posts.title from posts join feeds on feeds.id = posts.feed_id "
        "where feeds.slug = ? order by posts.title",
        [slug],
    )
    return [row["title"] for row in rows]


def test_fault_run_ends_within_deadline(fault_run):
    _, report, urls, elapsed = fault_run
    assert len(report.outcomes) == len(urls)
    assert elapsed < DEADLINE + RUN_SLACK


def test_fault_run_reports_partial(fault_run):
    db, report, _, _ = fault_run
    assert report.failed == len(FAILURES)
    assert report.exit_code == 1
    (run,) = db.query("select * from runs")
    assert run["status"] == "partial"
    assert run["feeds_failed"] == len(FAILURES)
    assert run["feeds_ok"] == len(SUCCESSES)
    assert run["finished_at"] is not None


@pytest.mark.parametrize("slug", sorted(FAILURES))
def test_fault_names_url_and_reason(fault_run, slug):
    db, _, urls, _ = fault_run
    feed = feed_row(db, slug)
    fetch = fetch_row(db, slug)
    assert fetch["outcome"] == "failed"
    assert urls[slug] in fetch["error"]
    assert FAILURES[slug] in fetch["error"]
    assert feed["last_error"] == fetch["error"]
    assert feed["consecutive_failures"] == 1
    assert feed["next_fetch_after"] is not None
    assert post_titles(db, slug) == []


@pytest.mark.parametrize("slug", sorted(SUCCESSES))
def test_odd_but_valid_feed_ingests(fault_run, slug):
    db, _, _, _ = fault_run
    feed = feed_row(db, slug)
    fetch = fetch_row(db, slug)
    assert fetch["error"] is None
    assert fetch["outcome"] == "new"
    assert feed["last_error"] is None
    assert feed["consecutive_failures"] == 0
    assert len(post_titles(db, slug)) == SUCCESSES[slug]


def test_lying_encoding_decodes_as_cp1252(fault_run):
    db, _, _, _ = fault_run
    assert post_titles(db, "lying-encoding") == ["Crème brûlée at scale"]
    assert "mis-encoded" in fetch_row(db, "lying-encoding")["warning"]


def test_retry_after_delays_next_fetch(fault_run):
    db, _, _, _ = fault_run
    next_fetch = datetime.fromisoformat(feed_row(db, "http-429")["next_fetch_after"])
    earliest = datetime.now(timezone.utc) + timedelta(seconds=RETRY_AFTER_SECONDS)
    assert next_fetch >= earliest - timedelta(minutes=5)


def test_capped_bodies_stop_reading(fault_run, module_server):
    db, _, _, _ = fault_run
    cap = SETTINGS.max_bytes
    # The server can only send what the client reads plus what the loopback
    # socket buffers take (a few MB), so a client that stops at the cap
    # leaves most of the 100 MB unsent.
    assert module_server.bytes_sent["/huge"] < 20 * MB
    assert module_server.bytes_sent["/huge-declared"] < 20 * MB
    assert fetch_row(db, "huge-declared")["bytes"] == 0
    assert cap < fetch_row(db, "huge-body")["bytes"] < cap + MB


def test_gzip_bomb_stops_after_one_read(fault_run):
    db, _, _, _ = fault_run
    decoded = fetch_row(db, "gzip-bomb")["bytes"]
    # httpx decodes one network read (at most 64 KiB of gzip, about 66 MB
    # of zeros) before the cap is checked, so the overshoot is bounded by
    # that, far below the 100 MB the body holds.
    assert SETTINGS.max_bytes < decoded < SETTINGS.max_bytes + 70 * MB


def test_failed_feeds_wait_for_backoff(fresh_db, fault_server):
    good = add_feed(fresh_db, fault_server.feed("/good.xml", rss("good", 2)))
    add_feed(fresh_db, fault_server.hang("/hang"))
    add_feed(fresh_db, fault_server.respond("/500", 500))
    first = ingest_feeds(fresh_db, settings=SETTINGS)
    second = ingest_feeds(fresh_db, settings=SETTINGS)
    assert first.failed == 2
    # Only the good feed is due again, and it has not changed.
    assert [outcome.name for outcome in second.outcomes] == [good["slug"]]
    assert second.failed == 0
    assert second.new == 0
    assert fault_server.hits("/good.xml") == 2
    assert fault_server.hits("/hang") == 1
    assert fault_server.hits("/500") == 1


def test_posts_match_fts_after_faults(fault_run):
    db, _, _, _ = fault_run
    db.execute("insert into posts_fts(posts_fts) values('integrity-check')")
    posts = db.execute("select count(*) from posts").fetchone()[0]
    indexed = db.execute("select count(*) from posts_fts").fetchone()[0]
    assert posts == sum(SUCCESSES.values())
    assert indexed == posts
