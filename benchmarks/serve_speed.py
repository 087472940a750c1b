"""Measure kb serve: search latency over HTTP under concurrent clients.

For a database of the feed corpus, and for the same database grown to
``--posts`` posts, the script starts ``kb serve`` on 127.0.0.1 and records:

* start-up: from launching the process to its first response, model load included;
* the first search after start-up, on the search page and on the saved query;
* p50 and p95 latency of the search page (``/-/kb/search``, hybrid), of the
  search saved query (``/kb/search.json``) and of the posts_view table page
  with its default facets (``/kb/posts_view.json``), for each count of
  ``--clients`` clients that each send ``--requests`` requests back to back.

The queries come from the search test set (dev-queries.tsv). The grown
database repeats the corpus posts under new links and dates, with their
stored vectors plus a little noise. Keyword and vector search scan as many
rows as in a real database of that size, but the text itself is not new.

Usage::

    python benchmarks/serve_speed.py [--db PATH] [--posts 100000]
        [--clients 1,10] [--requests 20] [--output docs/benchmarks/serve.md]
        [--work FOLDER]

Without --db the corpus is ingested and embedded with the default model first
(``kb ingest --from CORPUS``), which takes several minutes on two cores.

The full run, at the corpus size and at 100,000 posts, from the repository
root, with an embedded database of the corpus::

    python benchmarks/serve_speed.py --db data/kb.db --work /tmp/kb-serve-bench \
        --output docs/benchmarks/serve.md

It copies data/kb.db into the --work folder, grows the copy to 100,000
posts (20 to 40 minutes on two cores, kept in --work for later runs), then
starts ``kb serve`` on each database in turn. The queries come from
``$KB_SHARED/eval/dev-queries.tsv``, by default ``../shared`` next to the
repository.
"""

import argparse
import csv
import importlib.metadata
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import sqlite_utils
from sqlite_utils.utils import sqlite3

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KB_SHARED", REPO.parent / "shared"))
DEFAULT_CORPUS = SHARED / "corpus" / "feeds"
DEFAULT_QUERIES = SHARED / "eval" / "dev-queries.tsv"
START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 120
# Standard deviation of the noise added to each copied vector before it is
# normalised again, so copies of a post are near it but not tied with it.
VECTOR_NOISE = 0.02
COPY_SPACING_DAYS = 7


# Databases ------------------------------------------------------------------


def ingest_corpus(corpus: Path, db_path: Path) -> None:
    """Ingest and embed the corpus with ``kb ingest`` into ``db_path``."""
    subprocess.run(
        [sys.executable, "-m", "kb", "ingest", "-q", "--from", str(corpus)]
        + ["--db", str(db_path)],
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def borrow_vectors(db_path: Path) -> int:
    """Give every post without vectors some borrowed from embedded posts.

    Each such post gets as many chunk vectors as the model would make from its
    text, each a random stored vector plus noise, so the vector scan costs what
    it would after a full ``kb embed``. Returns how many posts borrowed.
    """
    from kb import vectors
    from kb.embed import get_embedder, post_text

    db = sqlite_utils.Database(db_path)
    model, _ = vectors.stored_model(db)
    if model is None:
        raise SystemExit(f"No vectors in {db_path}: run kb embed on it first.")
    embedder = get_embedder(model)
    pool = np.stack(
        [
            np.frombuffer(row[0], dtype="<f4")
            for row in db.execute("select vector from vectors")
        ]
    )
    rng = np.random.default_rng(0)
    missing = db.execute(
        "select id, title, content_text from posts "
        "where id not in (select post_id from post_embeddings)"
    ).fetchall()
    with db.conn:
        for post_id, title, body in missing:
            count = len(embedder.chunk(post_text(title, body))) or 1
            chunks = noisy(pool[rng.integers(0, len(pool), count)], rng)
            post_vector = noisy(chunks.mean(axis=0, keepdims=True), rng)[0]
            vectors.replace_post(db, post_id, model, "borrowed", post_vector, chunks)
    vectors.update_clusters(db)
    db.close()
    return len(missing)


def noisy(matrix: np.ndarray, rng) -> np.ndarray:
    """Return the rows of ``matrix`` plus Gaussian noise, normalised to length 1."""
    moved = matrix + rng.normal(0, VECTOR_NOISE, matrix.shape)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    return moved.astype("<f4")


def grow_database(source: Path, target: Path, posts: int) -> int:
    """Copy ``source`` to ``target`` and repeat its posts up to ``posts`` posts.

    Returns the number of posts in ``target``.
    """
    from kb import vectors

    shutil.copyfile(source, target)
    db = sqlite_utils.Database(target)
    original_ids = [row[0] for row in db.execute("select id from posts order by id")]
    offset = 10 ** len(str(max(original_ids)))
    copies = math.ceil((posts - len(original_ids)) / len(original_ids))
    columns = [name for name in db["posts"].columns_dict if name != "id"]
    stored = load_vectors(db)
    rng = np.random.default_rng(0)
    for copy in range(1, copies + 1):
        # Negative for the last copy when it would overshoot ``posts``.
        short = min(posts - len(original_ids) * (copy + 1), 0)
        chosen = original_ids[: len(original_ids) + short]
        with db.conn:
            copy_posts(db, columns, chosen, copy, offset * copy)
            copy_vectors(db, stored, chosen, offset * copy, rng)
            copy_topics_and_themes(db, chosen, offset * copy)
    vectors.update_clusters(db)
    total = db.execute("select count(*) from posts").fetchone()[0]
    db.close()
    return total


def copy_posts(db, columns: list[str], ids: list[int], copy: int, offset: int):
    """Insert copy number ``copy`` of posts ``ids`` under ids shifted by ``offset``."""
    changed = {
        "url": f"url || '#copy-{copy}'",
        "link": f"link || '#copy-{copy}'",
        "guid": f"guid || '#copy-{copy}'",
        "fingerprint": f"fingerprint || '-{copy}'",
        "content_hash": f"content_hash || '-{copy}'",
        "published": (
            f"strftime('%Y-%m-%dT%H:%M:%S+00:00', published, "
            f"'-{copy * COPY_SPACING_DAYS} days')"
        ),
    }
    selected = ", ".join(changed.get(name, name) for name in columns)
    marks = ", ".join("?" for _ in ids)
    db.execute(
        f"insert into posts (id, {', '.join(columns)}) "
        f"select id + {offset}, {selected} from posts where id in ({marks})",
        ids,
    )


def copy_topics_and_themes(db, ids: list[int], offset: int) -> None:
    """Give the copies of posts ``ids`` the topic and themes of their original.

    The facets of posts_view and the digest queries then group as many posts
    as in a real database of that size.
    """
    marks = ", ".join("?" for _ in ids)
    db.execute(
        "insert into post_topics (post_id, topic_id, score, assigned) "
        f"select post_id + {offset}, topic_id, score, assigned from post_topics "
        f"where post_id in ({marks})",
        ids,
    )
    db.execute(
        "insert into post_themes (post_id, theme, score) "
        f"select post_id + {offset}, theme, score from post_themes "
        f"where post_id in ({marks})",
        ids,
    )


def load_vectors(db) -> dict:
    """Return the stored vectors and embedding rows of every post."""
    rows = db.execute(
        "select post_id, chunk, model, vector from vectors order by id"
    ).fetchall()
    embeddings = db.execute("select * from post_embeddings").fetchall()
    return {"vectors": rows, "embeddings": embeddings}


def copy_vectors(db, stored: dict, ids: list[int], offset: int, rng) -> None:
    """Copy the vectors of posts ``ids`` to their copies, with a little noise."""
    chosen = set(ids)
    rows = []
    for post_id, chunk, model, blob in stored["vectors"]:
        if post_id not in chosen:
            continue
        vector = noisy(np.frombuffer(blob, dtype="<f4")[np.newaxis, :], rng)[0]
        rows.append((post_id + offset, chunk, model, vector.tobytes()))
    db.conn.executemany(
        "insert into vectors (post_id, chunk, model, vector) values (?, ?, ?, ?)", rows
    )
    embeddings = [
        (row[0] + offset, *row[1:]) for row in stored["embeddings"] if row[0] in chosen
    ]
    if embeddings:
        marks = ", ".join("?" for _ in embeddings[0])
        db.conn.executemany(f"insert into post_embeddings values ({marks})", embeddings)


def copy_database(source: Path, target: Path) -> None:
    """Copy a database that another process may be writing, with SQLite's backup."""
    reader, writer = sqlite3.connect(source), sqlite3.connect(target)
    try:
        reader.backup(writer)
    finally:
        reader.close()
        writer.close()


def database_facts(db_path: Path) -> dict:
    db = sqlite_utils.Database(db_path)
    facts = {
        "posts": db.execute("select count(*) from posts").fetchone()[0],
        "vectors": db.execute("select count(*) from vectors").fetchone()[0],
        "size_mb": db_path.stat().st_size / 1e6,
    }
    db.close()
    return facts


# Server and load --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``kb serve`` in a child process on a free port of 127.0.0.1."""

    def __init__(self, db_path: Path, log_path: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kb", "serve", "-d", str(db_path)]
            + ["--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    def wait_until_up(self) -> float:
        """Return the seconds from launch to the first response."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kb serve exited with {self.process.returncode}")
            try:
                response = httpx.get(f"{self.base}/-/versions.json", timeout=5)
                if response.status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"kb serve did not respond within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def endpoints(base: str) -> dict[str, tuple[str, callable]]:
    """Return, per endpoint, a URL and a function from a query to its params."""
    return {
        "search page": (f"{base}/-/kb/search", lambda q: {"q": q}),
        "search saved query": (
            f"{base}/kb/search.json",
            lambda q: {"q": q, "_shape": "array"},
        ),
        # The table page with its four default facets; the query is unused.
        "posts_view table": (
            f"{base}/kb/posts_view.json",
            lambda q: {"_size": 20},
        ),
    }


def timed_get(client: httpx.Client, url: str, params: dict) -> tuple[float, int]:
    """Return the seconds a GET took and its status, 0 when it failed or timed out."""
    start = time.perf_counter()
    try:
        status = client.get(url, params=params).status_code
    except httpx.HTTPError:
        status = 0
    return time.perf_counter() - start, status


def run_load(url, make_params, queries, clients: int, requests: int) -> dict:
    """Send ``requests`` requests from each of ``clients`` threads and return stats."""
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()

    def client_loop(number: int) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            for index in range(requests):
                query = queries[(number * requests + index) % len(queries)]
                seconds, status = timed_get(client, url, make_params(query))
                with lock:
                    latencies.append(seconds)
                    if status != 200:
                        errors.append(status)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": len(latencies),
        "p50_ms": cuts[49] * 1000,
        "p95_ms": cuts[94] * 1000,
        "max_ms": max(latencies) * 1000,
        "per_second": len(latencies) / wall,
        "errors": len(errors),
    }


def measure(
    db_path: Path, queries: list[str], client_counts: list[int], requests: int
) -> dict:
    """Start a server on ``db_path`` and measure start-up, first search and load."""
    server = Server(db_path, db_path.with_suffix(".log"))
    try:
        result = {"startup_s": server.wait_until_up(), "first": {}, "load": {}}
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            for name, (url, make_params) in endpoints(server.base).items():
                seconds, status = timed_get(client, url, make_params(queries[0]))
                result["first"][name] = (seconds * 1000, status)
        for clients in client_counts:
            for name, (url, make_params) in endpoints(server.base).items():
                result["load"][(name, clients)] = run_load(
                    url, make_params, queries, clients, requests
                )
    finally:
        server.stop()
    return result


# Report ----------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    """Describe the machine, its load and the versions the numbers depend on."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    names = ("kb", "datasette", "sqlite-utils", "sentence-transformers", "torch")
    return {
        "CPU": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
        "RAM": f"{pages / 1024**3:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "packages": ", ".join(
            f"{name} {importlib.metadata.version(name)}" for name in names
        ),
    }


def render_report(args, machine, load_before, runs, borrowed: int) -> str:
    lines = [
        "# Serving speed: kb serve under concurrent clients",
        "",
        f"Measured on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with this "
        "command, run from the repository root:",
        "",
        "```",
        " ".join(["python", "benchmarks/serve_speed.py", *sys.argv[1:]]),
        "```",
        "",
        f"With {format_counts(args.clients)} concurrent clients, each client sends "
        f"{args.requests} requests back to back, cycling through the queries of "
        "the search test set. The client threads run on the same machine as the "
        "server. Search is hybrid (keyword and semantic) with the bundled "
        "all-MiniLM-L6-v2 model, and Datasette's SQL time limit is its default, "
        "1,000 ms, for the saved query and the search inside it. Every "
        "posts_view request asks for the same page, so after the first one its "
        "row count and facets come from kb serve's facet cache; the first one "
        "computes them.",
        "",
        describe_borrowed(borrowed),
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items()],
        "- load average (1, 5, 15 min) before the runs: "
        + ", ".join(f"{value:.2f}" for value in load_before),
        "- load average after the runs: "
        + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        "",
        "## Start-up and first search",
        "",
        "| database | posts | vectors | file MB | start-up s | first search page ms "
        "| first saved query ms | first posts_view ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, facts, result in runs:
        firsts = [
            "{:,.0f} (HTTP {})".format(*result["first"][name])
            for name in ("search page", "search saved query", "posts_view table")
        ]
        lines.append(
            f"| {label} | {facts['posts']:,} | {facts['vectors']:,} "
            f"| {facts['size_mb']:,.0f} | {result['startup_s']:.1f} "
            f"| {' | '.join(firsts)} |"
        )
    lines += [
        "",
        "## Latency under load",
        "",
        "| database | endpoint | clients | requests | p50 ms | p95 ms | max ms "
        "| requests/s | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, _, result in runs:
        for (name, clients), stats in result["load"].items():
            lines.append(
                f"| {label} | {name} | {clients} | {stats['requests']} "
                f"| {stats['p50_ms']:,.0f} "
                f"| {stats['p95_ms']:,.0f} | {stats['max_ms']:,.0f} "
                f"| {stats['per_second']:.1f} | {stats['errors']} |"
            )
    return "\n".join(lines) + "\n"


def describe_borrowed(borrowed: int) -> str:
    if not borrowed:
        return (
            "Every corpus post had its own vectors, so no post borrowed any; "
            "relevance is not measured here."
        )
    return (
        f"{borrowed:,} corpus posts had no vectors yet and borrowed stored ones "
        "with noise, as many as their text makes chunks, so the scan costs what "
        "a fully embedded database costs; relevance is not measured here."
    )


def prepare_databases(args, corpus_db: Path, large_db: Path) -> int:
    """Create the corpus and the grown database unless --work already has them.

    Returns how many corpus posts borrowed vectors.
    """
    if large_db.exists():
        print(f"reusing {corpus_db} and {large_db}", flush=True)
        db = sqlite_utils.Database(corpus_db)
        borrowed = db.execute(
            "select count(*) from post_embeddings where text_hash = 'borrowed'"
        ).fetchone()[0]
        db.close()
        return borrowed
    corpus_db.parent.mkdir(parents=True, exist_ok=True)
    large_db.parent.mkdir(parents=True, exist_ok=True)
    if args.db:
        copy_database(args.db, corpus_db)
    else:
        ingest_corpus(args.corpus, corpus_db)
    borrowed = borrow_vectors(corpus_db)
    print(f"{borrowed} posts borrowed vectors", flush=True)
    started = time.perf_counter()
    grow_database(corpus_db, large_db, args.posts)
    print(f"grew the database in {time.perf_counter() - started:.0f}s", flush=True)
    return borrowed


def parse_counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def format_counts(counts: list[int]) -> str:
    return " and ".join(str(count) for count in counts)


def read_queries(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row["query"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="Embedded kb database to serve")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument(
        "--clients",
        type=parse_counts,
        default=[1, 10],
        help="Comma-separated counts of concurrent clients",
    )
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--output", type=Path, help="File for the Markdown report")
    parser.add_argument(
        "--work",
        type=Path,
        help="Folder that keeps the databases, reused when they are there",
    )
    args = parser.parse_args()

    queries = read_queries(args.queries)
    load_before = os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="kb-serve-bench-"))
    corpus_db = work / "corpus" / "kb.db"
    large_db = work / "large" / "kb.db"
    borrowed = prepare_databases(args, corpus_db, large_db)
    runs = []
    for label, path in (("corpus", corpus_db), (f"{args.posts:,} posts", large_db)):
        facts = database_facts(path)
        print(f"measuring {label}: {facts}", flush=True)
        runs.append((label, facts, measure(path, queries, args.clients, args.requests)))
    if not args.work:
        shutil.rmtree(work)
    report = render_report(args, machine_facts(), load_before, runs, borrowed)
    if args.output:
        args.output.write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
