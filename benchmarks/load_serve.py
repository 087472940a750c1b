"""Load ``kb serve`` with concurrent readers and report errors and latency.

Usage, from the repository root::

    python benchmarks/load_serve.py --db data/kb.db [--requests 2000]
        [--concurrency 16] [--model NAME] [--queries FILE.tsv]
        [--ingest-from PATH] [--json]

The script starts ``kb serve`` on a free port of 127.0.0.1 as a child
process, waits until it responds, and sends ``--requests`` requests from
``--concurrency`` threads, each with its own keep-alive connection. The
requests cycle through a fixed mix: keyword and hybrid searches through the
``search`` saved query, the search page, post pages, the posts_view table,
the daily digest and the feed_health query. An error is a failed connection,
a status of 500 or more, or a body that mentions "database is locked".

With ``--ingest-from PATH`` it also runs ``kb ingest --from PATH --no-embed``
on the same database while the load runs, so the readers meet a writer;
give it a copy of the database, since the ingest changes it.

It prints the machine, the command, and a Markdown table of requests,
errors and latency percentiles per kind of request. The client threads run
on the same machine as the server and take CPU from it.
"""

import argparse
import csv
import itertools
import json
import os
import platform
import random
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx

LOCALHOST = "127.0.0.1"
# The server and the ingest must talk to 127.0.0.1 directly, never through a
# proxy that the environment names.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
DEFAULT_QUERIES = [
    "multi-AZ failover",
    "rate limiting at the edge",
    "vector search",
    "incident postmortem",
    "kubernetes autoscaling",
    "large language model evaluation",
    "rust memory safety",
    "database migration without downtime",
    "flaky tests",
    "post-quantum cryptography",
]
SEED = 7


@dataclass
class Sample:
    """One request: its kind, HTTP status (0 when it failed), time and error."""

    kind: str
    status: int
    seconds: float
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="kb database to serve")
    parser.add_argument("--requests", type=int, default=2000, help="Requests to send")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="Client threads sending at once"
    )
    parser.add_argument("--model", help="Embedding model for kb serve (--model)")
    parser.add_argument(
        "--queries", type=Path, help="TSV file with a 'query' column of search text"
    )
    parser.add_argument(
        "--ingest-from",
        type=Path,
        help="Run kb ingest --from PATH --no-embed on the database during the load",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON, not Markdown")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    if not args.db.is_file():
        parser.error(f"--db: database not found: {args.db}")
    return args


def child_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in PROXY_VARIABLES
    }
    env["HF_HUB_OFFLINE"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def start_server(db: Path, port: int, model: str | None) -> subprocess.Popen:
    command = [sys.executable, "-m", "kb", "serve", "--db", str(db)]
    command += ["--host", LOCALHOST, "--port", str(port)]
    if model:
        command += ["--model", model]
    return subprocess.Popen(
        command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_ready(server: subprocess.Popen, base_url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            errors = server.stderr.read().decode(errors="replace")[-2000:]
            sys.exit(f"kb serve exited with status {server.returncode}:\n{errors}")
        try:
            if httpx.get(f"{base_url}/-/versions.json", timeout=5).is_success:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit(f"kb serve did not answer within {timeout:.0f} s")


def read_queries(path: Path | None) -> list[str]:
    if path is None:
        return DEFAULT_QUERIES
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [row["query"] for row in rows if row.get("query")]


def database_facts(db: Path) -> tuple[list[int], list[str], int]:
    """Return some post ids, some publication days and the post count."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = [row[0] for row in conn.execute("select id from posts order by id")]
        days = [
            row[0]
            for row in conn.execute(
                "select distinct date(published) from posts "
                "where published is not null order by 1 desc limit 30"
            )
        ]
    finally:
        conn.close()
    return ids, days, len(ids)


def request_mix(db: Path, queries: list[str]) -> list[tuple[str, str]]:
    """Return (kind, path) pairs to cycle through, in a seeded random order.

    Datasette names the database after the file's stem: /kb for kb.db.
    """
    rng = random.Random(SEED)
    name = db.stem
    ids, days, _ = database_facts(db)
    requests = []
    for query in queries:
        requests.append(
            (
                "search keyword",
                f"/{name}/search.json?" + urlencode({"q": query, "mode": "keyword"}),
            )
        )
        requests.append(
            (
                "search hybrid",
                f"/{name}/search.json?" + urlencode({"q": query, "mode": "hybrid"}),
            )
        )
        requests.append(("search page", "/-/kb/search?" + urlencode({"q": query})))
    for post_id in rng.sample(ids, min(len(ids), 2 * len(queries))):
        requests.append(("post page", f"/-/kb/post/{post_id}"))
    for day in days[: len(queries)]:
        requests.append(
            ("daily digest", f"/{name}/daily_digest.json?" + urlencode({"date": day}))
        )
    requests += [("posts_view", f"/{name}/posts_view.json?_size=20")] * len(queries)
    requests += [("feed_health", f"/{name}/feed_health.json")] * (
        len(queries) // 2 or 1
    )
    rng.shuffle(requests)
    return requests


def send_all(
    base_url: str, plan: list[tuple[str, str]], concurrency: int
) -> list[Sample]:
    """Send every request of ``plan`` from ``concurrency`` threads."""
    local = threading.local()
    clients = []
    lock = threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=120)
            with lock:
                clients.append(local.client)
        return local.client

    def send(item: tuple[str, str]) -> Sample:
        kind, path = item
        started = time.perf_counter()
        try:
            response = client().get(path)
        except httpx.HTTPError as error:
            elapsed = time.perf_counter() - started
            return Sample(kind, 0, elapsed, f"{type(error).__name__}: {error}")
        elapsed = time.perf_counter() - started
        error = None
        if response.status_code >= 500:
            error = f"HTTP {response.status_code}"
        elif "database is locked" in response.text:
            error = "database is locked"
        return Sample(kind, response.status_code, elapsed, error)

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(send, plan))
    finally:
        for opened in clients:
            opened.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def summarize(samples: list[Sample]) -> dict[str, dict]:
    groups = defaultdict(list)
    for sample in samples:
        groups[sample.kind].append(sample)
    groups["all"] = samples
    summary = {}
    for kind, group in groups.items():
        times = [sample.seconds * 1000 for sample in group]
        summary[kind] = {
            "requests": len(group),
            "errors": sum(sample.error is not None for sample in group),
            "non_200": sum(sample.status != 200 for sample in group),
            "p50_ms": round(percentile(times, 0.50), 1),
            "p95_ms": round(percentile(times, 0.95), 1),
            "max_ms": round(max(times), 1),
            "mean_ms": round(statistics.fmean(times), 1),
        }
    return summary


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}"
    )


def markdown(summary: dict[str, dict]) -> str:
    lines = [
        "| requests | count | errors | not 200 | p50 ms | p95 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in sorted(summary, key=lambda name: (name == "all", name)):
        row = summary[kind]
        lines.append(
            f"| {kind} | {row['requests']} | {row['errors']} | {row['non_200']} | "
            f"{row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} |"
        )
    return "\n".join(lines)


def run_load(args: argparse.Namespace) -> tuple[list[Sample], float, int | None]:
    """Serve the database and send the requests.

    Returns the samples, the wall time of the load in seconds, and the exit
    status of the concurrent ingest (None without one).
    """
    port = free_port()
    base_url = f"http://{LOCALHOST}:{port}"
    plan_cycle = request_mix(args.db, read_queries(args.queries))
    plan = list(itertools.islice(itertools.cycle(plan_cycle), args.requests))
    server = start_server(args.db, port, args.model)
    ingest = None
    try:
        wait_ready(server, base_url)
        send_all(base_url, plan_cycle[: args.concurrency], args.concurrency)  # warm-up
        if args.ingest_from:
            ingest = subprocess.Popen(
                [sys.executable, "-m", "kb", "ingest", "--from", str(args.ingest_from)]
                + ["--db", str(args.db), "--no-embed", "-q"],
                env=child_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        started = time.perf_counter()
        samples = send_all(base_url, plan, args.concurrency)
        wall = time.perf_counter() - started
        ingest_status = ingest.wait() if ingest else None
    finally:
        server.terminate()
        server.wait(timeout=30)
    return samples, wall, ingest_status


def print_report(report: dict, args: argparse.Namespace) -> None:
    print(f"Machine: {report['machine']}")
    print(f"Command: {report['command']}")
    print(
        f"{args.requests} requests from {args.concurrency} threads against "
        f"{report['posts']} posts in {report['wall_s']} s "
        f"({report['requests_per_s']} requests/s)"
    )
    if report["ingest_exit_status"] is not None:
        print(
            "kb ingest ran during the load and exited with "
            f"{report['ingest_exit_status']}"
        )
    print()
    print(markdown(report["summary"]))
    for error in report["distinct_errors"]:
        print(f"error: {error}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    posts_before = database_facts(args.db)[2]
    samples, wall, ingest_status = run_load(args)
    summary = summarize(samples)
    report = {
        "machine": machine(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "posts": posts_before,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 1),
        "requests_per_s": round(args.requests / wall, 1),
        "ingest_exit_status": ingest_status,
        "summary": summary,
        "distinct_errors": sorted({s.error for s in samples if s.error})[:20],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, args)
    return 1 if summary["all"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
