"""Benchmark ``kb ingest`` against feed-to-sqlite on a folder of feed snapshots.

Usage, from the repository root::

    python benchmarks/ingest_speed.py [CORPUS] [--repeat 3] [--output PAGE]

CORPUS is a folder laid out as ``<source>/<YYYY-MM-DD>.xml``. The script
times these commands, each in its own child process so that wall time and
peak RSS include interpreter start-up and imports, as a user would see them:

0. each tool's start-up alone, ``kb --version`` and the feed-to-sqlite
   driver on no files, to subtract from the rest;
1. ``kb ingest --from CORPUS --no-embed`` into a new database, replaying
   every snapshot in date order;
2. the same command again on the same database, where nothing changed;
3. feed-to-sqlite loading the same files in the same order, into a new
   database, through its ``ingest_feed`` function;
4. the same feed-to-sqlite load again on that database;
5. ``kb ingest --no-embed`` in fetch mode against a server on 127.0.0.1 that
   serves the latest snapshot of each source with ETag and Last-Modified,
   first to fill a new database, then again so every request gets a 304.

It prints a Markdown table and writes the results page (default
docs/benchmarks/ingest.md) with the machine, the corpus and what each tool
stored, counted in the databases the runs left behind.
"""

import argparse
import email.utils
import hashlib
import http.server
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import sqlite_utils
from sqlite_utils.utils import sqlite3

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "feeds"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks" / "ingest.md"
KB = Path(sys.executable).parent / "kb"
LOCALHOST = "127.0.0.1"
# Child processes must reach 127.0.0.1 directly, never through a proxy that
# the environment may name.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


@dataclass
class Timing:
    """Repeated runs of one command: wall and CPU seconds, peak RSS in KiB."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_cpu_seconds(self) -> float:
        return statistics.median(self.cpu_seconds)

    @property
    def max_rss_mib(self) -> float:
        return max(self.peak_rss_kib) / 1024

    def spread(self) -> str:
        """Return "median (min–max, n=N)" or the single value, in seconds."""
        if len(self.seconds) == 1:
            return f"{self.seconds[0]:.2f} (n=1)"
        low, high = min(self.seconds), max(self.seconds)
        return (
            f"{self.median_seconds:.2f} ({low:.2f}–{high:.2f}, n={len(self.seconds)})"
        )


@dataclass
class Row:
    """One line of the results table."""

    tool: str
    run: str
    timing: Timing
    documents: int = 0
    entries: int = 0
    # Rows in the database after the run, None for a start-up row.
    stored: int | None = None
    # Only a first load adds the stored rows, so only it gets a stored-posts rate.
    is_first_load: bool = False

    def cells(self) -> list[str]:
        wall = self.timing.median_seconds
        cpu = self.timing.median_cpu_seconds
        stored_rate = "–"
        if self.is_first_load and self.stored:
            stored_rate = f"{self.stored / wall:,.0f} / {self.stored / cpu:,.0f}"
        return [
            self.tool,
            self.run,
            str(self.documents) if self.documents else "–",
            f"{self.entries:,}" if self.documents else "–",
            f"{self.stored:,}" if self.stored is not None else "–",
            self.timing.spread(),
            f"{cpu:.2f}",
            f"{self.entries / wall:,.0f}" if self.entries else "–",
            stored_rate,
            f"{self.timing.max_rss_mib:.0f}",
        ]


HEADER = [
    "tool",
    "run",
    "documents",
    "entries processed",
    "rows stored",
    "wall s: median (min–max, n)",
    "CPU s (median)",
    "entries/s (wall)",
    "stored posts/s (wall / CPU)",
    "peak RSS MiB",
]


# -- running and timing child processes ---------------------------------------


def run_child(
    argv: list[str], *, stdin: str = "", accepted=(0,)
) -> tuple[float, resource.struct_rusage, str]:
    """Run ``argv`` and return its wall seconds, resource usage and stdout.

    Raises RuntimeError, with the command's stderr, when its exit status is
    not in ``accepted``.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in PROXY_VARIABLES
    }
    env.update(NO_PROXY=LOCALHOST, HF_HUB_OFFLINE="1")
    with (
        tempfile.TemporaryFile() as input_file,
        tempfile.TemporaryFile() as stdout,
        tempfile.TemporaryFile() as stderr,
    ):
        input_file.write(stdin.encode())
        input_file.seek(0)
        started = time.perf_counter()
        child = subprocess.Popen(
            argv, stdin=input_file, stdout=stdout, stderr=stderr, env=env
        )
        # wait4 returns the rusage of this child alone, whereas RUSAGE_CHILDREN
        # would report the maximum over every child waited for so far.
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read().decode(), stderr.read().decode()
    if child.returncode not in accepted:
        raise RuntimeError(
            f"{shlex.join(argv)} exited with status {child.returncode}:\n{errors}"
        )
    return seconds, usage, output


def time_runs(
    command: Callable[[int], list[str]], repeat: int, long_run: float, **kwargs
) -> tuple[Timing, str]:
    """Run ``command(i)`` for i in 0..repeat-1 and return the timings and first stdout.

    Stops after the first run that takes longer than ``long_run`` seconds, so
    slow runs are measured once and the whole benchmark stays short.
    """
    timing = Timing()
    first_output = None
    for index in range(repeat):
        seconds, usage, output = run_child(command(index), **kwargs)
        timing.seconds.append(seconds)
        timing.cpu_seconds.append(usage.ru_utime + usage.ru_stime)
        # On Linux ru_maxrss is in KiB.
        timing.peak_rss_kib.append(usage.ru_maxrss)
        first_output = output if first_output is None else first_output
        if seconds > long_run:
            break
    return timing, first_output


def kb_ingest(db_path: Path, corpus: Path | None) -> list[str]:
    """Return the ``kb ingest`` command line: replay ``corpus``, or fetch when None."""
    argv = [str(KB), "ingest", "--no-embed", "-q", "--db", str(db_path)]
    if corpus is not None:
        argv += ["--from", str(corpus)]
    return argv


# -- kb ------------------------------------------------------------------------


def last_run_id(db_path: Path) -> int:
    db = sqlite_utils.Database(db_path)
    try:
        return db.execute("SELECT COALESCE(MAX(id), 0) FROM runs").fetchone()[0]
    finally:
        db.close()


def kb_counts(db_path: Path, after_run: int, commands: int = 1) -> dict:
    """Count what kb processed in the runs after ``after_run``, and what it stores.

    The fetch log counts are divided by ``commands``, the number of identical
    ``kb ingest`` commands that made those runs, to give the counts of one.
    """
    db = sqlite_utils.Database(db_path)
    try:
        documents, entries, failed = db.execute(
            "SELECT COUNT(*), "
            "COALESCE(SUM(posts_new + posts_updated + posts_unchanged), 0), "
            "COALESCE(SUM(outcome = 'failed'), 0) "
            "FROM fetches WHERE run_id > ?",
            [after_run],
        ).fetchone()
        outcomes = db.execute(
            "SELECT outcome, COUNT(*) FROM fetches WHERE run_id > ? GROUP BY outcome",
            [after_run],
        ).fetchall()
        return {
            "documents": documents // commands,
            "entries": entries // commands,
            "failed": failed // commands,
            "outcomes": {outcome: count // commands for outcome, count in outcomes},
            "posts": db["posts"].count,
            "distinct_urls": scalar(db, "SELECT COUNT(DISTINCT url) FROM posts"),
            "with_content_html": scalar(
                db, "SELECT COUNT(*) FROM posts WHERE content_html != ''"
            ),
            "fts_rows": scalar(db, "SELECT COUNT(*) FROM posts_fts_docsize"),
            "feeds": db["feeds"].count,
            "fetch_log_rows": db["fetches"].count,
        }
    finally:
        db.close()


def scalar(db: sqlite_utils.Database, sql: str):
    return db.execute(sql).fetchone()[0]


def bench_kb_replay(corpus: Path, work: Path, repeat: int, long_run: float):
    """Time a full replay into new databases, then no-change reruns of the first."""

    def into_new_db(index: int) -> list[str]:
        return kb_ingest(work / f"kb-replay-{index}.db", corpus)

    def into_first_db(index: int) -> list[str]:
        return kb_ingest(work / "kb-replay-0.db", corpus)

    # Exit status 1 means some documents failed, which the counts report.
    first, _ = time_runs(into_new_db, repeat, long_run, accepted=(0, 1))
    loaded = kb_counts(work / "kb-replay-0.db", after_run=0)
    before = last_run_id(work / "kb-replay-0.db")
    again, _ = time_runs(into_first_db, repeat, long_run, accepted=(0, 1))
    rerun = kb_counts(work / "kb-replay-0.db", before, commands=len(again.seconds))
    return first, loaded, again, rerun


# -- kb in fetch mode, against a local server -----------------------------------


class SnapshotServer:
    """Serve one document per source on 127.0.0.1 with ETag and Last-Modified.

    The server responds with 304 when If-None-Match names the current ETag, or,
    without If-None-Match, when If-Modified-Since is not older than the
    document, and counts the status codes it sends.
    """

    def __init__(self, documents: dict[str, tuple[bytes, datetime]]):
        self.documents = documents
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()
        handler = type("Handler", (SnapshotHandler,), {"snapshots": self})
        self.httpd = http.server.ThreadingHTTPServer((LOCALHOST, 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.httpd.server_port}/"

    def __enter__(self) -> "SnapshotServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def take_statuses(self) -> Counter:
        with self.lock:
            statuses, self.statuses = self.statuses, Counter()
        return statuses


class SnapshotHandler(http.server.BaseHTTPRequestHandler):
    snapshots: SnapshotServer

    def do_GET(self) -> None:
        document = self.snapshots.documents.get(self.path.lstrip("/"))
        if document is None:
            self.send_status(404)
            self.end_headers()
            return
        body, modified = document
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        last_modified = email.utils.format_datetime(modified, usegmt=True)
        if self.is_not_modified(etag, modified):
            self.send_status(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_status(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        self.end_headers()
        self.wfile.write(body)

    def is_not_modified(self, etag: str, modified: datetime) -> bool:
        # RFC 9110 section 13.2.2: If-None-Match, when present, decides alone.
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return etag in tags or "*" in tags
        since = self.headers.get("If-Modified-Since")
        if since is None:
            return False
        try:
            return modified <= email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False

    def send_status(self, code: int) -> None:
        with self.snapshots.lock:
            self.snapshots.statuses[code] += 1
        self.send_response(code)

    def log_message(self, format, *args) -> None:  # noqa: A002 (base class name)
        pass


def latest_documents(corpus: Path) -> dict[str, tuple[bytes, datetime]]:
    """Map ``<slug>.xml`` to the bytes and date of each source's newest snapshot."""
    latest = {}
    for snapshot in snapshot_plan(corpus):
        moment = datetime.fromisoformat(snapshot.date).replace(tzinfo=timezone.utc)
        latest[f"{snapshot.slug}.xml"] = (Path(snapshot.location).read_bytes(), moment)
    return latest


def register_local_feeds(db_path: Path, server: SnapshotServer) -> None:
    """Create the database with one feed per served document, and nothing else."""
    from kb.db import open_db
    from kb.feeds import add_feed

    db = open_db(db_path)
    try:
        for name in sorted(server.documents):
            add_feed(db, server.base_url + name, slug=name.removesuffix(".xml"))
        urls = [row[0] for row in db.execute("SELECT url FROM feeds").fetchall()]
    finally:
        db.close()
    # Fetch mode requests every active feed, so the database must list only
    # the local server. An ingest on an empty feeds table would seed it with
    # the bundled list of public sources.
    foreign = [url for url in urls if not url.startswith(server.base_url)]
    if foreign or len(urls) != len(server.documents):
        raise RuntimeError(f"{db_path}: feeds other than {server.base_url}: {foreign}")


def bench_kb_fetch(corpus: Path, work: Path, repeat: int, long_run: float):
    """Time a first fetch of every feed from 127.0.0.1, then no-change refetches."""
    db_path = work / "kb-fetch.db"

    def fetch(index: int) -> list[str]:
        return kb_ingest(db_path, None)

    with SnapshotServer(latest_documents(corpus)) as server:
        register_local_feeds(db_path, server)
        first, _ = time_runs(fetch, 1, long_run, accepted=(0, 1))
        loaded = kb_counts(db_path, after_run=0)
        loaded["http"] = dict(server.take_statuses())
        before = last_run_id(db_path)
        again, _ = time_runs(fetch, repeat, long_run, accepted=(0, 1))
        rerun = kb_counts(db_path, before, commands=len(again.seconds))
        rerun["http"] = dict(server.take_statuses())
    return first, loaded, again, rerun


# -- feed-to-sqlite --------------------------------------------------------------


def snapshot_plan(corpus: Path) -> list:
    """Return kb's replay plan for ``corpus`` as one list, oldest date first.

    Raises RuntimeError when a file is not named by date, because then the
    two tools would not see the same nights.
    """
    from kb.ingest import plan_replay

    snapshots = []
    for _, night in plan_replay([str(corpus)]):
        undated = [snapshot.location for snapshot in night if not snapshot.date]
        if undated:
            raise RuntimeError(
                f"{corpus}: files not named <YYYY-MM-DD>.xml: {', '.join(undated)}"
            )
        snapshots.extend(night)
    return snapshots


def load_with_feed_to_sqlite(db_path: Path, paths: list[Path]) -> dict:
    """Load ``paths`` in order with feed-to-sqlite's ``ingest_feed``.

    feed-to-sqlite's CLI takes only URLs and stops at the first feed that
    raises, so this calls its Python function on each file's bytes and
    counts the files it rejects instead of stopping. Entries are counted
    through its ``normalize`` hook, which it calls once per parsed entry.
    """
    from feed_to_sqlite import ingest_feed
    from feed_to_sqlite.ingest import extract_entry_fields

    seen = Counter()

    def count_entry(table, entry, feed, client=None):
        seen["entries"] += 1
        return extract_entry_fields(table, entry, feed, client)

    db = sqlite_utils.Database(db_path)
    summary = {"documents": 0, "entries": 0, "failed": 0, "errors": Counter()}
    for path in paths:
        summary["documents"] += 1
        seen.clear()
        try:
            ingest_feed(db, feed_content=path.read_bytes(), normalize=count_entry)
        # feed-to-sqlite lets any error of its own code or of sqlite-utils
        # escape, for example PrimaryKeyRequired for an entry without a
        # guid, so any exception marks the file as rejected.
        except Exception as error:  # noqa: BLE001
            summary["failed"] += 1
            summary["errors"][type(error).__name__] += 1
        else:
            summary["entries"] += seen["entries"]
    db.close()
    return summary


def feed_to_sqlite_counts(db_path: Path) -> dict:
    """Count the rows feed-to-sqlite stored, across its one-table-per-feed layout.

    Links are also counted after kb's URL canonicalisation, which shows the
    rows that a publisher's rewritten guids and links (``/issue-351/``
    becoming ``/issue-351``) added for articles already stored.
    """
    from kb.parse import canonical_url

    db = sqlite_utils.Database(db_path)
    try:
        tables = [name for name in db.table_names() if name != "feeds"]
        columns = {column for name in tables for column in db[name].columns_dict}
        union = " UNION ALL ".join(f"SELECT link FROM [{name}]" for name in tables)
        links = [row[0] for row in db.execute(union).fetchall()]
        return {
            "entry_tables": len(tables),
            "unnamed_tables": sum(1 for name in tables if not name.strip()),
            "rows": len(links),
            "distinct_links": len(set(links)),
            "distinct_canonical_links": len(
                {canonical_url(link) for link in links if link}
            ),
            "columns": sorted(columns),
            "fts_tables": sum(1 for name in db.table_names() if "_fts" in name),
        }
    finally:
        db.close()


def feed_to_sqlite_command(db_path: Path) -> list[str]:
    """Return the command that loads the paths given on stdin with feed-to-sqlite."""
    script = str(Path(__file__).resolve())
    return [sys.executable, script, "--load-with-feed-to-sqlite", str(db_path)]


def bench_feed_to_sqlite(corpus: Path, work: Path, repeat: int, long_run: float):
    """Time feed-to-sqlite loading every snapshot into a new database, then again."""
    paths = "".join(f"{snapshot.location}\n" for snapshot in snapshot_plan(corpus))

    def into_new_db(index: int) -> list[str]:
        return feed_to_sqlite_command(work / f"feed-to-sqlite-{index}.db")

    def into_first_db(index: int) -> list[str]:
        return feed_to_sqlite_command(work / "feed-to-sqlite-0.db")

    first, output = time_runs(into_new_db, repeat, long_run, stdin=paths)
    loaded = {
        **json.loads(output),
        **feed_to_sqlite_counts(work / "feed-to-sqlite-0.db"),
    }
    again, output = time_runs(into_first_db, repeat, long_run, stdin=paths)
    rerun = {
        **json.loads(output),
        **feed_to_sqlite_counts(work / "feed-to-sqlite-0.db"),
    }
    return first, loaded, again, rerun


# -- the report ------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    """Describe the machine and the software versions the numbers depend on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    meminfo = Path("/proc/meminfo").read_text().split()
    ram_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2
    versions = {
        name: importlib.metadata.version(name)
        for name in ("kb", "feed-to-sqlite", "feedparser", "sqlite-utils", "httpx")
    }
    return {
        "CPU": models[0] if models else platform.processor() or "unknown",
        "nproc": str(len(os.sched_getaffinity(0))),
        "RAM": f"{ram_gib:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "SQLite": f"{sqlite3.sqlite_version} (through {sqlite3.__name__})",
        "packages": ", ".join(
            f"{name} {version}" for name, version in versions.items()
        ),
    }


def format_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


def corpus_facts(corpus: Path) -> dict[str, str]:
    snapshots = snapshot_plan(corpus)
    sizes = sum(Path(snapshot.location).stat().st_size for snapshot in snapshots)
    return {
        "sources": str(len({snapshot.slug for snapshot in snapshots})),
        "files": str(len(snapshots)),
        "bytes": f"{sizes / 1e6:.1f} MB",
        "dates": f"{snapshots[0].date} to {snapshots[-1].date}",
    }


def result_rows(results: dict) -> list[Row]:
    """Turn the raw results into table rows, each tool's start-up first."""
    runs = {
        "kb": [("kb_replay", "replay"), ("kb_fetch", "fetch from 127.0.0.1")],
        "feed-to-sqlite": [("feed_to_sqlite", "load files")],
    }
    start_up = {
        "kb": "start-up only: `kb --version`",
        "feed-to-sqlite": "start-up only",
    }
    rows = []
    for tool, steps in runs.items():
        rows.append(Row(tool, start_up[tool], results["start_up"][tool]))
        for key, name in steps:
            first, loaded, again, rerun = results[key]
            rows.append(
                Row(
                    tool,
                    f"{name}, first load",
                    first,
                    loaded["documents"],
                    loaded["entries"],
                    stored_rows(loaded),
                    is_first_load=True,
                )
            )
            rows.append(
                Row(
                    tool,
                    f"{name}, no change",
                    again,
                    rerun["documents"],
                    rerun["entries"],
                    stored_rows(rerun),
                )
            )
    return rows


def stored_rows(counts: dict) -> int:
    """Return the posts kb stores, or the entry rows feed-to-sqlite stores."""
    return counts["posts"] if "posts" in counts else counts["rows"]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """Return "1 row" or "2 rows"; ``nouns`` is the plural when "s" is wrong."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def statuses_text(statuses: dict) -> str:
    """Format ``{200: 32}`` as "32 × 200"."""
    return ", ".join(f"{count} × {code}" for code, count in sorted(statuses.items()))


def results_page(results: dict, facts: dict, table: str) -> str:
    """Build the Markdown results page: numbers, method and what each tool stores."""
    sections = [
        page_header(facts),
        "## Results",
        table,
        "A document is one snapshot file (replay, feed-to-sqlite) or one feed URL "
        "(fetch). Entries processed counts the entries in the documents each tool "
        "accepted. Wall time runs from process start to exit, so it includes "
        "interpreter start-up and imports, which the start-up rows measure alone. "
        "CPU s is user plus system time of the process. Peak RSS is the largest "
        "`ru_maxrss` of the runs, read with `wait4`." + load_note(facts),
        "## Net of start-up",
        net_text(results),
        "## What each tool stores",
        stored_text(results),
        "## No-change runs",
        no_change_text(results),
        "## Method",
        method_text(facts),
    ]
    return "\n\n".join(sections) + "\n"


def page_header(facts: dict) -> str:
    corpus = facts["corpus"]
    machine = "\n".join(
        f"- {name}: {value}" for name, value in facts["machine"].items()
    )
    return (
        "# Ingest speed: kb against feed-to-sqlite\n\n"
        f"Measured on {facts['date']} with this command, run from the repository "
        f"root:\n\n```\n{facts['command']}\n```\n\n"
        "CORPUS (the first argument) is a folder of real feed snapshots laid out as "
        f"`<source>/<YYYY-MM-DD>.xml`: {corpus['sources']} sources, "
        f"{corpus['files']} files, {corpus['bytes']}, dated {corpus['dates']}. "
        "Its default is the project's shared corpus.\n\n"
        f"## Machine\n\n{machine}"
    )


def stored_text(results: dict) -> str:
    kb = results["kb_replay"][1]
    f2s = results["feed_to_sqlite"][1]
    errors = ", ".join(f"{count} {name}" for name, count in f2s["errors"].items())
    columns = ", ".join(f"`{name}`" for name in f2s["columns"])
    repeated_links = f2s["rows"] - f2s["distinct_links"]
    kb_text = (
        f"- kb stored {plural(kb['posts'], 'post')} "
        f"({kb['distinct_urls']:,} distinct canonical URLs) from "
        f"{plural(kb['entries'], 'entry', 'entries')} in "
        f"{plural(kb['documents'], 'document')}, "
        f"and {plural(kb['failed'], 'document')} failed to parse. "
        f"{kb['with_content_html']:,} posts carry sanitised HTML content next to "
        f"the plain text, the FTS5 index `posts_fts` has {kb['fts_rows']:,} rows, "
        f"and the fetch log has {kb['fetch_log_rows']:,} rows. Posts are matched "
        "by guid, then canonical link, then a hash of title and date, so a source "
        "that rewrites its guids does not duplicate its posts."
    )
    f2s_text = (
        f"- feed-to-sqlite stored {plural(f2s['rows'], 'row')} "
        f"({f2s['distinct_links']:,} distinct links) in "
        f"{plural(f2s['entry_tables'], 'table')}, one per feed title, so sources "
        "that share a title share a table, and a feed without a title gets a "
        f"table named by the empty string ({f2s['unnamed_tables']} here). "
        "It rejected "
        f"{f2s['failed']} of {f2s['documents']} files ({errors}) because an entry "
        "without a guid has no primary key, and then the whole file is lost. Its "
        f"entry columns are {columns}, so it keeps no full content, no author and "
        f"no full-text index ({plural(f2s['fts_tables'], 'FTS table')}). "
        "An article carried by two feeds gets a row in each feed's table, so "
        f"{plural(repeated_links, 'row')} repeat a link that another row has. "
        "Rows are keyed by guid alone, so a publisher that rewrites its guids "
        "and links adds a row per rewrite: after kb's URL canonicalisation the "
        f"rows hold {f2s['distinct_canonical_links']:,} distinct links."
    )
    return kb_text + "\n" + f2s_text


def load_note(facts: dict) -> str:
    """Warn, when other jobs kept the CPUs busy, that wall times include waiting."""
    if max(facts["loads"]) <= len(os.sched_getaffinity(0)):
        return ""
    return (
        " The 1-minute load average was above nproc during the runs because other "
        "jobs shared the machine, so wall times include time spent waiting for a "
        "CPU and vary from run to run. Compare tools by CPU s."
    )


def net_text(results: dict) -> str:
    """List each run's CPU time beyond its tool's start-up, with the rates."""
    lines = []
    for row in result_rows(results):
        if not row.documents:
            continue
        start_up = results["start_up"][row.tool].median_cpu_seconds
        net = row.timing.median_cpu_seconds - start_up
        if net < 0:
            # Run-to-run noise can make a no-op run cheaper than start-up.
            lines.append(
                f"- {row.tool}, {row.run}: no CPU time measurable beyond start-up "
                f"(median difference {net:.2f} s)."
            )
            continue
        line = f"- {row.tool}, {row.run}: {net:.2f} CPU s beyond start-up"
        if row.is_first_load and net > 0:
            line += (
                f", {row.entries / net:,.0f} entries and "
                f"{row.stored / net:,.0f} stored rows per CPU second"
            )
        lines.append(line + ".")
    return "\n".join(lines)


def no_change_text(results: dict) -> str:
    replay = results["kb_replay"][3]
    fetch_first, fetch_again = results["kb_fetch"][1], results["kb_fetch"][3]
    reruns = len(results["kb_fetch"][2].seconds)
    outcomes = ", ".join(
        f"{count} {name}" for name, count in replay["outcomes"].items()
    )
    return (
        "- kb replay: each document's bytes hash to a body that the fetch log "
        f"already has, so kb skips parsing it (outcomes: {outcomes}).\n"
        f"- kb fetch: the local server sent {statuses_text(fetch_first['http'])} "
        f"on the first run and {statuses_text(fetch_again['http'])} over "
        f"{plural(reruns, 'no-change run')}, so each feed costs one conditional "
        "GET and one fetch log row.\n"
        "- feed-to-sqlite has no change detection: it parses every file again "
        "and upserts every row."
    )


def method_text(facts: dict) -> str:
    return (
        "Each figure comes from its own child process. kb runs through its "
        "console script, `kb ingest --from CORPUS --no-embed -q --db NEW.db` for "
        "replay and `kb ingest --no-embed -q --db NEW.db` for fetch, after "
        "`kb.feeds.add_feed` registered one local URL per source. feed-to-sqlite's "
        "CLI takes only URLs and stops at the first feed that raises, so a small "
        "driver calls its `ingest_feed(db, feed_content=...)` on each file's "
        "bytes, in kb's replay order (date, then source), and counts the files "
        "it rejects. Its start-up row runs that driver on no files. The fetch "
        "runs use a server on 127.0.0.1 that serves the newest snapshot of each "
        "source with an ETag and a Last-Modified date and responds to "
        "conditional requests with 304. They store fewer posts than the replay, "
        "which reads every snapshot. The server runs in a thread of the "
        "benchmark process, so its CPU time is not in the CPU s column. "
        "Each timing is the median "
        f"of {plural(facts['repeat'], 'run')}, except that a command slower than "
        f"{facts['long_run']:.0f} s runs once. The first fetch always runs "
        "once, because later fetches find the feeds already stored."
    )


def bench_start_up(corpus: Path, work: Path, repeat: int, long_run: float):
    """Time each tool's fixed cost: kb's CLI start-up and the driver on no files."""

    def kb_version(index: int) -> list[str]:
        return [str(KB), "--version"]

    def empty_load(index: int) -> list[str]:
        return feed_to_sqlite_command(work / "feed-to-sqlite-empty.db")

    return {
        "kb": time_runs(kb_version, repeat, long_run)[0],
        "feed-to-sqlite": time_runs(empty_load, repeat, long_run)[0],
    }


def run_benchmark(corpus: Path, repeat: int, long_run: float) -> dict:
    """Run every measurement in a temporary folder and return the raw results."""
    steps = {
        "start_up": bench_start_up,
        "kb_replay": bench_kb_replay,
        "feed_to_sqlite": bench_feed_to_sqlite,
        "kb_fetch": bench_kb_fetch,
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="kb-ingest-bench-") as work:
        for name, step in steps.items():
            started = time.perf_counter()
            results[name] = step(corpus, Path(work), repeat, long_run)
            print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return results


def shown_command(argv: list[str]) -> str:
    """Return the command line as run, leaving out a CORPUS equal to the default."""
    words = ["python", "benchmarks/ingest_speed.py"]
    for arg in argv:
        if Path(arg).resolve() != DEFAULT_CORPUS.resolve():
            words.append(arg)
    return shlex.join(words)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "corpus",
        nargs="?",
        type=Path,
        default=DEFAULT_CORPUS,
        help="folder of <source>/<YYYY-MM-DD>.xml snapshots (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per timing (default: %(default)s)"
    )
    parser.add_argument(
        "--long-run",
        type=float,
        default=30.0,
        help="seconds after which a command is not repeated (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="results page to write (default: %(default)s)",
    )
    # Internal: the child process that feed-to-sqlite's timings measure.
    parser.add_argument("--load-with-feed-to-sqlite", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.load_with_feed_to_sqlite:
        paths = [Path(line) for line in sys.stdin.read().splitlines() if line]
        print(
            json.dumps(load_with_feed_to_sqlite(args.load_with_feed_to_sqlite, paths))
        )
        return
    if not args.corpus.is_dir():
        sys.exit(f"Corpus folder not found: {args.corpus}\nPass the snapshot folder.")
    facts = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shown_command(argv),
        "machine": machine_facts(),
        "corpus": corpus_facts(args.corpus),
        "repeat": args.repeat,
        "long_run": args.long_run,
    }
    load_before = os.getloadavg()
    results = run_benchmark(args.corpus, args.repeat, args.long_run)
    load_after = os.getloadavg()
    facts["loads"] = (load_before[0], load_after[0])
    facts["machine"]["load average (1, 5, 15 min)"] = (
        f"{format_load(load_before)} before the runs, {format_load(load_after)} after"
    )
    table = markdown_table(result_rows(results))
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(results_page(results, facts, table))
    print(f"Wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
