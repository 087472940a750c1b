import pytest

from kb.errors import ParseError
from kb.parse import canonical_url, html_to_text, parse_feed, sanitize

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Example &amp; Co</title>
<link>https://example.com/blog/</link>
<item><title>First &lt;post&gt;</title><link>/blog/first/?utm_source=rss</link>
<guid isPermaLink="false">post-1</guid>
<pubDate>Tue, 03 Jun 2025 10:00:00 +0200</pubDate>
<description><![CDATA[<p>Hello <b>world</b></p><script>alert(1)</script>
<img src="/img/a.png" onerror="alert(2)"><a href="javascript:alert(3)">x</a>]]></description>
</item>
<item><title>No date</title><link>https://example.com/blog/second</link></item>
</channel></rss>"""


@pytest.mark.parametrize(
    "link,expected",
    [
        # scheme and host lower-cased, trailing slash and fragment dropped
        ("HTTPS://Example.COM/Post/#top", "https://example.com/Post"),
        # Medium's tracking parameter
        (
            "https://netflixtechblog.com/abc-123?source=rss----2615bd06b42e---4",
            "https://netflixtechblog.com/abc-123",
        ),
        # utm parameters go, a real query parameter stays
        ("https://a.example/p?id=7&utm_medium=feed", "https://a.example/p?id=7"),
        # default port dropped, other ports kept
        ("http://a.example:80/x/", "http://a.example/x"),
        ("http://a.example:8080/x/", "http://a.example:8080/x"),
        # path case is kept
        ("https://a.example/CamelCase/", "https://a.example/CamelCase"),
    ],
)
def test_canonical_url(link, expected):
    assert canonical_url(link) == expected


def test_parse_rss_entry_fields():
    feed = parse_feed(RSS, name="example.xml")
    assert feed.title == "Example & Co"
    first, second = feed.entries
    assert first.title == "First <post>"
    assert first.guid == "post-1"
    assert first.link == "https://example.com/blog/first/?utm_source=rss"
    assert first.url == "https://example.com/blog/first"
    assert first.published == "2025-06-03T08:00:00+00:00"
    assert first.content_text.splitlines() == ["Hello world", "x"]


def test_parse_never_invents_a_date():
    second = parse_feed(RSS, name="example.xml").entries[1]
    assert second.published is None
    assert second.updated is None


def test_sanitised_html_has_no_script():
    first = parse_feed(RSS, name="example.xml").entries[0]
    html = first.content_html
    assert "<script" not in html
    assert "onerror" not in html
    assert "javascript:" not in html
    assert "<b>world</b>" in html


def test_sanitize_drops_event_handlers():
    assert (
        sanitize('<a href="https://x.test" onclick="steal()">x</a>').count("onclick")
        == 0
    )


def test_html_to_text_keeps_paragraphs():
    text = html_to_text(
        "<p>One &amp; two</p><ul><li>a</li><li>b</li></ul><pre>x = 1</pre>"
    )
    assert text.splitlines() == ["One & two", "a", "b", "x = 1"]


def test_html_page_is_not_a_feed():
    page = b"<!DOCTYPE html><html><head><title>Hi</title></head><body>x</body></html>"
    with pytest.raises(ParseError, match="page.html: not a feed .*HTML page"):
        parse_feed(page, name="page.html")


def test_empty_body_is_not_a_feed():
    with pytest.raises(ParseError, match="empty.xml: empty document"):
        parse_feed(b"  \n", name="empty.xml")


def test_valid_feed_without_entries_is_accepted():
    feed = parse_feed(
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>Empty</title></feed>',
        name="empty.atom",
    )
    assert feed.entries == []
    assert feed.warnings == []


def test_epoch_date_is_treated_as_missing():
    rss = b"""<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>
    <item><title>t</title><link>https://a.example/1</link><dc:date>1970-01-01T00:00:00Z</dc:date></item>
    </channel></rss>"""
    assert parse_feed(rss, name="epoch.xml").entries[0].published is None


def test_xml_base_resolves_links(tricky_dir):
    feed = parse_feed(
        (tricky_dir / "feed-rs" / "atom_xml_base.xml").read_bytes(), name="base"
    )
    assert feed.entries[0].url.startswith("https://")


def test_relative_link_resolves_against_channel_link(tricky_dir):
    path = tricky_dir / "feed-rs" / "atom_relative.xml"
    feed = parse_feed(path.read_bytes(), name=path.name)
    assert feed.entries[0].url == "https://example.com/blog/2003/12/13/atom03"


@pytest.mark.parametrize(
    "name,title",
    [
        # windows-1251 Cyrillic
        ("node-feedparser/iconv.xml", "В Бузулуке"),
        # ISO-8859-2 Polish
        ("rss-parser/latin2.rss", "ZAŻÓŁĆ GĘSLĄ JAŹŃ"),
        # GB2312 Chinese
        ("rss-parser/encoding-gb2312.xml", "世纪华通"),
    ],
)
def test_legacy_encodings_decode(tricky_dir, name, title):
    feed = parse_feed((tricky_dir / name).read_bytes(), name=name)
    assert any(title in (entry.title or "") for entry in feed.entries)


def test_lying_encoding_is_recovered_with_a_warning(tricky_dir):
    name = "rss-parser/uolNoticias.rss"
    feed = parse_feed((tricky_dir / name).read_bytes(), name=name)
    assert len(feed.entries) == 15
    assert any("windows-1252" in warning for warning in feed.warnings)


def test_escaped_angle_brackets_stay_text(tricky_dir):
    name = "node-feedparser/title-with-angle-brackets.xml"
    feed = parse_feed((tricky_dir / name).read_bytes(), name=name)
    assert feed.entries[0].title == "RSS <<< Title >>>"


def test_relative_links_in_content_resolve_without_base(tricky_dir):
    name = "node-feedparser/rss-with-relative-html-urls-no-base.xml"
    feed = parse_feed((tricky_dir / name).read_bytes(), name=name)
    html = feed.entries[0].content_html
    assert 'href="https://example.com/feed/post-1"' in html
    assert 'src="https://example.com/images/post-1.png"' in html


def test_absolute_links_in_content_are_left_alone():
    rss = b"""<rss version="2.0"><channel><link>https://a.example/</link><item>
    <link>https://a.example/p</link><description>&lt;a href="https://b.example/x"&gt;x&lt;/a&gt;</description>
    </item></channel></rss>"""
    html = parse_feed(rss, name="abs.xml").entries[0].content_html
    assert 'href="https://b.example/x"' in html


def test_javascript_entry_link_is_dropped():
    rss = b"""<rss version="2.0"><channel><item><title>x</title>
    <link>javascript:alert(document.domain)</link></item></channel></rss>"""
    entry = parse_feed(rss, name="js.xml").entries[0]
    assert entry.link is None
    assert entry.url is None


def test_far_future_date_is_treated_as_missing():
    rss = b"""<rss version="2.0"><channel><item><title>t</title>
    <link>https://a.example/1</link><pubDate>Fri, 31 Dec 9999 00:00:00 GMT</pubDate>
    </item></channel></rss>"""
    assert parse_feed(rss, name="future.xml").entries[0].published is None
