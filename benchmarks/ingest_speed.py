"""Benchmark ``kb ingest`` against feed-to-sqlite on a folder of feed snapshots.

Usage, from the repository root::

    python benchmarks/ingest_speed.py [CORPUS] [--repeat 3] [--output PAGE]

CORPUS is a folder laid out as ``<source>/<YYYY-MM-DD>.xml``. The script
times five things, each in its own child process so that wall time and peak
RSS include interpreter start-up and imports, as a user would see them:

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
    documents: int
    entries: int
    stored: int
    timing: Timing
    # Reruns store nothing new, so a stored-posts rate means nothing there.
    rate_of_stored: bool = True

    def cells(self) -> list[str]:
        seconds = self.timing.median_seconds
        stored_rate = f"{self.stored / seconds:,.0f}" if self.rate_of_stored else "–"
        return [
            self.tool,
            self.run,
            str(self.documents),
            f"{self.entries:,}",
            f"{self.stored:,}",
            self.timing.spread(),
            f"{statistics.median(self.timing.cpu_seconds):.2f}",
            f"{self.entries / seconds:,.0f}",
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
    "CPU s",
    "entries/s",
    "stored posts/s",
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
        # wait4 returns the rusage of this child alone; RUSAGE_CHILDREN
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


def kb_counts(db_path: Path, after_run: int) -> dict:
    """Count what kb processed in the runs after ``after_run``, and what it stores."""
    db = sqlite_utils.Database(db_path)
    try:
        documents, entries, failed = db.execute(
            "SELECT COUNT(*), "
            "COALESCE(SUM(posts_new + posts_updated + posts_unchanged), 0), "
            "COALESCE(SUM(outcome = 'failed'), 0) "
            "FROM fetches WHERE run_id > ?",
            [after_run],
        ).fetchone()
        outcomes = dict(
            db.execute(
                "SELECT outcome, COUNT(*) FROM fetches WHERE run_id > ? "
                "GROUP BY outcome",
                [after_run],
            ).fetchall()
        )
        return {
            "documents": documents,
            "entries": entries,
            "failed": failed,
            "outcomes": outcomes,
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
    rerun = kb_counts(work / "kb-replay-0.db", after_run=before)
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
        rerun = kb_counts(db_path, after_run=before)
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
    """Count the rows feed-to-sqlite stored, across its one-table-per-feed layout."""
    db = sqlite_utils.Database(db_path)
    try:
        tables = [name for name in db.table_names() if name != "feeds"]
        columns = {column for name in tables for column in db[name].columns_dict}
        union = " UNION ALL ".join(f"SELECT link FROM [{name}]" for name in tables)
        rows, links = db.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT link) FROM ({union})"
        ).fetchone()
        return {
            "entry_tables": len(tables),
            "unnamed_tables": sum(1 for name in tables if not name.strip()),
            "rows": rows,
            "distinct_links": links,
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
    """Turn the raw results into table rows, with per-run counts for reruns."""
    rows = []
    labels = {
        "kb_replay": ("kb", "replay {}: `kb ingest --from CORPUS --no-embed`"),
        "kb_fetch": ("kb", "fetch {} from 127.0.0.1: `kb ingest --no-embed`"),
        "feed_to_sqlite": ("feed-to-sqlite", "`ingest_feed` on each file, {}"),
    }
    for key, (tool, run) in labels.items():
        first, loaded, again, rerun = results[key]
        # kb's fetch log sums every rerun; feed-to-sqlite reports one run.
        reruns = len(again.seconds) if key != "feed_to_sqlite" else 1
        stored = loaded.get("posts", loaded.get("rows"))
        rows.append(
            Row(
                tool,
                run.format("first load"),
                loaded["documents"],
                loaded["entries"],
                stored,
                first,
                rate_of_stored=True,
            )
        )
        rows.append(
            Row(
                tool,
                run.format("again, nothing changed"),
                rerun["documents"] // reruns,
                rerun["entries"] // reruns,
                rerun.get("posts", rerun.get("rows")),
                again,
                rate_of_stored=False,
            )
        )
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def results_page(results: dict, facts: dict, table: str) -> str:
    """Build the Markdown results page: numbers, method and what each tool stores."""
    kb_loaded = results["kb_replay"][1]
    kb_rerun = results["kb_replay"][3]
    fetch_loaded, fetch_rerun = results["kb_fetch"][1], results["kb_fetch"][3]
    f2s = results["feed_to_sqlite"][1]
    machine, corpus = facts["machine"], facts["corpus"]
    errors = ", ".join(f"{count} {name}" for name, count in f2s["errors"].items())
    lines = [
        "# Ingest speed: kb against feed-to-sqlite",
        "",
        f"Measured on {facts['date']} with this command, run from the repository root:",
        "",
        "```",
        facts["command"],
        "```",
        "",
        f"CORPUS is a folder of real feed snapshots laid out as "
        f"`<source>/<YYYY-MM-DD>.xml`: {corpus['sources']} sources, "
        f"{corpus['files']} files, {corpus['bytes']}, dated {corpus['dates']}. "
        "The script's default is the project's shared corpus.",
        "",
        "## Machine",
        "",
        *[f"- {name}: {value}" for name, value in machine.items()],
        "",
        "## Results",
        "",
        table,
        "",
        "A document is one snapshot file (replay, feed-to-sqlite) or one feed URL "
        "(fetch). Entries processed counts the entries of the documents each tool "
        "accepted. Wall time runs from process start to exit, so it includes "
        "interpreter start-up and imports. Peak RSS is the largest `ru_maxrss` "
        "of the runs, read with `wait4`.",
        "",
        "## What each tool stores",
        "",
        f"- kb stored {kb_loaded['posts']:,} posts ({kb_loaded['distinct_urls']:,} "
        f"distinct canonical URLs) from {kb_loaded['entries']:,} entries in "
        f"{kb_loaded['documents']} documents; {kb_loaded['failed']} documents "
        f"failed to parse. {kb_loaded['with_content_html']:,} posts carry "
        "sanitised HTML content next to the plain text, the FTS5 index "
        f"`posts_fts` holds {kb_loaded['fts_rows']:,} rows, and the fetch log "
        f"holds {kb_loaded['fetch_log_rows']} rows. Posts are matched by guid, "
        "then canonical link, then a title and date hash, so a source that "
        "rewrites its guids does not duplicate its posts.",
        f"- feed-to-sqlite stored {f2s['rows']:,} rows ({f2s['distinct_links']:,} "
        f"distinct links) in {f2s['entry_tables']} tables, one per feed title; "
        f"{f2s['unnamed_tables']} of them has an empty name because its feed has "
        "no title, and sources that share a title share a table. It rejected "
        f"{f2s['failed']} of {f2s['documents']} files ({errors}): an entry "
        "without a guid has no primary key, and the whole file is lost. Its "
        f"entry columns are {', '.join(f'`{name}`' for name in f2s['columns'])}: "
        "no full content, no author, and no full-text index "
        f"({f2s['fts_tables']} FTS tables). Rows are keyed by guid alone, so "
        f"{f2s['rows'] - f2s['distinct_links']:,} rows repeat a link that "
        "another row already has.",
        "",
        "## No-change runs",
        "",
        f"- kb replay: every document's bytes hash to a body already logged, "
        f"so kb skips parsing it ({kb_rerun['outcomes']}).",
        f"- kb fetch: the local server answered {fetch_loaded['http']} on the "
        f"first run and {fetch_rerun['http']} over the no-change runs, so "
        "each feed costs one conditional GET and one fetch log row.",
        "- feed-to-sqlite has no change detection: it parses every file again "
        "and upserts every row.",
        "",
        "## Method",
        "",
        "Each figure comes from its own child process. kb runs through its "
        "console script with `-q`. feed-to-sqlite's CLI takes only URLs and "
        "stops at the first feed that raises, so the script calls its "
        "`ingest_feed(db, feed_content=...)` on each file's bytes, in kb's "
        "replay order (date, then source), and counts rejected files. The "
        "fetch runs use a server on 127.0.0.1 that serves the newest snapshot "
        "of each source with an ETag and a Last-Modified date and answers "
        "conditional requests with 304. Each timing is the median of "
        f"{facts['repeat']} runs, except that a command slower than "
        f"{facts['long_run']:.0f} s runs once; the first fetch always runs "
        "once, since later fetches find the feeds already stored.",
        "",
    ]
    return "\n".join(lines)


def run_benchmark(corpus: Path, repeat: int, long_run: float) -> dict:
    """Run every measurement in a temporary folder and return the raw results."""
    steps = {
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
    shown = ["python", "benchmarks/ingest_speed.py"]
    for arg in argv:
        if Path(arg).resolve() != DEFAULT_CORPUS.resolve():
            shown.append(arg)
    return shlex.join(shown)


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
    facts["machine"]["load average (1, 5, 15 min)"] = (
        f"{format_load(load_before)} before the runs, "
        f"{format_load(os.getloadavg())} after"
    )
    table = markdown_table(result_rows(results))
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(results_page(results, facts, table))
    print(f"Wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
