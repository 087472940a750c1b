"""Readers and writers at once: kb serve under a running ingest, racing opens.

``kb serve`` runs as a real server process on 127.0.0.1 while ``kb ingest``
writes to the same file. Reader threads hammer its JSON endpoints and must
never get a server error or "database is locked", and every snapshot they
read must be whole: each post has its FTS row and its content hash.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import shared_path

from kb.db import open_db

FAKE_MODEL = "hash:64"
# The database starts with these sources; the ingest under test adds the rest.
BASE_SOURCES = ("jvns", "khan-academy-engineering")
ADDED_SOURCES = (
    "anthropic-engineering",
    "google-deepmind-blog",
    "google-developers-ai",
    "openai-research",
    "meta-ai-blog",
    "airbnb-engineering",
)
READERS = 4
# One snapshot of the invariants, read in one statement so that SQLite
# runs it in a single transaction. posts_fts_docsize is FTS5's own table of
# indexed rows, so it shows what the index contains, not the posts.
SNAPSHOT_SQL = """
select
  (select count(*) from posts) as posts,
  (select count(*) from posts_fts_docsize) as indexed,
  (select count(*) from posts where content_hash is null or content_hash = '')
    as unhashed,
  (select count(*) from posts as p
    where not exists (select 1 from posts_fts_docsize as d where d.id = p.id))
    as unindexed
"""
ENDPOINTS = [
    "/kb/posts.json?_size=50&_sort_desc=id",
    "/kb/posts_view.json?_size=20",
    "/kb/search.json?q=distributed+systems&mode=keyword",
    "/kb/search.json?q=machine+learning&mode=hybrid",
    "/kb/feed_health.json",
    "/kb/fetches.json?_size=20&_sort_desc=id",
    "/-/kb/search?q=latency",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kb_env() -> dict[str, str]:
    return {**os.environ, "KB_MODEL": FAKE_MODEL, "HF_HUB_OFFLINE": "1"}


def copy_sources(names, destination: Path) -> Path:
    feeds = shared_path("corpus", "feeds")
    destination.mkdir()
    for name in names:
        shutil.copytree(feeds / name, destination / name)
    return destination


@pytest.fixture
def base_kb(tmp_path) -> Path:
    """A database of the base sources with hash:64 vectors, topics and themes."""
    path = tmp_path / "kb.db"
    sources = copy_sources(BASE_SOURCES, tmp_path / "base")
    result = subprocess.run(
        [sys.executable, "-m", "kb", "ingest", "--from", str(sources)]
        + ["--db", str(path), "-q"],
        env=kb_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return path


class Server:
    """``kb serve`` in a child process, on a free port of 127.0.0.1."""

    def __init__(self, db_path: Path, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kb", "serve", "--db", str(db_path)]
            + ["--port", str(self.port), "--model", FAKE_MODEL],
            env=kb_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kb serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/-/versions.json", timeout=2).is_success:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"kb serve not ready after {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Reader(threading.Thread):
    """Request the endpoints in turn until ``stop`` is set, recording each result."""

    def __init__(self, base_url: str, number: int, stop: threading.Event):
        super().__init__(name=f"reader-{number}", daemon=True)
        self.base_url = base_url
        self.offset = number
        self.stop_event = stop
        self.requests = 0
        self.failures: list[str] = []
        self.snapshots: list[dict] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            turn = self.offset
            while not self.stop_event.is_set():
                self.read_snapshot(client)
                path = ENDPOINTS[turn % len(ENDPOINTS)]
                self.check(client.get(path), path)
                turn += 1

    def read_snapshot(self, client: httpx.Client) -> None:
        response = client.get(
            "/kb.json", params={"sql": SNAPSHOT_SQL, "_shape": "array"}
        )
        if self.check(response, "snapshot"):
            self.snapshots.append(response.json()[0])

    def check(self, response: httpx.Response, path: str) -> bool:
        self.requests += 1
        text = response.text
        if response.status_code >= 500 or "database is locked" in text:
            self.failures.append(f"{path}: {response.status_code} {text[:300]}")
            return False
        if response.status_code != 200:
            self.failures.append(f"{path}: unexpected {response.status_code}")
            return False
        return True


@pytest.mark.slow
def test_serve_reads_while_ingest_writes(base_kb, tmp_path):
    added = copy_sources(ADDED_SOURCES, tmp_path / "added")
    server = Server(base_kb, tmp_path / "serve.log")
    stop = threading.Event()
    readers = [Reader(server.url, number, stop) for number in range(READERS)]
    try:
        server.wait_ready()
        for reader in readers:
            reader.start()
        ingest = subprocess.run(
            [sys.executable, "-m", "kb", "ingest", "--from", str(added)]
            + ["--db", str(base_kb), "-q"],
            env=kb_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        time.sleep(1)  # a last round of reads after the final commit
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=120)
        server.stop()

    assert ingest.returncode == 0, ingest.stderr[-3000:]
    failures = [failure for reader in readers for failure in reader.failures]
    assert failures == []

    snapshots = [snapshot for reader in readers for snapshot in reader.snapshots]
    assert sum(reader.requests for reader in readers) >= 50
    for snapshot in snapshots:
        assert snapshot["indexed"] == snapshot["posts"]
        assert snapshot["unindexed"] == 0
        assert snapshot["unhashed"] == 0

    # The readers saw the ingest happen, not only its start or its end.
    counts = sorted({snapshot["posts"] for snapshot in snapshots})
    assert len(counts) >= 3
    for reader in readers:
        seen = [snapshot["posts"] for snapshot in reader.snapshots]
        assert seen == sorted(seen)  # posts are never lost, even for a moment


# Imports kb, reports that it is ready, then waits for the start file, so
# that every process opens the new database at the same moment.
OPEN_AT_ONCE = r"""
import os, sys, time
from kb.db import open_db

start, path, ready = sys.argv[1], sys.argv[2], sys.argv[3]
open(ready, "w").close()
while not os.path.exists(start):
    time.sleep(0.001)
open_db(path).close()
"""
OPENERS = 4


@pytest.mark.slow
def test_new_database_opened_at_once(tmp_path):
    from kb.migrations import MIGRATIONS

    for attempt in range(3):
        start = tmp_path / f"start-{attempt}"
        path = tmp_path / f"kb-{attempt}.db"
        ready = [tmp_path / f"ready-{attempt}-{number}" for number in range(OPENERS)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT_ONCE, str(start), str(path), str(flag)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for flag in ready
        ]
        deadline = time.monotonic() + 300
        while not all(flag.exists() for flag in ready):
            assert time.monotonic() < deadline, "the processes did not start"
            time.sleep(0.05)
        start.touch()
        for process in processes:
            _, errors = process.communicate(timeout=300)
            assert process.returncode == 0, errors[-2000:]
        db = open_db(path)
        applied = [row["id"] for row in db.query("select id from kb_migrations")]
        db.close()
        assert applied == [number for number, _, _ in MIGRATIONS]


def fetch_statuses(db_path: Path, paths: list[str]) -> dict[str, int]:
    from kb.serve import build_datasette, start

    datasette = build_datasette(db_path, model=FAKE_MODEL)
    start(datasette)

    async def fetch_all() -> dict[str, int]:
        return {path: (await datasette.client.get(path)).status_code for path in paths}

    return asyncio.run(fetch_all())


@pytest.mark.slow
def test_serve_after_cli_search(tmp_path):
    from serve_fixtures import build_kb

    path = tmp_path / "kb.db"
    build_kb(path)
    search = subprocess.run(
        [sys.executable, "-m", "kb", "search", "failover", "--db", str(path)],
        env=kb_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert search.returncode == 0, search.stderr[-3000:]
    paths = ["/", "/kb", "/kb/posts.json", "/-/kb/search?q=failover"]
    assert fetch_statuses(path, paths) == {path: 200 for path in paths}


def test_not_found_is_cheap(tmp_path):
    from serve_fixtures import build_kb

    from kb.serve import build_datasette, start

    path = tmp_path / "kb.db"
    build_kb(path)
    datasette = build_datasette(path, model=FAKE_MODEL)
    start(datasette)

    async def cpu_seconds(request_path: str, expected: int) -> float:
        await datasette.client.get(request_path)  # warm caches and templates
        started = time.process_time()
        for _ in range(5):
            response = await datasette.client.get(request_path)
            assert response.status_code == expected
        return (time.process_time() - started) / 5

    async def measure() -> tuple[float, float]:
        page = await cpu_seconds("/kb/posts/1", 200)
        missing = await cpu_seconds("/kb/posts/999999", 404)
        return page, missing

    page, missing = asyncio.run(measure())
    assert missing < max(0.05, 5 * page)
