import asyncio
import random
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from faultserver import (
    HTML_PAGE,
    LYING_ENCODING_RSS,
    SAMPLE_RSS,
    fault_server_fixture,  # noqa: F401 - provides the fault_server fixture
    http_date,
)

from kb import config
from kb.errors import ConfigError
from kb.fetch import (
    FeedRequest,
    FetchSettings,
    fetch_all,
    next_attempt_after,
    parse_retry_after,
)

MB = 1024 * 1024
# Small limits keep the failure cases fast; each test that needs another
# value builds its own settings.
FAST = FetchSettings(connect_timeout=1, read_timeout=0.5, deadline=2, max_bytes=MB)
NOW = datetime(2026, 8, 20, 2, 0, tzinfo=timezone.utc)


def fetch(url, settings=FAST, **validators):
    return fetch_all([FeedRequest(None, url, **validators)], settings=settings)[0]


# -- successful fetches ------------------------------------------------------


def test_fetch_returns_body_and_validators(fault_server):
    url = fault_server.feed(
        "/feed.xml", etag='"v1"', last_modified="Mon, 03 Aug 2026 10:00:00 GMT"
    )
    result = fetch(url)
    assert result.error is None
    assert result.is_success
    assert result.status == 200
    assert result.body == SAMPLE_RSS
    assert result.bytes == len(SAMPLE_RSS)
    assert result.content_type == "application/rss+xml; charset=utf-8"
    assert result.etag == '"v1"'
    assert result.last_modified == "Mon, 03 Aug 2026 10:00:00 GMT"
    assert result.final_url == url
    assert result.permanent_url is None
    assert not result.not_modified
    assert result.warning is None
    assert result.elapsed_ms >= 0


def test_fetch_sends_user_agent_and_gzip(fault_server):
    url = fault_server.feed("/feed.xml")
    fetch(url)
    (request,) = fault_server.requests_for("/feed.xml")
    assert request.headers["user-agent"] == config.USER_AGENT
    assert request.headers["accept-encoding"] == "gzip"
    assert "if-none-match" not in request.headers
    assert "if-modified-since" not in request.headers


def test_fetch_decodes_gzip_body(fault_server):
    url = fault_server.feed("/feed.xml", compress=True)
    result = fetch(url)
    assert result.error is None
    assert result.body == SAMPLE_RSS


def test_fetch_within_timeout_succeeds(fault_server):
    url = fault_server.slow("/slow", 0.2)
    result = fetch(url, FetchSettings(read_timeout=2, deadline=5))
    assert result.error is None
    assert result.body == SAMPLE_RSS
    assert result.elapsed_ms >= 200


# -- conditional requests ----------------------------------------------------


def test_etag_gives_not_modified(fault_server):
    url = fault_server.feed("/feed.xml", etag='"v1"')
    result = fetch(url, etag='"v1"')
    assert result.error is None
    assert result.status == 304
    assert result.not_modified
    assert result.body is None
    assert result.etag == '"v1"'
    (request,) = fault_server.requests_for("/feed.xml")
    assert request.headers["if-none-match"] == '"v1"'


def test_last_modified_gives_not_modified(fault_server):
    stamp = "Mon, 03 Aug 2026 10:00:00 GMT"
    url = fault_server.feed("/feed.xml", last_modified=stamp)
    result = fetch(url, last_modified=stamp)
    assert result.not_modified
    assert result.last_modified == stamp
    (request,) = fault_server.requests_for("/feed.xml")
    assert request.headers["if-modified-since"] == stamp


def test_changed_etag_gives_new_body(fault_server):
    url = fault_server.feed("/feed.xml", etag='"v2"')
    result = fetch(url, etag='"v1"')
    assert not result.not_modified
    assert result.body == SAMPLE_RSS
    assert result.etag == '"v2"'


def test_bare_304_keeps_request_validators(fault_server):
    # Some servers answer 304 with no ETag or Last-Modified header at all.
    url = fault_server.respond("/bare304", 304)
    result = fetch(url, etag='"old"', last_modified="Sun, 02 Aug 2026 00:00:00 GMT")
    assert result.not_modified
    assert result.etag == '"old"'
    assert result.last_modified == "Sun, 02 Aug 2026 00:00:00 GMT"


def test_second_fetch_uses_stored_validators(fault_server):
    url = fault_server.feed(
        "/feed.xml", etag='"v1"', last_modified=http_date(time.time() - 3600)
    )
    first = fetch(url)
    second = fetch(url, etag=first.etag, last_modified=first.last_modified)
    assert first.body == SAMPLE_RSS
    assert second.not_modified
    assert fault_server.hits("/feed.xml") == 2


# -- slow, broken and hostile servers ----------------------------------------


def test_hanging_server_times_out(fault_server):
    url = fault_server.hang("/hang")
    result = fetch(url)
    assert result.status is None
    assert result.body is None
    assert url in result.error
    assert "read timed out after 0.5 s" in result.error


def test_trickling_server_is_cut_at_deadline(fault_server):
    # One byte every 0.05 s never trips the 0.5 s read timeout.
    url = fault_server.trickle("/trickle", interval=0.05)
    started = time.monotonic()
    result = fetch(url, FetchSettings(read_timeout=0.5, deadline=1))
    assert time.monotonic() - started < 3
    assert url in result.error
    assert "within the 1 s deadline" in result.error
    assert result.body is None


def test_connection_reset_is_an_error(fault_server):
    url = fault_server.reset("/reset")
    result = fetch(url)
    assert url in result.error
    assert "Connection reset" in result.error or "closed" in result.error


def test_reset_during_body_is_an_error(fault_server):
    url = fault_server.reset("/reset-body", after_headers=True)
    result = fetch(url)
    assert result.error is not None
    assert result.body is None


def test_truncated_body_is_an_error(fault_server):
    url = fault_server.truncated("/truncated")
    result = fetch(url)
    assert url in result.error
    assert "incomplete" in result.error or "complete message body" in result.error
    assert result.body is None


def test_connection_refused_is_an_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = fetch(f"http://127.0.0.1:{port}/feed.xml")
    assert "Connection refused" in result.error


def test_unresolvable_host_is_an_error():
    # Names under the reserved .invalid top-level domain never resolve.
    result = fetch("http://feed.invalid/rss")
    assert result.error.startswith(
        "http://feed.invalid/rss: the host name feed.invalid could not be resolved ("
    )
    assert "Unknown error" not in result.error
    assert result.body is None


def test_connect_timeout_is_an_error():
    # A listening socket whose accept queue is full leaves new SYNs
    # unanswered, so the connection neither succeeds nor is refused.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        time.sleep(0.1)
        settings = FetchSettings(connect_timeout=0.3, read_timeout=0.5, deadline=2)
        result = fetch(f"http://127.0.0.1:{address[1]}/feed.xml", settings)
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert result.error is not None
    if "connect timed out" not in result.error:
        pytest.skip(f"the kernel answered the full accept queue: {result.error}")
    assert "connect timed out after 0.3 s" in result.error


@pytest.mark.parametrize(
    "status, phrase",
    [
        (500, "HTTP 500 Internal Server Error"),
        (404, "HTTP 404 Not Found"),
        (403, "HTTP 403 Forbidden"),
    ],
)
def test_http_error_status_is_an_error(fault_server, status, phrase):
    url = fault_server.respond("/error", status, b"no\n")
    result = fetch(url)
    assert result.status == status
    assert result.error == f"{url}: {phrase}"
    assert result.body is None
    assert result.retry_after is None
    assert not result.gone


def test_gone_sets_gone(fault_server):
    url = fault_server.respond("/gone", 410)
    result = fetch(url)
    assert result.gone
    assert result.status == 410
    assert "410" in result.error


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds(fault_server, status):
    url = fault_server.retry_after("/busy", status, "120")
    result = fetch(url)
    assert result.status == status
    assert result.retry_after == 120
    assert "Retry-After 120 s" in result.error


def test_retry_after_http_date(fault_server):
    url = fault_server.retry_after("/busy", 503, http_date(time.time() + 600))
    result = fetch(url)
    assert 590 <= result.retry_after <= 600


def test_retry_after_invalid_is_ignored(fault_server):
    url = fault_server.retry_after("/busy", 429, "soon")
    result = fetch(url)
    assert result.retry_after is None
    assert "HTTP 429" in result.error


# -- size cap ----------------------------------------------------------------


def test_gzip_bomb_stops_at_cap(fault_server):
    url = fault_server.gzip_bomb("/bomb", decoded_size=1024 * MB)
    started = time.monotonic()
    result = fetch(url)
    assert time.monotonic() - started < 5
    assert "1 MB cap (max_bytes=1048576)" in result.error
    assert url in result.error
    assert result.body is None
    # The client stopped long before the server sent the whole bomb,
    # which is about 1 MB compressed.
    assert result.bytes < 200 * MB
    assert fault_server.bytes_sent["/bomb"] < 512 * 1024


def test_huge_body_stops_at_default_cap(fault_server):
    url = fault_server.huge("/huge", 100 * MB)
    result = fetch(url, FetchSettings(read_timeout=5, deadline=20))
    assert FetchSettings().max_bytes == 20 * MB
    assert "20 MB cap" in result.error
    assert result.body is None
    assert 20 * MB < result.bytes < 21 * MB
    assert fault_server.bytes_sent["/huge"] < 60 * MB


def test_declared_length_over_cap_is_not_downloaded(fault_server):
    url = fault_server.huge("/huge", 100 * MB, declare_length=True)
    result = fetch(url)
    assert "Content-Length 104857600 is over the 1 MB cap" in result.error
    assert result.bytes == 0


def test_body_at_cap_is_accepted(fault_server):
    url = fault_server.huge("/exact", 1024)
    result = fetch(url, FetchSettings(max_bytes=1024))
    assert result.error is None
    assert len(result.body) == 1024


# -- redirects ---------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses, permanent",
    [
        ([301], True),
        ([308], True),
        ([301, 308], True),
        ([302], False),
        ([307], False),
        ([303], False),
        ([301, 302], False),
        ([307, 301], False),
    ],
)
def test_redirect_chain_sets_permanent_url(fault_server, statuses, permanent):
    target = fault_server.feed("/new.xml")
    for index, status in enumerate(statuses):
        next_path = f"/hop{index + 1}" if index + 1 < len(statuses) else "/new.xml"
        fault_server.redirect(f"/hop{index}", status, next_path)
    result = fetch(fault_server.url("/hop0"))
    assert result.error is None
    assert result.body == SAMPLE_RSS
    assert result.final_url == target
    assert result.permanent_url == (target if permanent else None)


def test_redirect_keeps_conditional_headers(fault_server):
    fault_server.feed("/new.xml", etag='"v1"')
    url = fault_server.redirect("/old.xml", 301, "/new.xml")
    result = fetch(url, etag='"v1"')
    assert result.not_modified
    assert result.permanent_url == fault_server.url("/new.xml")


def test_redirect_loop_is_an_error(fault_server):
    fault_server.redirect("/a", 302, "/b")
    url = fault_server.redirect("/b", 302, "/a")
    result = fetch(url)
    assert "redirect loop" in result.error
    assert fault_server.hits("/a") == 1
    assert fault_server.hits("/b") == 1


def test_five_redirects_are_followed(fault_server):
    fault_server.feed("/end")
    for index in range(5):
        target = f"/r{index + 1}" if index < 4 else "/end"
        fault_server.redirect(f"/r{index}", 302, target)
    result = fetch(fault_server.url("/r0"))
    assert result.error is None


def test_six_redirects_are_too_many(fault_server):
    fault_server.feed("/end")
    for index in range(6):
        target = f"/r{index + 1}" if index < 5 else "/end"
        fault_server.redirect(f"/r{index}", 301, target)
    result = fetch(fault_server.url("/r0"))
    assert "more than 5 redirects" in result.error
    assert result.permanent_url is None
    assert fault_server.hits("/end") == 0


def test_redirect_to_other_scheme_is_rejected(fault_server):
    url = fault_server.redirect("/ftp", 301, "file:///etc/passwd")
    result = fetch(url)
    assert "redirect to file:///etc/passwd rejected" in result.error
    assert result.body is None


# -- content the parser has to judge -----------------------------------------


def test_html_page_is_returned_with_warning(fault_server):
    url = fault_server.html_page("/page")
    result = fetch(url)
    assert result.error is None
    assert result.body == HTML_PAGE
    assert "text/html" in result.warning


def test_wrong_content_type_is_passed_through(fault_server):
    url = fault_server.feed("/image", content_type="image/png")
    result = fetch(url)
    assert result.error is None
    assert result.content_type == "image/png"
    assert result.body == SAMPLE_RSS


def test_lying_encoding_bytes_are_untouched(fault_server):
    url = fault_server.lying_encoding("/lies")
    result = fetch(url)
    assert result.error is None
    assert result.body == LYING_ENCODING_RSS


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://127.0.0.1/feed.xml", "not ftp URLs"),
        ("file:///etc/passwd", "not file URLs"),
        ("feed.xml", "not relative URLs"),
        ("http://", "no host name"),
        ("http://[::1", "invalid URL"),
    ],
)
def test_unfetchable_url_is_an_error(url, reason):
    result = fetch(url)
    assert result.error.startswith(url)
    assert reason in result.error
    assert result.status is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("connect_timeout", 0),
        ("read_timeout", -1),
        ("deadline", 0),
        ("max_concurrency", 0),
        ("max_per_host", 0),
        ("max_bytes", 0),
        ("max_redirects", -1),
    ],
)
def test_invalid_settings_raise(field, value):
    with pytest.raises(ConfigError, match=f"{field}={value}"):
        FetchSettings(**{field: value})


# -- many feeds at once ------------------------------------------------------


def test_results_keep_request_order(fault_server):
    urls = [
        fault_server.slow("/slow", 0.3),
        fault_server.respond("/error", 500),
        fault_server.feed("/fast"),
    ]
    seen = []
    results = fetch_all(
        [FeedRequest(index, url) for index, url in enumerate(urls)],
        settings=FAST,
        on_result=seen.append,
    )
    assert [result.request.feed_id for result in results] == [0, 1, 2]
    assert [result.final_url for result in results] == urls
    assert sorted(result.request.feed_id for result in seen) == [0, 1, 2]
    # The slow feed finishes last, so on_result saw it last.
    assert seen[-1].request.feed_id == 0


def test_empty_request_list():
    assert fetch_all([]) == []


def test_per_host_limit(fault_server):
    url = fault_server.slow("/slow", 0.2)
    settings = FetchSettings(
        max_concurrency=8, max_per_host=2, read_timeout=5, deadline=10
    )
    results = fetch_all([FeedRequest(i, url) for i in range(6)], settings=settings)
    assert all(result.error is None for result in results)
    assert fault_server.max_in_flight == 2


def test_total_limit(fault_server):
    url = fault_server.slow("/slow", 0.2)
    settings = FetchSettings(
        max_concurrency=3, max_per_host=10, read_timeout=5, deadline=10
    )
    started = time.monotonic()
    results = fetch_all([FeedRequest(i, url) for i in range(6)], settings=settings)
    assert all(result.error is None for result in results)
    assert fault_server.max_in_flight == 3
    assert time.monotonic() - started >= 0.4


def test_one_failure_does_not_stop_others(fault_server):
    good = fault_server.feed("/good")
    requests = [
        FeedRequest(1, fault_server.hang("/hang")),
        FeedRequest(2, "ftp://nowhere/"),
        FeedRequest(3, fault_server.reset("/reset")),
        FeedRequest(4, good),
    ]
    results = fetch_all(requests, settings=FAST)
    assert [result.error is None for result in results] == [False, False, False, True]


def test_on_result_runs_in_calling_thread(fault_server):
    url = fault_server.feed("/feed.xml")
    threads = []
    fetch_all(
        [FeedRequest(1, url), FeedRequest(2, url)],
        settings=FAST,
        on_result=lambda result: threads.append(threading.get_ident()),
    )
    assert threads == [threading.get_ident()] * 2


def test_on_result_error_cancels_and_propagates(fault_server):
    requests = [
        FeedRequest(1, fault_server.feed("/fast")),
        FeedRequest(2, fault_server.hang("/hang")),
    ]

    def explode(result):
        raise RuntimeError("storage failed")

    settings = FetchSettings(read_timeout=30, deadline=30)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="storage failed"):
        fetch_all(requests, settings=settings, on_result=explode)
    assert time.monotonic() - started < 5


def test_works_inside_running_event_loop(fault_server):
    url = fault_server.feed("/feed.xml")

    async def notebook_cell():
        return fetch_all([FeedRequest(1, url)], settings=FAST)

    (result,) = asyncio.run(notebook_cell())
    assert result.body == SAMPLE_RSS


# -- retry timing ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 30 ", 30.0),
        ("1.5", 1.5),
        ("Thu, 20 Aug 2026 03:00:00 GMT", 3600.0),
        ("Thu, 20 Aug 2026 01:00:00 GMT", 0.0),  # in the past
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "failures, low, high",
    [
        (0, timedelta(minutes=45), timedelta(hours=1)),  # treated as one
        (1, timedelta(minutes=45), timedelta(hours=1)),
        (2, timedelta(minutes=90), timedelta(hours=2)),
        (4, timedelta(hours=6), timedelta(hours=8)),
        (6, timedelta(hours=24), timedelta(hours=32)),
        (7, timedelta(hours=36), timedelta(days=2)),  # capped
        (1000, timedelta(hours=36), timedelta(days=2)),
    ],
)
def test_backoff_grows_and_is_capped(failures, low, high):
    for seed in range(20):
        delay = next_attempt_after(failures, None, NOW, rng=random.Random(seed)) - NOW
        assert low <= delay <= high


def test_backoff_has_jitter():
    delays = {
        next_attempt_after(3, None, NOW, rng=random.Random(seed)) for seed in range(10)
    }
    assert len(delays) > 5


def test_backoff_honours_larger_retry_after():
    at = next_attempt_after(1, 3 * 86400, NOW, rng=random.Random(1))
    assert at == NOW + timedelta(days=3)


def test_backoff_ignores_smaller_retry_after():
    at = next_attempt_after(1, 60, NOW, rng=random.Random(1))
    assert at - NOW >= timedelta(minutes=45)


def test_backoff_caps_retry_after_at_a_week():
    at = next_attempt_after(1, 10**9, NOW)
    assert at == NOW + timedelta(days=7)


def test_huge_retry_after_is_capped():
    from datetime import datetime, timedelta, timezone

    from kb.fetch import RETRY_AFTER_CAP, next_attempt_after

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = next_attempt_after(1, 1e20, now)
    assert later - now <= RETRY_AFTER_CAP
    assert later - now > timedelta(days=1)
