import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import feedparser
import pytest
from click.testing import CliRunner

from kb.cli import cli
from kb.digest import (
    build_digest,
    build_digests,
    cached_background,
    parse_date,
    render_atom,
    render_html,
    render_json,
    render_markdown,
)
from kb.errors import ConfigError
from kb.summarize import (
    extract_paragraphs,
    is_boilerplate,
    is_quotable,
    looks_like_code,
    split_sentences,
    summarize,
)

KAFKA_TEXT = (
    "Our Kafka consumers fell behind during peak traffic, and consumer lag grew "
    "to hours. The problem was that every partition rebalance paused all "
    "consumers in the group. We built a cooperative rebalancing protocol for "
    "our Kafka clients so that only moved partitions pause. Consumer lag now "
    "stays under a minute, a 98% reduction at peak. The tradeoff is a slower "
    "first assignment when a new consumer joins the group. Our office has a "
    "nice view of the river and a good coffee machine."
)
KAFKA_TEXT_2 = (
    "Kafka consumer lag is the metric our streaming team watches most. When "
    "lag grows, events reach downstream consumers late. We moved lag "
    "monitoring into the Kafka broker so that partitions with growing lag are "
    "found in seconds. Alerting on consumer lag cut our incident time by half."
)
GARDEN_TEXT = (
    "Tomatoes need six hours of sun and deep watering twice a week. Mulch "
    "keeps the soil moist through the summer. Prune the lower leaves so that "
    "the plants get air and stay healthy."
)


def fill_required(table, row: dict) -> dict:
    """Give every NOT NULL column without a default a value, whatever the schema."""
    filled = dict(row)
    for column in table.columns:
        if column.notnull and column.default_value is None and not column.is_pk:
            if column.name not in filled:
                kind = column.type.upper()
                filled[column.name] = 0 if kind in ("INTEGER", "REAL") else ""
    return filled


def add_feed(db, slug: str, company: str) -> int:
    row = {"slug": slug, "company": company, "url": f"https://{slug}.example/feed"}
    return db["feeds"].insert(fill_required(db["feeds"], row)).last_pk


def add_post(db, feed_id: int, title: str, published: str, **fields) -> int:
    slug = "-".join(title.lower().split())[:60]
    row = {
        "feed_id": feed_id,
        "url": f"https://blog.example/{feed_id}/{slug}",
        "title": title,
        "published": published,
        "fingerprint": f"{feed_id}-{slug}",
        "content_hash": f"{feed_id}-{slug}",
        "first_seen": published,
        **fields,
    }
    text = fields.get("content_text") or ""
    row.setdefault("word_count", len(text.split()))
    return db["posts"].insert(fill_required(db["posts"], row)).last_pk


def add_theme(db, name: str, description: str, post_ids: list[int]) -> None:
    """Assign posts to a theme, creating the theme tables when they are missing."""
    if not db["themes"].exists():
        db["themes"].create({"name": str, "description": str}, pk="name")
        db["post_themes"].create(
            {"post_id": int, "theme": str, "score": float}, pk=("post_id", "theme")
        )
    row = {"name": name, "description": description}
    db["themes"].insert(fill_required(db["themes"], row))
    for post_id in post_ids:
        db["post_themes"].insert({"post_id": post_id, "theme": name, "score": 0.9})


def add_topic(db, label: str, terms: list[str], post_ids: list[int]) -> None:
    """Assign posts to a topic, creating the topic tables when they are missing."""
    if not db["topics"].exists():
        db["topics"].create({"id": int, "label": str, "terms": str}, pk="id")
        db["post_topics"].create(
            {"post_id": int, "topic_id": int, "score": float}, pk="post_id"
        )
    row = {"label": label, "terms": json.dumps(terms)}
    topic_id = db["topics"].insert(fill_required(db["topics"], row)).last_pk
    for post_id in post_ids:
        link = {"post_id": post_id, "topic_id": topic_id, "score": 0.8}
        db["post_topics"].insert(fill_required(db["post_topics"], link))


@pytest.fixture
def kafka_db(fresh_db):
    """Three companies on one day: two write about Kafka consumer lag."""
    acme = add_feed(fresh_db, "acme-eng", "Acme")
    globex = add_feed(fresh_db, "globex-tech", "Globex")
    initech = add_feed(fresh_db, "initech-blog", "Initech")
    add_post(
        fresh_db,
        acme,
        "Taming Kafka consumer lag",
        "2026-04-16T09:00:00+00:00",
        content_text=KAFKA_TEXT,
    )
    add_post(
        fresh_db,
        globex,
        "Watching Kafka lag from the broker",
        "2026-04-16T15:30:00+00:00",
        content_text=KAFKA_TEXT_2,
    )
    add_post(
        fresh_db,
        initech,
        "Growing tomatoes on the office roof",
        "2026-04-16T23:59:59+00:00",
        content_text=GARDEN_TEXT,
    )
    # Outside the window on both sides.
    add_post(fresh_db, acme, "Yesterday", "2026-04-15T23:59:59+00:00")
    add_post(fresh_db, acme, "Tomorrow", "2026-04-17T00:00:00+00:00")
    return fresh_db


class TextCollector(HTMLParser):
    """Collect the text and the tag names of an HTML document."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.parametrize(
    "text, expected",
    [
        # Plain sentence ends.
        (
            "It failed. We fixed it! Did it work?",
            ["It failed.", "We fixed it!", "Did it work?"],
        ),
        # Version numbers and decimals have no space after the period.
        (
            "We moved to Python 3.11. Builds got 2.5x faster.",
            ["We moved to Python 3.11.", "Builds got 2.5x faster."],
        ),
        # Abbreviations and initials do not end a sentence.
        (
            "Tools, e.g. Kafka, help. Ask Dr. Smith or J. Doe in the U.S. Army.",
            ["Tools, e.g. Kafka, help.", "Ask Dr. Smith or J. Doe in the U.S. Army."],
        ),
        # A closing quote belongs to the sentence it ends.
        ('He said "ship it." Then we did.', ['He said "ship it."', "Then we did."]),
        # A lowercase word after a period is not a new sentence.
        ("See fig. 3 for details. Next.", ["See fig. 3 for details.", "Next."]),
        # Paragraphs glued together by a scraper, but not dotted names.
        ("It spans the web.Agents use it.", ["It spans the web.", "Agents use it."]),
        ("Node.js and v2.Beta stay whole.", ["Node.js and v2.Beta stay whole."]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "sentence",
    [
        "Data Mesh was originally published in Netflix TechBlog on Medium.",
        "The post How we scaled appeared first on The Example Blog.",
        "Sign up for our newsletter to get updates.",
        "Follow us on Twitter for more.",
        "If this type of work interests you, check out our open roles.",
        "We would like to thank the whole storage team.",
        "Jane Doe is a senior software engineer at Acme.",
        "Figure 2: Latency before and after the change.",
        "Share on Bluesky (Opens in new window)",
        "Please follow our Community Twitter account for announcements.",
        "Download GitHub Enterprise 2.11 to start using these features today.",
        "Editor’s note: The Speed Read is a column about cloud computing.",
    ],
)
def test_boilerplate_detected(sentence):
    assert is_boilerplate(sentence)


@pytest.mark.parametrize(
    "sentence",
    [
        "We moved the queue to a new cluster and lag fell by half.",
        "The team signed the design review after two weeks.",
        "Consumers subscribe to the topic when they start.",
    ],
)
def test_prose_not_boilerplate(sentence):
    assert not is_boilerplate(sentence)


@pytest.mark.parametrize(
    "text, is_code",
    [
        ("const total = items.reduce((a, b) => a + b, 0);", True),
        ("$ pip install kb", True),
        ("SELECT id, title FROM posts WHERE published > ?", True),
        ("We moved the queue (Kafka) to a new cluster.", False),
        ("Latency fell from 120 ms to 40 ms after the change.", False),
    ],
)
def test_looks_like_code(text, is_code):
    assert looks_like_code(text) is is_code


def test_paragraphs_drop_boilerplate_blocks():
    html = """
    <p>We rebuilt the <a href="/x">scheduler</a>, and jobs start in seconds.</p>
    <pre><code>for job in jobs: run(job)</code></pre>
    <figure><img src="a.png"><figcaption>The scheduler dashboard.</figcaption></figure>
    <ul>
      <li><a href="/s1">Share on X</a></li><li><a href="/s2">Share on Bluesky</a></li>
    </ul>
    <p>Queues no longer build up at the top of the hour.</p>
    <h2>Acknowledgements</h2>
    <p>Thanks to everyone who reviewed this post.</p>
    """
    paragraphs = extract_paragraphs(html)
    assert paragraphs == [
        "We rebuilt the scheduler, and jobs start in seconds.",
        "Queues no longer build up at the top of the hour.",
    ]


def test_summary_order_and_focus():
    summary = summarize("Taming Kafka consumer lag", [KAFKA_TEXT])
    assert 3 <= len(summary.sentences) <= 4
    positions = [KAFKA_TEXT.index(sentence) for sentence in summary.sentences]
    assert positions == sorted(positions)
    assert not any("coffee" in sentence for sentence in summary.sentences)
    assert summary.note is None


def test_summarize_respects_length_bound():
    sentences = [
        f"Sentence number {n} talks about Kafka consumer lag." for n in range(9)
    ]
    summary = summarize("Kafka lag", [" ".join(sentences)], max_chars=120)
    assert summary.sentences
    assert len(" ".join(summary.sentences)) <= 120


def test_digest_empty_window(fresh_db):
    digest = build_digest(fresh_db, "2026-04-16")
    assert digest.is_empty
    assert digest.signal is None
    assert digest.deep_dives == []
    markdown = render_markdown(digest)
    assert markdown.startswith("# Engineering @ Scale: Thursday 16 April 2026\n")
    assert "nothing to digest" in markdown
    assert "Signal of the Day" not in markdown
    assert json.loads(render_json(digest))["is_empty"] is True
    assert render_html(digest).startswith("<!DOCTYPE html>")


def test_digest_one_post(fresh_db):
    feed = add_feed(fresh_db, "acme-eng", "Acme")
    post_id = add_post(
        fresh_db,
        feed,
        "Taming Kafka consumer lag",
        "2026-04-16T09:00:00+00:00",
        content_text=KAFKA_TEXT,
    )
    digest = build_digest(fresh_db, "2026-04-16")
    assert digest.post_count == 1
    assert digest.signal.post.post_id == post_id
    assert digest.signal_reason == "It is the only post published in this window."
    assert digest.deep_dives == []
    assert 3 <= len(digest.signal.sentences) <= 4
    assert digest.patterns == []
    text = "No salient term was shared by two companies this day."
    assert digest.patterns_text == text
    assert "1 post from 1 company on this day: Acme." in render_markdown(digest)


def test_digest_post_without_text(fresh_db):
    feed = add_feed(fresh_db, "acme-eng", "Acme")
    add_post(fresh_db, feed, "A title and nothing else", "2026-04-16T09:00:00+00:00")
    digest = build_digest(fresh_db, "2026-04-16")
    assert digest.signal.sentences == []
    assert "only its title" in digest.signal.note
    assert "only its title" in render_markdown(digest)


def test_window_keeps_untitled_posts_apart(fresh_db):
    feed = add_feed(fresh_db, "acme-eng", "Acme")
    for hour in (9, 10):
        published = f"2026-04-16T{hour:02d}:00:00+00:00"
        add_post(fresh_db, feed, "", published, url=f"https://a.example/{hour}")
    add_post(fresh_db, feed, "Same title", "2026-04-16T11:00:00+00:00")
    longer = add_post(
        fresh_db,
        feed,
        "Same  title",
        "2026-04-16T12:00:00+00:00",
        url="https://mirror.example/same-title",
        content_text=KAFKA_TEXT,
    )
    digest = build_digest(fresh_db, "2026-04-16", max_posts=8, max_per_company=8)
    posts = [digest.signal, *digest.deep_dives]
    assert digest.post_count == 3
    assert [dive.post.title for dive in posts].count("(untitled)") == 2
    assert longer in [dive.post.post_id for dive in posts]


def test_digest_post_that_is_all_code(fresh_db):
    feed = add_feed(fresh_db, "acme-eng", "Acme")
    html = (
        "<pre><code>def handler(event):\n    return {'status': 200}\n</code></pre>"
        "<pre><code>$ kubectl apply -f deploy.yaml</code></pre>"
    )
    text = (
        "def handler(event):\n    return {'status': 200}\n"
        "$ kubectl apply -f deploy.yaml"
    )
    add_post(
        fresh_db,
        feed,
        "Snippets",
        "2026-04-16T09:00:00+00:00",
        content_html=html,
        content_text=text,
    )
    digest = build_digest(fresh_db, "2026-04-16")
    assert digest.signal.sentences == []
    assert "no prose sentences" in digest.signal.note


def test_window_inclusive_in_utc(kafka_db):
    digest = build_digest(kafka_db, "2026-04-16")
    titles = {dive.post.title for dive in [digest.signal, *digest.deep_dives]}
    assert digest.post_count == 3
    assert "Yesterday" not in titles
    assert "Tomorrow" not in titles
    week = build_digest(kafka_db, "2026-04-17", days=3)
    assert (week.start, week.date) == ("2026-04-15", "2026-04-17")
    assert week.post_count == 5


def test_signal_prefers_shared_subject(kafka_db):
    digest = build_digest(kafka_db, "2026-04-16")
    assert digest.signal.post.company in ("Acme", "Globex")
    assert "2 other companies" in digest.signal_reason
    scores = {dive.post.company: dive.signal_score for dive in digest.deep_dives}
    assert scores["Initech"] < digest.signal.signal_score


def test_patterns_from_shared_theme(kafka_db):
    ids = [row["id"] for row in kafka_db["posts"].rows_where(order_by="id")]
    add_theme(kafka_db, "Streaming", "Event streams and their consumers", ids[:2])
    # A theme that only one company touched is not a pattern.
    add_theme(kafka_db, "Gardening", "Plants", [ids[2]])
    digest = build_digest(kafka_db, "2026-04-16")
    assert [pattern.name for pattern in digest.patterns] == ["Streaming"]
    pattern = digest.patterns[0]
    assert pattern.kind == "theme"
    assert sorted(pattern.companies) == ["Acme", "Globex"]
    assert len(pattern.posts) == 2
    assert "Streaming came up at" in digest.patterns_text
    assert "Acme" in digest.patterns_text
    assert "Globex" in digest.patterns_text
    assert (
        digest.patterns_source
        == "Patterns come from the themes assigned to these posts."
    )
    markdown = render_markdown(digest)
    assert "https://blog.example/1/taming-kafka-consumer-lag" in markdown


def test_patterns_from_topics_and_themes(kafka_db):
    ids = [row["id"] for row in kafka_db["posts"].rows_where(order_by="id")]
    add_topic(
        kafka_db, "kafka, lag", ["kafka", "consumer", "lag", "partition"], ids[:2]
    )
    add_theme(kafka_db, "Streaming", "Event streams and their consumers", ids[:2])
    digest = build_digest(kafka_db, "2026-04-16")
    kinds = {pattern.name: pattern.kind for pattern in digest.patterns}
    assert kinds == {"Streaming": "theme", "kafka, lag": "topic"}
    topic = next(p for p in digest.patterns if p.kind == "topic")
    # The label's own terms are not repeated in the description.
    assert topic.description == "consumer, partition"
    assert sorted(topic.companies) == ["Acme", "Globex"]
    assert digest.patterns_source == (
        "Patterns come from the themes and topics assigned to these posts."
    )


def test_unshared_theme_falls_back_to_terms(kafka_db):
    ids = [row["id"] for row in kafka_db["posts"].rows_where(order_by="id")]
    add_theme(kafka_db, "Gardening", "Plants", [ids[2]])
    digest = build_digest(kafka_db, "2026-04-16")
    assert digest.patterns
    assert all(pattern.kind == "term" for pattern in digest.patterns)
    assert digest.patterns_source.startswith("No themes linked two companies")


def test_patterns_fall_back_to_terms(kafka_db):
    if kafka_db["post_themes"].exists():
        kafka_db["post_themes"].delete_where()
    digest = build_digest(kafka_db, "2026-04-16")
    assert digest.patterns
    terms = " ".join(pattern.name for pattern in digest.patterns)
    assert "lag" in terms or "kafka" in terms
    assert all(pattern.kind == "term" for pattern in digest.patterns)
    assert sorted(digest.patterns[0].companies) == ["Acme", "Globex"]
    assert "salient terms" in digest.patterns_source
    assert "no topics or themes assigned yet" in digest.patterns_source


def test_busy_day_capped_per_company(fresh_db):
    acme = add_feed(fresh_db, "acme-eng", "Acme")
    globex = add_feed(fresh_db, "globex-tech", "Globex")
    for number in range(6):
        add_post(
            fresh_db,
            acme,
            f"Kafka lag, part {number}",
            f"2026-04-16T0{number}:00:00+00:00",
            content_text=KAFKA_TEXT,
        )
    add_post(
        fresh_db,
        globex,
        "Kafka at Globex",
        "2026-04-16T12:00:00+00:00",
        content_text=KAFKA_TEXT_2,
    )
    digest = build_digest(fresh_db, "2026-04-16", max_posts=3, max_per_company=2)
    dives = [digest.signal, *digest.deep_dives]
    companies = [dive.post.company for dive in dives]
    assert len(dives) == 3
    assert companies.count("Acme") == 2
    assert companies.count("Globex") == 1
    assert digest.more_count == 4
    assert len(digest.more_posts) == 4
    assert "at most 2 per company" in digest.selection_rule
    assert "Also Published" in render_markdown(digest)


def test_hostile_titles_are_escaped(fresh_db):
    feed = add_feed(fresh_db, "evil-blog", "Evil <b>Corp</b>")
    add_post(
        fresh_db,
        feed,
        "<script>alert('x')</script> [click](javascript:alert(1))",
        "2026-04-16T09:00:00+00:00",
        url="javascript:alert(1)",
        content_text="We <img src=x onerror=alert(1)> shipped a new build system.",
    )
    digest = build_digest(fresh_db, "2026-04-16")
    html = render_html(digest)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'href="javascript' not in html
    collector = TextCollector()
    collector.feed(html)
    assert "script" not in collector.tags
    assert "img" not in collector.tags
    assert "b" not in collector.tags
    markdown = render_markdown(digest)
    assert "<script>" not in markdown
    # The unsafe URL gives no link, and the title's own brackets are escaped.
    assert "### \\<script\\>" in markdown
    assert "\\[click\\](javascript" in markdown


def test_html_is_complete_page(kafka_db):
    html = render_html(build_digest(kafka_db, "2026-04-16"))
    assert html.startswith("<!DOCTYPE html>")
    assert "<style>" in html
    assert html.rstrip().endswith("</html>")
    for heading in ("Signal of the Day", "Deep Dives", "Patterns Across Companies"):
        assert f"<h2>{heading}</h2>" in html
    fragment = render_html(build_digest(kafka_db, "2026-04-16"), standalone=False)
    assert fragment.startswith('<article class="kb-digest">')


def test_background_cached_until_posts_change(kafka_db):
    end = parse_date("2026-04-16")
    first = cached_background(kafka_db, end)
    assert cached_background(kafka_db, end) is first
    feed = kafka_db["feeds"].get(1)["id"]
    add_post(kafka_db, feed, "A new post", "2026-04-16T10:00:00+00:00")
    assert cached_background(kafka_db, end) is not first


def test_digest_is_deterministic(kafka_db):
    first = render_json(build_digest(kafka_db, "2026-04-16"))
    second = render_json(build_digest(kafka_db, "2026-04-16"))
    assert first == second


def test_atom_feed_has_one_entry_per_day(kafka_db):
    digests = build_digests(kafka_db, "2026-04-17", 3)
    assert [digest.date for digest in digests] == [
        "2026-04-17",
        "2026-04-16",
        "2026-04-15",
    ]
    atom = render_atom(digests, feed_url="http://127.0.0.1/digest.atom")
    ET.fromstring(atom.encode())
    parsed = feedparser.parse(atom)
    assert not parsed.bozo
    assert len(parsed.entries) == 3
    entry = parsed.entries[1]
    assert entry.title == "Engineering @ Scale: Thursday 16 April 2026"
    assert "Signal of the Day" in entry.content[0].value
    assert entry.updated == "2026-04-16T23:59:59Z"


def test_window_accepts_date_objects(kafka_db):
    from datetime import date, datetime

    by_date = build_digest(kafka_db, date(2026, 4, 16))
    by_datetime = build_digest(kafka_db, datetime(2026, 4, 16, 18, 30))
    assert by_date.date == "2026-04-16"
    assert by_datetime.date == "2026-04-16"
    assert by_datetime.post_count == 3


@pytest.mark.parametrize(
    "date, days",
    [("2026-13-01", 1), ("yesterday", 1), ("2026-04-16", 0), ("2026-04-16", 400)],
)
def test_invalid_window_raises(fresh_db, date, days):
    with pytest.raises(ConfigError):
        build_digest(fresh_db, date, days)


def test_cli_digest_markdown(kafka_db, db_file):
    result = CliRunner().invoke(
        cli, ["digest", "--date", "2026-04-16", "-d", str(db_file)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# Engineering @ Scale: Thursday 16 April 2026")


def test_cli_digest_writes_html_file(kafka_db, db_file, tmp_path):
    output = tmp_path / "digest.html"
    arguments = ["--date", "2026-04-16", "--format", "html", "-o", str(output)]
    result = CliRunner().invoke(cli, ["digest", *arguments, "-d", str(db_file)])
    assert result.exit_code == 0, result.output
    assert output.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_digest_atom(kafka_db, db_file):
    arguments = ["--date", "2026-04-18", "--days", "5", "--format", "atom"]
    result = CliRunner().invoke(cli, ["digest", *arguments, "-d", str(db_file)])
    assert result.exit_code == 0, result.output
    # Days without posts get no entry.
    assert len(feedparser.parse(result.output).entries) == 3


def test_cli_digest_rejects_invalid_date(fresh_db, db_file):
    result = CliRunner().invoke(
        cli, ["digest", "--date", "16/04/2026", "-d", str(db_file)]
    )
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_cli_digest_accepts_largest_max_posts(kafka_db, db_file):
    arguments = ["--date", "2026-04-16", "-n", str(2**63 - 1)]
    result = CliRunner().invoke(cli, ["digest", *arguments, "-d", str(db_file)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# Engineering @ Scale")


@pytest.mark.parametrize("value", [str(2**63), str(10**30), "1e20"])
def test_cli_digest_rejects_huge_max_posts(fresh_db, db_file, value):
    result = CliRunner().invoke(cli, ["digest", "-n", value, "-d", str(db_file)])
    assert result.exit_code == 2
    assert "--max-posts" in result.output
    assert "Traceback" not in result.output


def test_cli_digest_missing_database(tmp_path):
    missing = tmp_path / "missing.db"
    result = CliRunner().invoke(
        cli, ["digest", "--date", "2026-04-16", "-d", str(missing)]
    )
    assert result.exit_code == 1
    assert "Database not found" in result.output
    assert not missing.exists()


def test_signal_uses_stored_embeddings(kafka_db):
    embed = pytest.importorskip("kb.embed", reason="kb.embed is not installed")
    embed.embed_posts(kafka_db, "hash:64")
    digest = build_digest(kafka_db, "2026-04-16")
    assert "embedding cosine similarity" in digest.signal_reason
    assert digest.signal.post.company in ("Acme", "Globex")


def test_signal_without_embeddings_uses_tfidf(kafka_db):
    digest = build_digest(kafka_db, "2026-04-16")
    assert "TF-IDF cosine similarity" in digest.signal_reason


CORPUS_SNAPSHOTS = [
    "cloudflare-blog-ai-tag/2026-05-28.xml",
    "google-developers-ai/2026-05-01.xml",
    "openai-research/2026-08-15.xml",
    "snowflake-engineering/2026-04-29.xml",
    "uber-engineering/2026-08-20.xml",
]


@pytest.mark.slow
def test_digest_of_real_snapshots(corpus_dir, fresh_db):
    from kb.ingest import ingest_paths

    paths = [str(corpus_dir / snapshot) for snapshot in CORPUS_SNAPSHOTS]
    ingest_paths(fresh_db, paths)
    digest = build_digest(fresh_db, "2026-04-16")
    dives = [digest.signal, *digest.deep_dives]
    # Five companies posted that day, and Cloudflare posted four times.
    assert len(digest.companies) == 5
    assert [dive.post.company for dive in dives].count("Cloudflare") == 2
    assert digest.more_count == digest.post_count - len(dives)
    full_text = [dive for dive in dives if dive.post.company == "Cloudflare"]
    for dive in full_text:
        assert 3 <= len(dive.sentences) <= 4
        assert len(" ".join(dive.sentences)) <= 750
    for dive in dives:
        assert dive.sentences or dive.note
        for sentence in dive.sentences:
            assert not is_boilerplate(sentence)
            assert not looks_like_code(sentence)
    html = render_html(digest)
    assert html.count('<div class="post">') == len(dives)


@pytest.mark.parametrize(
    "sentence, strict, expected",
    [
        # Complete prose of a readable length.
        ("We moved the queue to a new cluster last spring.", True, True),
        # Too short for a summary unless nothing else is left.
        ("Faster builds with caching.", True, False),
        ("Faster builds with caching.", False, True),
        # An interview prompt or rhetorical question.
        ("What is your favourite computer systems paper?", True, False),
        ("What is your favourite computer systems paper?", False, True),
        # Cut off by the feed, or leading into a list.
        ("The new scheduler starts jobs in seconds and …", True, False),
        ("The rollout had three stages that we describe below:", True, False),
        # Split out of a parenthesis.
        ("(In fact, we turned it on before the standard was final.", True, False),
        # The tail of a sentence that markup cut in two.
        ("of this episode and post it in your office.", True, False),
        # Pointers to a figure that the summary does not show.
        ("As shown in Figure 2 below, Ray is at the top of the stack.", True, False),
        ("The chart below plots p99 latency for each region.", True, False),
        # "Table" as furniture is prose.
        ("We keep one table per tenant and shard it by region.", True, True),
    ],
)
def test_is_quotable(sentence, strict, expected):
    assert is_quotable(sentence, strict=strict) is expected
