"""kb serve as a real server, driven by Debian's headless Chromium through Playwright.

Screenshots go to test-artifacts/. The browser may only reach the server on
127.0.0.1: every other request is aborted and recorded, and the test fails
when there is one.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from serve_fixtures import MODEL, build_kb

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Run ``kb serve`` on a free port of 127.0.0.1 and return its base URL."""
    folder = tmp_path_factory.mktemp("browser")
    db_path = folder / "kb.db"
    build_kb(db_path)
    port = free_port()
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "kb", "serve", "-d", str(db_path)]
        + ["--host", "127.0.0.1", "--port", str(port), "--model", MODEL],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_until_up(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kb serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{base}/-/versions.json", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"kb serve did not respond on {base} in {START_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield context
        finally:
            context.close()


class PageWatch:
    """Record what a page did that it should not: dialogs, outside requests."""

    def __init__(self):
        self.dialogs = []
        self.outside_requests = []
        self.console = []

    def route(self, route):
        host = urlsplit(route.request.url).hostname
        if host in ("127.0.0.1", "::1"):
            route.continue_()
        else:
            self.outside_requests.append(route.request.url)
            route.abort()

    def dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def page(browser_context):
    watch = PageWatch()
    page = browser_context.new_page()
    page.route("**/*", watch.route)
    page.on("dialog", watch.dialog)
    page.on("console", lambda message: watch.console.append(message.text))
    page.watch = watch
    yield page
    page.close()
    assert watch.dialogs == []
    assert watch.outside_requests == []


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def assert_no_script_ran(page) -> None:
    assert page.evaluate("typeof window.kbPwned") == "undefined"


def policy_violations(page) -> list[str]:
    return [text for text in page.watch.console if "Content Security Policy" in text]


def test_search_then_post_then_digest(server, page):
    page.goto(f"{server}/-/kb/search")
    page.fill("#kb-q", "failover postgres")
    page.press("#kb-q", "Enter")
    page.wait_for_selector(".kb-result")
    titles = page.locator(".kb-result h2 a").all_inner_texts()
    assert titles[0] == "How we run multi-AZ failover for Postgres"
    assert page.locator(".kb-snippet mark").count() > 0
    screenshot(page, "search-results")

    page.click("text=How we run multi-AZ failover for Postgres")
    page.wait_for_selector("h1")
    assert page.inner_text("h1") == "How we run multi-AZ failover for Postgres"
    assert "Related posts from other companies" in page.content()
    assert page.locator(".kb-tags .kb-topic").count() == 1
    screenshot(page, "post")

    page.click("text=Digest")
    page.wait_for_selector(".kb-digest")
    assert "Taming Kafka consumer lag" in page.inner_text(".kb-digest")
    screenshot(page, "digest")
    assert_no_script_ran(page)
    assert policy_violations(page) == []


def test_search_filters_in_form(server, page):
    page.goto(f"{server}/-/kb/search?q=failover")
    page.select_option("select[name=company]", "Initech")
    page.click("button[type=submit]")
    page.wait_for_selector(".kb-result")
    titles = page.locator(".kb-result h2 a").all_inner_texts()
    assert titles == ["Testing database failover in production"]


def test_hostile_post_runs_nothing(server, page):
    page.goto(f"{server}/-/kb/post/4")
    page.wait_for_selector("h1")
    assert "<script>" in page.inner_text("h1")
    page.hover("text=styled text")
    page.click("text=javascript link")
    screenshot(page, "hostile-post")
    assert_no_script_ran(page)
    assert policy_violations(page) == []


@pytest.mark.parametrize(
    "path",
    [
        "/-/kb/search?q=drill&mode=keyword",
        "/-/kb/digest?date=2026-08-18",
        "/kb/posts/4",
        "/kb/posts_view?id=4",
        "/kb/search?q=drill&mode=keyword",
        "/kb/daily_digest?date=2026-08-18",
        "/kb?sql=select+title,+summary,+content_html+from+posts+where+id=4",
    ],
)
def test_hostile_post_inert_everywhere(server, page, path):
    page.goto(f"{server}{path}")
    page.wait_for_load_state("load")
    assert "Hostile" in page.content()
    assert_no_script_ran(page)


def test_saved_query_form_without_params(server, page):
    page.goto(f"{server}/kb/daily_digest")
    assert page.locator("input[name=date]").count() == 1
    assert "Daily digest" in page.inner_text("h1")
    screenshot(page, "daily-digest-query")


def test_search_query_highlights(server, page):
    page.goto(f"{server}/kb/search?q=failover&mode=keyword")
    assert page.locator("td mark").count() > 0
    assert page.locator("a[href='/-/kb/post/1']").count() == 1
    screenshot(page, "search-query")
    assert_no_script_ran(page)
