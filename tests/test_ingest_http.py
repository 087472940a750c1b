"""kb ingest in fetch mode, against real HTTP servers on 127.0.0.1."""

import time
from email.utils import formatdate

import pytest
from faultserver import SAMPLE_RSS, fault_server_fixture  # noqa: F401

from kb.feeds import add_feed
from kb.fetch import FetchSettings
from kb.ingest import ingest_feeds

FAST = FetchSettings(connect_timeout=2, read_timeout=2, deadline=3, max_bytes=2_000_000)


def latest_snapshots(corpus_dir):
    """Return the newest snapshot of each corpus source."""
    return {
        source.name: sorted(source.glob("*.xml"))[-1]
        for source in sorted(corpus_dir.iterdir())
    }


@pytest.fixture
def served_corpus(fresh_db, fault_server, corpus_dir):
    """Serve the newest snapshot of every corpus source with validators."""
    modified = formatdate(time.time() - 3600, usegmt=True)
    for slug, path in latest_snapshots(corpus_dir).items():
        url = fault_server.feed(
            f"/{slug}.xml",
            path.read_bytes(),
            etag=f'"{slug}-v1"',
            last_modified=modified,
        )
        add_feed(fresh_db, url, slug=slug)
    return fault_server


def test_second_fetch_is_conditional_and_gets_304(fresh_db, served_corpus):
    first = ingest_feeds(fresh_db, settings=FAST)
    assert first.failed == 0
    assert first.new > 1000
    posts = fresh_db["posts"].count

    second = ingest_feeds(fresh_db, settings=FAST)
    assert {outcome.outcome for outcome in second.outcomes} == {"not_modified"}
    assert second.exit_code == 0
    assert fresh_db["posts"].count == posts
    for slug in ("netflix-techblog", "the-batch"):
        request = served_corpus.requests_for(f"/{slug}.xml")[-1]
        assert request.headers["if-none-match"] == f'"{slug}-v1"'
    statuses = {
        row[0]
        for row in fresh_db.execute(
            "select http_status from fetches where run_id = ?", [second.run_ids[0]]
        )
    }
    assert statuses == {304}


def test_unchanged_body_without_validators_is_not_parsed_again(fresh_db, fault_server):
    url = fault_server.feed("/plain.xml", SAMPLE_RSS)
    add_feed(fresh_db, url, slug="plain")
    ingest_feeds(fresh_db, settings=FAST)
    second = ingest_feeds(fresh_db, settings=FAST)
    assert [outcome.outcome for outcome in second.outcomes] == ["not_modified"]


def test_one_bad_feed_never_stops_the_others(fresh_db, fault_server):
    good = fault_server.feed("/good.xml", SAMPLE_RSS)
    bad = {
        "hang": fault_server.hang("/hang"),
        "error": fault_server.respond("/error", 500, b"oops"),
        "gone": fault_server.respond("/gone", 410),
        "page": fault_server.html_page("/page"),
        "huge": fault_server.huge("/huge", 5_000_000),
    }
    for slug, url in {"good": good, **bad}.items():
        add_feed(fresh_db, url, slug=slug)
    started = time.monotonic()
    report = ingest_feeds(fresh_db, settings=FAST)
    assert time.monotonic() - started < 15
    outcomes = {outcome.name: outcome for outcome in report.outcomes}
    assert outcomes["good"].new == 1
    assert all(outcomes[slug].failed for slug in bad)
    assert report.exit_code == 1
    feeds = {row["slug"]: row for row in fresh_db["feeds"].rows}
    assert feeds["gone"]["status"] == "retired"
    assert "500" in feeds["error"]["last_error"]
    assert (
        "HTML" in feeds["page"]["last_error"]
        or "not a feed" in feeds["page"]["last_error"]
    )
    assert feeds["hang"]["consecutive_failures"] == 1
    assert feeds["hang"]["next_fetch_after"] is not None
    for slug in bad:
        assert feeds[slug]["last_error"], slug


def test_failed_feed_waits_for_its_back_off(fresh_db, fault_server):
    add_feed(fresh_db, fault_server.respond("/error", 500), slug="error")
    ingest_feeds(fresh_db, settings=FAST)
    second = ingest_feeds(fresh_db, settings=FAST)
    assert second.outcomes == []
    assert fault_server.hits("/error") == 1


def test_all_feeds_failing_gives_exit_status_2(fresh_db, fault_server):
    add_feed(fresh_db, fault_server.respond("/a", 500), slug="a")
    add_feed(
        fresh_db,
        fault_server.respond("/b", 503, headers={"Retry-After": "120"}),
        slug="b",
    )
    assert ingest_feeds(fresh_db, settings=FAST).exit_code == 2


@pytest.mark.parametrize(
    "status,moves", [(301, True), (308, True), (302, False), (307, False)]
)
def test_redirect_updates_url_only_when_permanent(
    fresh_db, fault_server, status, moves
):
    target = fault_server.feed("/new.xml", SAMPLE_RSS)
    old = fault_server.redirect("/old.xml", status, "/new.xml")
    add_feed(fresh_db, old, slug="moving")
    report = ingest_feeds(fresh_db, settings=FAST)
    assert report.new == 1
    stored = next(fresh_db["feeds"].rows)["url"]
    assert stored == (target if moves else old)


def test_ingest_from_url_replays_it_once(db_file, fault_server):
    from click.testing import CliRunner

    from kb.cli import cli

    url = fault_server.feed("/saved.xml", SAMPLE_RSS)
    arguments = ["ingest", "--from", url, "--db", str(db_file), "--no-embed"]
    first = CliRunner().invoke(cli, arguments)
    assert first.exit_code == 0, first.output
    assert "1 new" in first.output
    second = CliRunner().invoke(cli, arguments)
    assert "nothing changed" in second.output
