import json
import logging
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from click.testing import CliRunner
from conftest import shared_path
from faultserver import fault_server_fixture  # noqa: F401 - the fault_server fixture

from kb import feeds as sources
from kb.cli import cli
from kb.companies import company_for
from kb.db import open_db
from kb.errors import ConfigError
from kb.fetch import FeedRequest, FetchResult, FetchSettings, fetch_all

NOW = datetime(2026, 8, 20, 2, 0, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parent.parent
SOURCES_OPML = REPO / "data" / "sources.opml"
CORPUS_OPML_FILES = [
    "awesome-rss-feeds-programming.opml",
    "awesome-rss-feeds-tech.opml",
    "engblogs-peterc.opml",
    "engineering-blogs-kilimchoi.opml",
    "rsparser-subs-no-title-attributes.opml",
    "rsparser-subs.opml",
]
# The thirty sources the digest is built from, by slug.
NAMED_SOURCES = {
    "airbnb-engineering": "Airbnb",
    "aws-machine-learning": "AWS",
    "aws-engineering": "AWS",
    "aws-open-source": "AWS",
    "brettterpstra": "Brett Terpstra",
    "bytebytego": "ByteByteGo",
    "cloudflare-blog": "Cloudflare",
    "dropbox-tech": "Dropbox",
    "meta-engineering": "Meta",
    "github-engineering": "GitHub",
    "github-blog": "GitHub",
    "google-ai-blog": "Google",
    "google-deepmind-blog": "Google DeepMind",
    "google-open-source": "Google",
    "hashicorp-blog": "HashiCorp",
    "infoq": "InfoQ",
    "spotify-engineering": "Spotify",
    "microsoft-research": "Microsoft",
    "official-microsoft-blog": "Microsoft",
    "mozilla-hacks": "Mozilla",
    "netflix-techblog": "Netflix",
    "nvidia-blog": "NVIDIA",
    "oreilly-radar": "O'Reilly",
    "openai-blog": "OpenAI",
    "soundcloud-backstage": "SoundCloud",
    "stripe-engineering": "Stripe",
    "the-batch": "DeepLearning.AI",
    "dropbox-blog": "Dropbox",
    "vercel-blog": "Vercel",
    "yelp-engineering": "Yelp",
}


def add(db, url="https://example.com/feed.xml", **fields) -> dict:
    return sources.add_feed(db, url, **fields)


def result_for(feed, **fields) -> FetchResult:
    return FetchResult(
        request=FeedRequest(feed["id"], feed["url"]), final_url=feed["url"], **fields
    )


def stored(db, feed) -> dict:
    return sources.find_feed_by(db, "id", feed["id"])


def add_post(db, feed) -> None:
    db["posts"].insert(
        {
            "feed_id": feed["id"],
            "url": f"https://example.com/posts/{feed['id']}",
            "fingerprint": "f",
            "title": "A post",
            "first_seen": "2026-08-20T00:00:00+00:00",
            "content_hash": "h",
        },
        alter=False,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def feed_rows(db) -> list[dict]:
    """Rows without the columns that differ between two databases."""
    ignored = {"id", "added_at"}
    rows = db.query("SELECT * FROM feeds ORDER BY url")
    return [{k: v for k, v in row.items() if k not in ignored} for row in rows]


# -- record_fetch_outcome ----------------------------------------------------


def test_success_stores_validators(fresh_db):
    feed = add(fresh_db)
    result = result_for(
        feed, status=200, body=b"<rss/>", etag='"v1"', last_modified="x"
    )
    sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    row = stored(fresh_db, feed)
    assert row["etag"] == '"v1"'
    assert row["last_modified"] == "x"
    assert row["last_fetched_at"] == "2026-08-20T02:00:00+00:00"
    assert row["last_success_at"] == "2026-08-20T02:00:00+00:00"
    assert row["consecutive_failures"] == 0
    assert row["next_fetch_after"] is None


def test_success_clears_failures(fresh_db):
    feed = add(fresh_db)
    failed = result_for(feed, error="boom")
    sources.record_fetch_outcome(fresh_db, feed, failed, NOW)
    sources.record_fetch_outcome(fresh_db, feed, failed, NOW)
    sources.record_fetch_outcome(fresh_db, feed, result_for(feed, status=304), NOW)
    row = stored(fresh_db, feed)
    assert row["consecutive_failures"] == 0
    assert row["last_error"] is None
    assert row["next_fetch_after"] is None


def test_failure_schedules_backoff(fresh_db):
    feed = add(fresh_db)
    result = result_for(feed, error="https://example.com/feed.xml: HTTP 500")
    sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    first = stored(fresh_db, feed)
    sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    second = stored(fresh_db, feed)
    assert first["consecutive_failures"] == 1
    assert second["consecutive_failures"] == 2
    assert first["last_error"] == "https://example.com/feed.xml: HTTP 500"
    assert first["last_success_at"] is None
    first_delay = datetime.fromisoformat(first["next_fetch_after"]) - NOW
    second_delay = datetime.fromisoformat(second["next_fetch_after"]) - NOW
    assert timedelta(minutes=45) <= first_delay <= timedelta(hours=1)
    assert timedelta(minutes=90) <= second_delay <= timedelta(hours=2)


def test_failure_keeps_validators(fresh_db):
    feed = add(fresh_db)
    ok = result_for(feed, status=200, etag='"v1"')
    sources.record_fetch_outcome(fresh_db, feed, ok, NOW)
    sources.record_fetch_outcome(fresh_db, feed, result_for(feed, error="x"), NOW)
    assert stored(fresh_db, feed)["etag"] == '"v1"'


def test_failure_honours_retry_after(fresh_db):
    feed = add(fresh_db)
    result = result_for(feed, status=503, error="busy", retry_after=86400.0)
    sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    row = stored(fresh_db, feed)
    assert row["next_fetch_after"] == "2026-08-21T02:00:00+00:00"


def test_error_argument_counts_as_failure(fresh_db):
    feed = add(fresh_db)
    result = result_for(feed, status=200, body=b"<html>", etag='"v1"')
    sources.record_fetch_outcome(fresh_db, feed, result, NOW, error="not a feed")
    row = stored(fresh_db, feed)
    assert row["consecutive_failures"] == 1
    assert row["last_error"] == "not a feed"
    assert row["etag"] is None


def test_gone_retires_feed(fresh_db, caplog):
    feed = add(fresh_db)
    result = result_for(feed, status=410, gone=True, error="HTTP 410 Gone")
    with caplog.at_level(logging.WARNING, logger="kb.feeds"):
        sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    row = stored(fresh_db, feed)
    assert row["status"] == "retired"
    assert row["last_error"] == "HTTP 410 Gone"
    assert "retired" in caplog.text
    assert sources.due_feeds(fresh_db, NOW) == []


def test_permanent_redirect_moves_url(fresh_db):
    feed = add(fresh_db)
    result = result_for(feed, status=200, permanent_url="https://new.example.com/feed")
    sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    assert stored(fresh_db, feed)["url"] == "https://new.example.com/feed"


def test_permanent_redirect_to_taken_url_warns(fresh_db, caplog):
    feed = add(fresh_db, slug="old")
    add(fresh_db, "https://new.example.com/feed", slug="other")
    result = result_for(feed, status=200, permanent_url="https://new.example.com/feed")
    with caplog.at_level(logging.WARNING, logger="kb.feeds"):
        sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    assert stored(fresh_db, feed)["url"] == "https://example.com/feed.xml"
    assert "already uses" in caplog.text
    assert "other" in caplog.text


def test_failed_permanent_redirect_keeps_url(fresh_db):
    feed = add(fresh_db)
    result = result_for(
        feed, status=500, error="HTTP 500", permanent_url="https://new.example.com/"
    )
    sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    assert stored(fresh_db, feed)["url"] == "https://example.com/feed.xml"


def test_outcome_joins_caller_transaction(fresh_db):
    feed = add(fresh_db)
    result = result_for(feed, status=200, etag='"v1"')
    with pytest.raises(RuntimeError):
        with fresh_db.atomic():
            sources.record_fetch_outcome(fresh_db, feed, result, NOW)
            raise RuntimeError("the post storage failed")
    row = stored(fresh_db, feed)
    assert row["etag"] is None
    assert row["last_fetched_at"] is None


def test_fetch_and_record_round_trip(fresh_db, fault_server):
    url = fault_server.feed("/feed.xml", etag='"v7"')
    feed = add(fresh_db, url)
    settings = FetchSettings(read_timeout=2, deadline=5)
    for _ in range(2):
        feed = stored(fresh_db, feed)
        request = FeedRequest(
            feed["id"], feed["url"], feed["etag"], feed["last_modified"]
        )
        (result,) = fetch_all([request], settings=settings)
        sources.record_fetch_outcome(fresh_db, feed, result, NOW)
    assert result.not_modified
    assert fault_server.requests_for("/feed.xml")[1].headers["if-none-match"] == '"v7"'
    assert stored(fresh_db, feed)["etag"] == '"v7"'


# -- due_feeds ---------------------------------------------------------------


def test_due_feeds_respects_next_attempt(fresh_db):
    never = add(fresh_db, "https://a.example/feed", slug="never-failed")
    past = add(fresh_db, "https://b.example/feed", slug="past")
    future = add(fresh_db, "https://c.example/feed", slug="future")
    exact = add(fresh_db, "https://d.example/feed", slug="exact")
    for feed, when in [
        (past, NOW - timedelta(minutes=1)),
        (future, NOW + timedelta(minutes=1)),
        (exact, NOW),
    ]:
        sources.update_feed(
            fresh_db, feed["id"], {"next_fetch_after": when.isoformat()}
        )
    due = [feed["slug"] for feed in sources.due_feeds(fresh_db, NOW)]
    assert due == [never["slug"], past["slug"], exact["slug"]]


def test_due_feeds_skips_inactive(fresh_db):
    add(fresh_db, "https://a.example/feed", slug="active")
    disabled = add(fresh_db, "https://b.example/feed", slug="disabled")
    retired = add(fresh_db, "https://c.example/feed", slug="retired")
    sources.update_feed(fresh_db, disabled["id"], {"status": "disabled"})
    sources.update_feed(fresh_db, retired["id"], {"status": "retired"})
    assert [feed["slug"] for feed in sources.due_feeds(fresh_db, NOW)] == ["active"]


def test_due_feeds_accepts_other_offsets(fresh_db):
    feed = add(fresh_db)
    # 03:30 at +02:00 is 01:30 UTC, before NOW.
    sources.update_feed(
        fresh_db, feed["id"], {"next_fetch_after": "2026-08-20T03:30:00+02:00"}
    )
    assert len(sources.due_feeds(fresh_db, NOW)) == 1


# -- add, remove, list -------------------------------------------------------


def test_add_feed_derives_slug_and_company(fresh_db):
    feed = add(fresh_db, "https://netflixtechblog.com/feed", title="Netflix TechBlog")
    assert feed["slug"] == "netflix-techblog"
    assert feed["company"] == "Netflix"
    assert feed["status"] == "active"
    assert feed["added_at"]


def test_add_feed_without_title_slugs_url(fresh_db):
    feed = add(fresh_db, "https://www.example.com/blog/feed.xml")
    assert feed["slug"] == "example-com-blog-feed-xml"


def test_add_feed_makes_slug_unique(fresh_db):
    first = add(fresh_db, "https://a.example/feed", title="Engineering")
    second = add(fresh_db, "https://b.example/feed", title="Engineering")
    assert first["slug"] == "engineering"
    assert second["slug"] == "engineering-2"


def test_add_feed_keeps_given_fields(fresh_db):
    feed = add(
        fresh_db,
        "https://blog.example.org/rss",
        title="Example",
        company="Example Corp",
        homepage="https://blog.example.org/",
        slug="Example Blog",
    )
    assert feed["slug"] == "example-blog"
    assert feed["company"] == "Example Corp"
    assert feed["homepage"] == "https://blog.example.org/"


# Each URL that kb feeds add and kb feeds import reject, with the reason.
INVALID_URLS = [
    ("ftp://example.com/feed", "only http and https"),
    ("feed.xml", "only http and https"),
    ("https://", "no host name"),
    ("https://exa mple.com/feed", "host name contains a space"),
    ("https://example.com\n.evil/feed", "line break"),
    ("https://exa\tmple.com/feed", "tab"),
    ("https://example.com:65536/feed", "port must be a number from 1 to 65535"),
    ("https://example.com:0/feed", "port must be a number from 1 to 65535"),
    ("https://example.com:http/feed", "port must be a number from 1 to 65535"),
    ("http://[::1/feed", "cannot be parsed"),
]


@pytest.mark.parametrize("url, reason", INVALID_URLS)
def test_add_feed_rejects_invalid_url(fresh_db, url, reason):
    with pytest.raises(ConfigError, match="Invalid feed URL") as raised:
        add(fresh_db, url)
    assert repr(url) in str(raised.value)
    assert reason in str(raised.value)
    assert fresh_db["feeds"].count == 0


def test_add_feed_strips_whitespace(fresh_db):
    feed = add(fresh_db, "  https://example.com/feed.xml\n")
    assert feed["url"] == "https://example.com/feed.xml"


@pytest.mark.parametrize(
    "spelling",
    [
        "HTTPS://EXAMPLE.COM/Feed.xml",
        "https://example.com/Feed.xml/",
        " https://Example.com/Feed.xml/ ",
    ],
)
def test_add_feed_matches_url_spellings(fresh_db, spelling):
    add(fresh_db, "https://example.com/Feed.xml", slug="first")
    with pytest.raises(ConfigError, match=r"already listed.*slug=first"):
        add(fresh_db, spelling)
    assert fresh_db["feeds"].count == 1


def test_add_feed_keeps_path_case(fresh_db):
    add(fresh_db, "https://example.com/Feed.xml")
    other = add(fresh_db, "https://example.com/feed.xml")
    assert other["url"] == "https://example.com/feed.xml"
    assert fresh_db["feeds"].count == 2


def test_add_feed_rejects_duplicate_url(fresh_db):
    add(fresh_db, slug="first")
    with pytest.raises(ConfigError, match=r"already listed.*slug=first"):
        add(fresh_db)


def test_add_feed_rejects_taken_slug(fresh_db):
    add(fresh_db, "https://a.example/feed", slug="taken")
    with pytest.raises(ConfigError, match="--slug 'taken' is already used"):
        add(fresh_db, "https://b.example/feed", slug="taken")


def test_add_feed_reactivates_disabled(fresh_db):
    feed = add(fresh_db)
    add_post(fresh_db, feed)
    sources.remove_feed(fresh_db, feed["slug"])
    again = add(fresh_db, title="Back")
    assert again["id"] == feed["id"]
    assert again["status"] == "active"
    assert again["title"] == "Back"


def test_remove_feed_with_posts_disables(fresh_db):
    feed = add(fresh_db, company="Example")
    add_post(fresh_db, feed)
    removed, action = sources.remove_feed(fresh_db, feed["slug"])
    assert action == "disabled"
    assert removed["posts"] == 1
    row = stored(fresh_db, feed)
    assert row["status"] == "disabled"
    assert row["company"] == "Example"


def test_remove_feed_without_posts_deletes(fresh_db):
    feed = add(fresh_db)
    run_id = (
        fresh_db["runs"]
        .insert({"started_at": "2026-08-20T00:00:00+00:00", "mode": "fetch"})
        .last_pk
    )
    fresh_db["fetches"].insert(
        {
            "run_id": run_id,
            "feed_id": feed["id"],
            "source": feed["url"],
            "started_at": "2026-08-20T00:00:00+00:00",
            "outcome": "failed",
        }
    )
    removed, action = sources.remove_feed(fresh_db, str(feed["id"]))
    assert action == "deleted"
    assert stored(fresh_db, feed) is None
    (log,) = fresh_db["fetches"].rows
    assert log["feed_id"] is None
    assert log["source"] == feed["url"]


@pytest.mark.parametrize("key", ["id", "slug", "url"])
def test_remove_feed_by_any_key(fresh_db, key):
    feed = add(fresh_db)
    _, action = sources.remove_feed(fresh_db, feed[key])
    assert action == "deleted"


def test_remove_feed_prefers_slug_over_id(fresh_db):
    first = add(fresh_db, "https://example.com/first.xml")
    numbered = add(fresh_db, "https://example.com/numbered.xml", slug=str(first["id"]))
    assert numbered["id"] != first["id"]
    removed, _ = sources.remove_feed(fresh_db, str(first["id"]))
    assert removed["id"] == numbered["id"]
    assert stored(fresh_db, first) is not None
    # With no slug left that matches, the same key names the id.
    removed, _ = sources.remove_feed(fresh_db, str(first["id"]))
    assert removed["id"] == first["id"]


def test_remove_unknown_feed_raises(fresh_db):
    with pytest.raises(ConfigError, match="Feed not found: 'nope'"):
        sources.remove_feed(fresh_db, "nope")


def test_list_feeds_counts_posts(fresh_db):
    with_post = add(fresh_db, "https://a.example/feed", slug="a")
    add(fresh_db, "https://b.example/feed", slug="b")
    add_post(fresh_db, with_post)
    rows = sources.list_feeds(fresh_db)
    assert [(row["slug"], row["posts"]) for row in rows] == [("a", 1), ("b", 0)]


# -- company_for -------------------------------------------------------------


@pytest.mark.parametrize(
    "url, title, company",
    [
        ("https://netflixtechblog.com/feed", None, "Netflix"),
        ("https://blog.cloudflare.com/rss/", None, "Cloudflare"),
        ("https://medium.com/airbnb-engineering", None, "Airbnb"),
        ("https://medium.com/feed/airbnb-engineering", None, "Airbnb"),
        ("https://medium.com/feed/pinterest-engineering", None, "Pinterest"),
        ("https://engineering.fb.com/feed/", None, "Meta"),
        ("https://engineering.atspotify.com/feed", None, "Spotify"),
        ("https://dropbox.tech/feed", None, "Dropbox"),
        ("https://aws.amazon.com/blogs/architecture/feed/", None, "AWS"),
        ("https://testing.googleblog.com/feeds/posts/default", None, "Google"),
        ("https://www.uber.com/blog/engineering/rss/", None, "Uber"),
        ("https://bytes.swiggy.com/feed", None, "Swiggy"),
        ("https://www.bbc.co.uk/news/rss.xml", None, "Bbc"),
        # Shared hosts name no company, so the title decides.
        ("https://feeds.feedburner.com/blogspot/gJZg", "Google AI Blog", "Google"),
        (
            "https://raw.githubusercontent.com/o/r/main/feeds/feed_the_batch.xml",
            "The Batch | DeepLearning.AI",
            "DeepLearning.AI",
        ),
        ("https://someone.blogspot.com/feeds/posts/default", "Metadata", None),
        ("http://127.0.0.1:8000/feed.xml", None, None),
        ("file:///corpus/feeds/jvns", None, None),
    ],
)
def test_company_for(url, title, company):
    assert company_for(url, title) == company


# -- feed_for_slug -----------------------------------------------------------


def test_feed_for_slug_returns_existing(fresh_db):
    feed = add(fresh_db, slug="jvns", company="Julia Evans")
    found = sources.feed_for_slug(fresh_db, "jvns", url="file:///elsewhere")
    assert found["id"] == feed["id"]
    assert found["url"] == feed["url"]


def test_feed_for_slug_creates_missing(fresh_db, tmp_path):
    feed = sources.feed_for_slug(
        fresh_db,
        "swiggy-engineering",
        title="Swiggy Engineering",
        url=None,
        homepage="https://bytes.swiggy.com/",
        folder=tmp_path,
    )
    assert feed["slug"] == "swiggy-engineering"
    assert feed["url"] == tmp_path.resolve().as_uri()
    assert feed["company"] == "Swiggy"
    assert feed["title"] == "Swiggy Engineering"
    again = sources.feed_for_slug(fresh_db, "swiggy-engineering", folder=tmp_path)
    assert again["id"] == feed["id"]


def test_feed_for_slug_avoids_taken_url(fresh_db, tmp_path):
    add(fresh_db, "https://example.com/feed.xml", slug="original")
    feed = sources.feed_for_slug(
        fresh_db, "copy", url="https://example.com/feed.xml", folder=tmp_path
    )
    assert feed["url"] == tmp_path.resolve().as_uri()
    other = sources.feed_for_slug(
        fresh_db, "copy-2", url="https://example.com/feed.xml"
    )
    assert other["url"] == "https://example.com/feed.xml#copy-2"


# -- reading OPML ------------------------------------------------------------

NESTED_OPML = """<?xml version="1.0"?>
<opml version="2.0"><head><title>t</title></head><body>
  <outline text="Engineering">
    <outline text="Databases">
      <outline type="rss" text="DB Weekly" xmlUrl="https://db.example/feed"/>
    </outline>
    <outline type="rss" title="Titled" text="Text" xmlUrl="https://t.example/feed"
      htmlUrl="https://t.example/"/>
  </outline>
  <outline type="rss" text="Top level" xmlUrl="https://top.example/feed"
    company="Top" slug="top" category="Chosen"/>
  <outline text="A folder without feeds"/>
  <outline type="link" text="Just a link" url="https://example.com/"/>
</body></opml>
"""


def test_read_opml_nested_categories(tmp_path):
    found = sources.read_opml(write(tmp_path / "nested.opml", NESTED_OPML))
    by_url = {source.url: source for source in found}
    assert len(found) == 3
    assert by_url["https://db.example/feed"].category == "Engineering / Databases"
    assert by_url["https://db.example/feed"].title == "DB Weekly"
    assert by_url["https://t.example/feed"].category == "Engineering"
    assert by_url["https://t.example/feed"].title == "Titled"
    assert by_url["https://t.example/feed"].homepage == "https://t.example/"
    top = by_url["https://top.example/feed"]
    assert (top.category, top.company, top.slug) == ("Chosen", "Top", "top")


def test_read_opml_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read OPML file .*missing.opml"):
        sources.read_opml(tmp_path / "missing.opml")


def test_read_opml_rejects_non_xml(tmp_path):
    path = write(tmp_path / "feeds.opml", "https://example.com/feed\n")
    with pytest.raises(ConfigError, match=r"feeds\.opml is not valid XML"):
        sources.read_opml(path)


def test_read_opml_rejects_other_xml(tmp_path):
    path = write(tmp_path / "feed.opml", "<rss><channel/></rss>")
    with pytest.raises(ConfigError, match=r"feed\.opml is not an OPML file.*<rss>"):
        sources.read_opml(path)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE opml [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<opml version="2.0"><head><title>&g;</title></head><body>
<outline type="rss" text="&g;" xmlUrl="https://example.com/&g;"/>
</body></opml>
"""


def test_read_opml_rejects_entity_expansion(tmp_path):
    path = write(tmp_path / "laughs.opml", BILLION_LAUGHS)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="declares XML entities"):
        sources.read_opml(path)
    assert time.monotonic() - started < 2


def test_read_opml_does_not_read_external_entities(tmp_path):
    secret = write(tmp_path / "secret.txt", "TOP-SECRET")
    path = write(
        tmp_path / "xxe.opml",
        f"""<?xml version="1.0"?>
<!DOCTYPE opml [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>
<opml version="2.0"><body>
<outline type="rss" text="&xxe;" xmlUrl="https://example.com/feed"/>
</body></opml>""",
    )
    with pytest.raises(ConfigError, match="declares XML entities") as raised:
        sources.read_opml(path)
    assert "TOP-SECRET" not in str(raised.value)


# -- importing and exporting -------------------------------------------------


def test_import_opml_counts(fresh_db, tmp_path):
    path = write(tmp_path / "nested.opml", NESTED_OPML)
    assert sources.import_opml(fresh_db, path) == (3, 0)
    assert sources.import_opml(fresh_db, path) == (0, 0)
    top = sources.find_feed_by(fresh_db, "slug", "top")
    assert top["company"] == "Top"
    assert top["category"] == "Chosen"


def test_import_opml_updates_changed_outline(fresh_db, tmp_path):
    sources.import_opml(fresh_db, write(tmp_path / "a.opml", NESTED_OPML))
    changed = NESTED_OPML.replace('company="Top"', 'company="Top Inc"')
    assert sources.import_opml(fresh_db, write(tmp_path / "b.opml", changed)) == (0, 1)
    assert sources.find_feed_by(fresh_db, "slug", "top")["company"] == "Top Inc"


def test_import_opml_moves_url_by_slug(fresh_db, tmp_path):
    sources.import_opml(fresh_db, write(tmp_path / "a.opml", NESTED_OPML))
    moved = NESTED_OPML.replace("https://top.example/feed", "https://top.example/rss")
    assert sources.import_opml(fresh_db, write(tmp_path / "b.opml", moved)) == (0, 1)
    assert (
        sources.find_feed_by(fresh_db, "slug", "top")["url"]
        == "https://top.example/rss"
    )


def test_import_opml_keeps_unlisted_fields(fresh_db, tmp_path):
    feed = add(fresh_db, "https://db.example/feed", company="DB Inc", slug="db")
    sources.import_opml(fresh_db, write(tmp_path / "a.opml", NESTED_OPML))
    row = stored(fresh_db, feed)
    assert row["company"] == "DB Inc"
    assert row["slug"] == "db"
    assert row["category"] == "Engineering / Databases"


def test_import_opml_counts_duplicate_url_once(fresh_db, tmp_path):
    text = NESTED_OPML.replace(
        "</body>",
        '<outline type="rss" text="Again" xmlUrl="https://db.example/feed"/></body>',
    )
    path = write(tmp_path / "dup.opml", text)
    assert sources.import_opml(fresh_db, path) == (3, 0)
    assert sources.import_opml(fresh_db, path) == (0, 0)
    assert sources.find_feed_by(fresh_db, "url", "https://db.example/feed")[
        "title"
    ] == ("DB Weekly")


# XML turns a literal line break or tab in an attribute into a space.
CONTROL_ENTITIES = {"\n": "&#10;", "\t": "&#9;"}


def test_import_opml_skips_invalid_urls(fresh_db, tmp_path, caplog):
    outlines = "".join(
        f'<outline text="Bad {number}" xmlUrl="{escape(url, CONTROL_ENTITIES)}"/>'
        for number, (url, _) in enumerate(INVALID_URLS)
    )
    text = NESTED_OPML.replace("<body>", f"<body>{outlines}")
    path = write(tmp_path / "mixed.opml", text)
    with caplog.at_level(logging.WARNING, logger="kb.feeds"):
        assert sources.import_opml(fresh_db, path) == (3, 0)
    warnings = [record.getMessage() for record in caplog.records]
    for number, (_, reason) in enumerate(INVALID_URLS):
        (warning,) = [line for line in warnings if f"'Bad {number}'" in line]
        assert warning.startswith(f"Skipped the outline 'Bad {number}' of {path}")
        assert reason in warning
    assert fresh_db["feeds"].count == 3


def test_import_opml_matches_url_spellings(fresh_db, tmp_path):
    feed = add(fresh_db, "https://db.example/feed", slug="db")
    text = NESTED_OPML.replace(
        "https://db.example/feed", "  HTTPS://DB.Example/feed/ "
    ).replace(
        "</body>",
        '<outline type="rss" text="Again" xmlUrl="https://top.example/feed/"/></body>',
    )
    path = write(tmp_path / "spellings.opml", text)
    assert sources.import_opml(fresh_db, path) == (2, 1)
    assert fresh_db["feeds"].count == 3
    assert stored(fresh_db, feed)["url"] == "https://db.example/feed"


def test_export_opml_keeps_kb_attributes(fresh_db, tmp_path):
    add(fresh_db, "https://a.example/feed", slug="a", company="A Corp", category="x")
    feed = add(fresh_db, "https://b.example/feed", slug="b")
    add_post(fresh_db, feed)
    sources.remove_feed(fresh_db, "b")
    exported = write(tmp_path / "out.opml", sources.export_opml(fresh_db))
    by_slug = {source.slug: source for source in sources.read_opml(exported)}
    assert by_slug["a"].company == "A Corp"
    assert by_slug["a"].category == "x"
    assert by_slug["a"].title is None
    assert by_slug["b"].status == "disabled"
    assert by_slug["a"].status is None


@pytest.mark.parametrize("name", CORPUS_OPML_FILES)
def test_opml_round_trip(tmp_path, name):
    original = shared_path("corpus", "opml", name)
    first = open_db(tmp_path / "first.db")
    added, _ = sources.import_opml(first, original)
    assert added > 10
    exported = write(tmp_path / "export.opml", sources.export_opml(first))
    assert sources.import_opml(first, exported) == (0, 0)
    second = open_db(tmp_path / "second.db")
    assert sources.import_opml(second, exported) == (added, 0)
    assert feed_rows(second) == feed_rows(first)
    assert sources.export_opml(second) == sources.export_opml(first)


def test_opml_round_trip_of_sources(fresh_db, tmp_path):
    sources.ensure_sources(fresh_db)
    before = feed_rows(fresh_db)
    exported = write(tmp_path / "export.opml", sources.export_opml(fresh_db))
    assert sources.import_opml(fresh_db, exported) == (0, 0)
    assert feed_rows(fresh_db) == before


# -- data/sources.opml -------------------------------------------------------


def test_sources_has_named_sources():
    by_slug = {source.slug: source for source in sources.read_opml(SOURCES_OPML)}
    for slug, company in NAMED_SOURCES.items():
        assert slug in by_slug, slug
        assert by_slug[slug].company == company, slug
        assert by_slug[slug].category != "corpus", slug
    assert len(NAMED_SOURCES) == 30


def test_sources_urls_are_unique_and_complete():
    found = sources.read_opml(SOURCES_OPML)
    assert len({source.url for source in found}) == len(found)
    assert len({source.slug for source in found}) == len(found)
    for source in found:
        assert source.url.startswith(("http://", "https://")), source.slug
        assert source.homepage, source.slug
        assert source.title, source.slug
        assert source.company, source.slug
        assert source.category, source.slug


def test_sources_cover_corpus_folders(corpus_dir):
    by_slug = {source.slug: source for source in sources.read_opml(SOURCES_OPML)}
    folders = sorted(path.name for path in corpus_dir.iterdir() if path.is_dir())
    assert len(folders) >= 30
    missing = [folder for folder in folders if folder not in by_slug]
    assert missing == []
    extras = [slug for slug in by_slug if slug not in NAMED_SOURCES]
    for slug in extras:
        assert by_slug[slug].category == "corpus", slug
        assert slug in folders, slug


def test_ensure_sources_seeds_empty_db(fresh_db):
    added = sources.ensure_sources(fresh_db)
    assert added == len(sources.read_opml(SOURCES_OPML))
    assert sources.ensure_sources(fresh_db) == 0
    assert sources.find_feed_by(fresh_db, "slug", "netflix-techblog")["company"] == (
        "Netflix"
    )


def test_ensure_sources_leaves_listed_db(fresh_db):
    add(fresh_db)
    assert sources.ensure_sources(fresh_db) == 0
    assert fresh_db["feeds"].count == 1


def test_ensure_sources_other_file(fresh_db, tmp_path):
    path = write(tmp_path / "mine.opml", NESTED_OPML)
    assert sources.ensure_sources(fresh_db, path) == 3


# -- kb feeds ----------------------------------------------------------------


@pytest.fixture
def run_cli(db_file):
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, ["feeds", *args, "--db", str(db_file)])

    return run


def test_cli_add_list_remove(run_cli):
    added = run_cli("add", "https://netflixtechblog.com/feed", "--title", "Netflix")
    assert added.exit_code == 0, added.output
    assert (
        "Added feed netflix (Netflix): https://netflixtechblog.com/feed" in added.output
    )
    listed = run_cli("list")
    assert listed.exit_code == 0
    assert listed.output.splitlines()[0].split() == [
        "id",
        "slug",
        "company",
        "status",
        "posts",
        "failures",
        "url",
    ]
    assert "netflix" in listed.output
    removed = run_cli("remove", "netflix")
    assert removed.exit_code == 0
    assert "Deleted feed netflix" in removed.output


def test_cli_list_json(run_cli):
    run_cli("add", "https://dropbox.tech/feed", "--slug", "dropbox-tech")
    result = run_cli("list", "--json")
    assert result.exit_code == 0
    (row,) = json.loads(result.output)
    assert row["slug"] == "dropbox-tech"
    assert row["company"] == "Dropbox"
    assert row["posts"] == 0


def test_cli_errors_exit_1(run_cli):
    result = run_cli("add", "ftp://example.com/feed")
    assert result.exit_code == 1
    assert "Invalid feed URL 'ftp://example.com/feed'" in result.output
    result = run_cli("remove", "unknown")
    assert result.exit_code == 1
    assert "Feed not found" in result.output


def test_cli_import_export(run_cli, tmp_path):
    path = write(tmp_path / "nested.opml", NESTED_OPML)
    imported = run_cli("import", str(path))
    assert imported.exit_code == 0
    assert "3 added, 0 updated" in imported.output
    exported = run_cli("export")
    assert exported.exit_code == 0
    assert exported.output.startswith("<?xml")
    assert 'slug="top"' in exported.output
    target = tmp_path / "out.opml"
    written = run_cli("export", "-o", str(target))
    assert written.exit_code == 0
    assert target.read_text(encoding="utf-8") == exported.output


def test_cli_import_invalid_file(run_cli, tmp_path):
    path = write(tmp_path / "broken.opml", "<opml><body>")
    result = run_cli("import", str(path))
    assert result.exit_code == 1
    assert "broken.opml is not valid XML" in result.output


def test_cli_export_to_missing_folder(run_cli, tmp_path):
    run_cli("add", "https://dropbox.tech/feed")
    target = tmp_path / "missing" / "out.opml"
    result = run_cli("export", "-o", str(target))
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert f"Could not open file '{target}'" in result.output
    assert "No such file or directory" in result.output
    assert not target.parent.exists()


def test_cli_remove_prefers_slug(run_cli):
    run_cli("add", "https://example.com/a.xml", "--slug", "alpha")
    run_cli("add", "https://example.com/b.xml", "--slug", "1")
    result = run_cli("remove", "1")
    assert result.exit_code == 0, result.output
    assert "Deleted feed 1:" in result.output
    listed = run_cli("list", "--json")
    assert [row["slug"] for row in json.loads(listed.output)] == ["alpha"]


def test_cli_import_warns_about_skipped_outline(db_file, tmp_path):
    text = NESTED_OPML.replace(
        "<body>", '<body><outline text="Old gopher" xmlUrl="gopher://old.example/"/>'
    )
    path = write(tmp_path / "gopher.opml", text)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kb",
            "feeds",
            "import",
            str(path),
            "--db",
            str(db_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "3 added, 0 updated" in result.stdout
    assert "Skipped the outline 'Old gopher'" in result.stderr
    assert "'gopher://old.example/'" in result.stderr
    assert "Traceback" not in result.stderr
