"""Fetch feeds over HTTP(S) politely: conditional, bounded and never raising.

``fetch_all`` downloads many feeds at once with httpx under asyncio and hands
back one ``FetchResult`` per request. Every request sends the stored
validators (ETag, Last-Modified), stays within a per-host and a total
concurrency limit, and ends by its deadline with a body no larger than the
size cap. Redirects are followed by hand, so that a chain made only of 301
and 308 responses gives the caller the feed's new permanent address.

Failures (timeouts, resets, HTTP errors, oversized bodies) come back as a
result with ``error`` set; ``next_attempt_after`` turns a run of failures
into the time of the next attempt.
"""

import asyncio
import email.utils
import logging
import os
import queue
import random
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx

from kb import config
from kb.errors import ConfigError, FetchError

logger = logging.getLogger(__name__)

MB = 1024 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECT_STATUSES = frozenset({301, 308})
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Media types of web pages: a feed URL that returns one of these has
# usually moved to an HTML landing page or a login wall.
PAGE_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml"})
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)

BACKOFF_BASE = timedelta(hours=1)
BACKOFF_CAP = timedelta(days=2)
# A Retry-After larger than this is cut to it, so a feed is never parked
# for good by one odd header such as "Retry-After: 99999999".
RETRY_AFTER_CAP = timedelta(days=7)
DELAY_SECONDS = re.compile(r"^\d+(\.\d+)?$")


@dataclass
class FeedRequest:
    """One feed to fetch, with the validators stored from its last success."""

    feed_id: int | None
    url: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class FetchResult:
    """The outcome of fetching one feed; ``error`` is set when it failed.

    ``etag`` and ``last_modified`` are the validators to store for the next
    conditional request. ``permanent_url`` is set only when every redirect
    hop was a 301 or a 308. ``retry_after`` is in seconds. ``bytes`` counts
    the decoded body bytes read, including those of a body cut at the cap.
    """

    request: FeedRequest
    status: int | None = None
    body: bytes | None = None
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    final_url: str = ""
    permanent_url: str | None = None
    not_modified: bool = False
    gone: bool = False
    retry_after: float | None = None
    error: str | None = None
    elapsed_ms: int = 0
    bytes: int = 0
    warning: str | None = None

    @property
    def is_success(self) -> bool:
        """True when the feed was fetched or was not modified."""
        return self.error is None


@dataclass(frozen=True)
class FetchSettings:
    """Limits for one ``fetch_all`` call; times are in seconds.

    ``deadline`` bounds a whole fetch, redirects included, so a server that
    trickles a byte a second is cut even though no single read times out.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 120.0
    max_concurrency: int = 8
    max_per_host: int = 2
    max_bytes: int = 20 * MB
    max_redirects: int = 5
    user_agent: str = config.USER_AGENT

    def __post_init__(self):
        for name in ("connect_timeout", "read_timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"Invalid fetch setting {name}={getattr(self, name)!r}: "
                    "it must be a positive number of seconds."
                )
        for name in ("max_concurrency", "max_per_host", "max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"Invalid fetch setting {name}={getattr(self, name)!r}: "
                    "it must be at least 1."
                )
        if self.max_redirects < 0:
            raise ConfigError(
                f"Invalid fetch setting max_redirects={self.max_redirects!r}: "
                "it must be 0 or more."
            )


def fetch_all(
    requests: Iterable[FeedRequest],
    *,
    settings: FetchSettings | None = None,
    on_result: Callable[[FetchResult], None] | None = None,
) -> list[FetchResult]:
    """Fetch every request concurrently and return the results in request order.

    A failed fetch never raises: its result has ``error`` set. ``on_result``
    is called in the calling thread as each fetch finishes, so it may write
    to a SQLite connection opened in that thread while other feeds are still
    downloading. An exception raised by ``on_result`` cancels the fetches
    still running and propagates.

    The event loop runs in a worker thread, so this function also works when
    the caller already runs an event loop, as in a Jupyter notebook.
    """
    requests = list(requests)
    settings = settings or FetchSettings()
    if not requests:
        return []
    results: list[FetchResult | None] = [None] * len(requests)
    finished: queue.SimpleQueue = queue.SimpleQueue()
    runner = FetchRunner(requests, settings, finished)
    runner.start()
    try:
        for _ in requests:
            index, result = finished.get()
            if index is None:
                raise result  # a bug in the fetch loop itself, not a fetch failure
            results[index] = result
            if on_result is not None:
                on_result(result)
    finally:
        runner.stop()
    return results


class FetchRunner:
    """An asyncio loop in a worker thread that puts each result on a queue."""

    def __init__(self, requests, settings: FetchSettings, finished: queue.SimpleQueue):
        self.requests = requests
        self.settings = settings
        self.finished = finished
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, name="kb-fetch", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()

    def stop(self) -> None:
        """Cancel the fetches still running and wait for the thread to end."""
        if self.thread.is_alive() and self.loop is not None and self.task is not None:
            try:
                self.loop.call_soon_threadsafe(self.task.cancel)
            except RuntimeError:
                pass  # the loop closed between the check and the call
        self.thread.join()

    def run(self) -> None:
        try:
            asyncio.run(self.fetch_each())
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # noqa: B036 - re-raised in the caller's thread
            self.finished.put((None, error))
        finally:
            self.ready.set()

    async def fetch_each(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.ready.set()
        limiter = HostLimiter(self.settings)
        async with new_client(self.settings) as client:

            async def fetch_and_report(index: int, request: FeedRequest) -> None:
                result = await fetch_one(client, limiter, request, self.settings)
                self.finished.put((index, result))

            async with asyncio.TaskGroup() as group:
                for index, request in enumerate(self.requests):
                    group.create_task(fetch_and_report(index, request))


class HostLimiter:
    """Bound the fetches in flight, in total and per host."""

    def __init__(self, settings: FetchSettings):
        self.total = asyncio.Semaphore(settings.max_concurrency)
        self.hosts: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.max_per_host)
        )

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        # Take the host's slot first: a task queued behind a busy host must
        # not hold one of the total slots that other hosts could use.
        async with self.hosts[host], self.total:
            yield


def new_client(settings: FetchSettings) -> httpx.AsyncClient:
    """Create the shared client: no automatic redirects, gzip only, our User-Agent."""
    timeout = httpx.Timeout(
        settings.read_timeout,
        connect=settings.connect_timeout,
        pool=settings.deadline,
    )
    limits = httpx.Limits(
        max_connections=settings.max_concurrency,
        max_keepalive_connections=settings.max_concurrency,
    )
    headers = {
        "User-Agent": settings.user_agent,
        "Accept": ACCEPT,
        "Accept-Encoding": "gzip",
    }
    return httpx.AsyncClient(
        timeout=timeout, limits=limits, headers=headers, follow_redirects=False
    )


async def fetch_one(
    client: httpx.AsyncClient,
    limiter: HostLimiter,
    request: FeedRequest,
    settings: FetchSettings,
) -> FetchResult:
    """Fetch one feed and describe any failure in the result instead of raising."""
    result = FetchResult(request=request, final_url=request.url)
    started = time.monotonic()
    try:
        url = checked_url(request.url)
        async with limiter.slot(url.host):
            started = time.monotonic()
            async with asyncio.timeout(settings.deadline):
                await follow_redirects(client, request, settings, result)
    except TimeoutError:
        result.error = (
            f"{where(result)}: no complete response within the "
            f"{settings.deadline:g} s deadline"
        )
    except httpx.HTTPError as error:
        result.error = f"{where(result)}: {describe_http_error(error, settings)}"
    except FetchError as error:
        result.error = str(error)
    except Exception as error:  # one odd feed must not stop the run
        logger.exception("Unexpected error fetching %s", request.url)
        result.error = f"{where(result)}: unexpected {type(error).__name__}: {error}"
    result.elapsed_ms = round((time.monotonic() - started) * 1000)
    if result.error:
        result.body = None
        logger.info("Fetch failed: %s", result.error)
    return result


def checked_url(text: str) -> httpx.URL:
    """Parse a feed URL, raising FetchError unless it is an http or https URL."""
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as error:
        raise FetchError(f"{text}: invalid URL ({error})") from error
    problem = url_problem(url)
    if problem:
        raise FetchError(f"{text}: {problem}")
    return url


def url_problem(url: httpx.URL) -> str | None:
    if url.scheme not in ("http", "https"):
        return (
            "only http and https URLs can be fetched, "
            f"not {url.scheme or 'relative'} URLs"
        )
    if not url.host:
        return "the URL has no host name"
    return None


def redirect_target(result: FetchResult, base: httpx.URL, location: str) -> str:
    """Resolve a Location header against the URL that sent it."""
    try:
        target = base.join(location)
    except httpx.InvalidURL as error:
        raise FetchError(
            f"{where(result)}: invalid redirect Location {location!r} ({error})"
        ) from None
    problem = url_problem(target)
    if problem:
        raise FetchError(f"{where(result)}: redirect to {location} rejected: {problem}")
    return str(target)


async def follow_redirects(
    client: httpx.AsyncClient,
    request: FeedRequest,
    settings: FetchSettings,
    result: FetchResult,
) -> None:
    """Request the feed, following up to ``max_redirects`` redirects by hand."""
    url = request.url
    chain = [url]
    all_permanent = True
    headers = conditional_headers(request)
    for _ in range(settings.max_redirects + 1):
        result.final_url = url
        async with client.stream("GET", url, headers=headers) as response:
            result.status = response.status_code
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                await read_response(response, request, settings, result)
                break
            all_permanent &= response.status_code in PERMANENT_REDIRECT_STATUSES
            url = redirect_target(result, response.url, location)
        if url in chain:
            raise FetchError(
                f"{request.url}: redirect loop: {' -> '.join([*chain, url])}"
            )
        chain.append(url)
    else:
        raise FetchError(
            f"{request.url}: more than {settings.max_redirects} redirects: "
            f"{' -> '.join(chain)}"
        )
    if len(chain) > 1 and all_permanent:
        result.permanent_url = url


def conditional_headers(request: FeedRequest) -> dict[str, str]:
    headers = {}
    if request.etag:
        headers["If-None-Match"] = request.etag
    if request.last_modified:
        headers["If-Modified-Since"] = request.last_modified
    return headers


async def read_response(
    response: httpx.Response,
    request: FeedRequest,
    settings: FetchSettings,
    result: FetchResult,
) -> None:
    """Fill the result from the final, non-redirect response."""
    status = response.status_code
    if status == 304:
        result.not_modified = True
        # A 304 may omit the validators; keep the ones that earned it.
        result.etag = response.headers.get("etag") or request.etag
        result.last_modified = (
            response.headers.get("last-modified") or request.last_modified
        )
        return
    if 200 <= status < 300:
        result.content_type = response.headers.get("content-type")
        result.etag = response.headers.get("etag")
        result.last_modified = response.headers.get("last-modified")
        result.body = await read_capped_body(response, settings, result)
        result.warning = page_warning(result)
        return
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status == 410:
        result.gone = True
        result.error = f"{where(result)}: {reason}: the publisher removed this feed"
        return
    if status in RETRY_AFTER_STATUSES:
        result.retry_after = parse_retry_after(response.headers.get("retry-after"))
        if result.retry_after is not None:
            reason += f" (Retry-After {result.retry_after:.0f} s)"
    result.error = f"{where(result)}: {reason}"


async def read_capped_body(
    response: httpx.Response, settings: FetchSettings, result: FetchResult
) -> bytes:
    """Read the decoded body, raising FetchError as soon as it passes the cap.

    The cap applies to decoded bytes, so a small gzip bomb is stopped too.
    NOTE: httpx decodes one network read at a time, so memory can briefly
    exceed the cap by the expansion of one read (about 64 KiB compressed, up
    to roughly 1,000 times that for a maximally compressed body).
    """
    declared = response.headers.get("content-length", "")
    encoded = response.headers.get("content-encoding", "identity") != "identity"
    if declared.isdigit() and not encoded and int(declared) > settings.max_bytes:
        raise FetchError(
            f"{where(result)}: Content-Length {int(declared)} is over the "
            f"{size_text(settings.max_bytes)} cap (max_bytes={settings.max_bytes}); "
            "the body was not downloaded"
        )
    chunks = []
    async for chunk in response.aiter_bytes():
        result.bytes += len(chunk)
        if result.bytes > settings.max_bytes:
            raise FetchError(
                f"{where(result)}: body is over the {size_text(settings.max_bytes)} "
                f"cap (max_bytes={settings.max_bytes}) once decoded; "
                "stopped reading"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def page_warning(result: FetchResult) -> str | None:
    media_type = (result.content_type or "").split(";")[0].strip().lower()
    if media_type in PAGE_MEDIA_TYPES:
        return (
            f"{result.final_url} was served as {media_type}, so it is probably "
            "a web page rather than a feed"
        )
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the seconds to wait from a Retry-After header, or None when invalid.

    The header contains either a number of seconds ("120") or an HTTP date
    ("Wed, 21 Oct 2026 07:28:00 GMT"); a date in the past means 0.
    """
    if not value:
        return None
    value = value.strip()
    if DELAY_SECONDS.match(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def next_attempt_after(
    consecutive_failures: int,
    retry_after: float | None,
    now: datetime,
    *,
    rng: random.Random | None = None,
) -> datetime:
    """Return when to fetch a failing feed again.

    The delay starts at one hour and doubles with each consecutive failure up
    to two days, less a random 0-25 % so that feeds which failed together do
    not all return together. A larger ``retry_after`` (seconds) wins, up to
    seven days. The feed is retried after that, never dropped.
    """
    failures = max(1, consecutive_failures)
    doublings = min(failures - 1, 16)
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**doublings)
    delay *= 1 - 0.25 * (rng or random).random()
    if retry_after is not None and retry_after > 0:
        # Cap before building the timedelta: "Retry-After: 99999999999999999999"
        # overflows it.
        seconds = min(retry_after, RETRY_AFTER_CAP.total_seconds())
        delay = max(delay, timedelta(seconds=seconds))
    return now + delay


def where(result: FetchResult) -> str:
    """Name the URL that failed, and the one asked for when a redirect led there."""
    if result.final_url and result.final_url != result.request.url:
        return f"{result.final_url} (redirected from {result.request.url})"
    return result.request.url


def describe_http_error(error: httpx.HTTPError, settings: FetchSettings) -> str:
    """Say in plain words what an httpx error means for a feed fetch."""
    if isinstance(error, httpx.ConnectTimeout):
        return f"connect timed out after {settings.connect_timeout:g} s"
    if isinstance(error, httpx.ReadTimeout):
        return f"read timed out after {settings.read_timeout:g} s without data"
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError):
        lookup = lookup_failure(error)
        if lookup is not None:
            return (
                f"the host name {error.request.url.host} could not be resolved "
                f"({lookup.strerror})"
            )
        return f"connection failed: {root_cause(error)}"
    if isinstance(error, httpx.RemoteProtocolError):
        return f"the server broke the HTTP exchange: {error}"
    if isinstance(error, httpx.ReadError):
        return f"connection lost while reading: {root_cause(error)}"
    if isinstance(error, httpx.DecodingError):
        return f"the compressed body could not be decoded: {error}"
    return f"{type(error).__name__}: {error or 'no details'}"


def lookup_failure(error: BaseException) -> socket.gaierror | None:
    """Return the DNS lookup error under an httpx error, if there is one."""
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def root_cause(error: BaseException) -> str:
    """Return the message of the innermost cause, such as "Connection refused".

    httpx wraps socket errors in messages like "All connection attempts
    failed", and a reset read has an empty message, while the OSError
    underneath names the real reason.
    """
    message = str(error)
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        message = str(cause) or message
        cause = cause.__cause__ or cause.__context__
    return message or type(error).__name__


def size_text(size: int) -> str:
    if size % MB == 0:
        return f"{size // MB} MB"
    return f"{size}-byte"
