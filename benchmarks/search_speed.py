"""Measure kb embedding throughput, a no-change embed, and query latency.

Usage::

    python benchmarks/search_speed.py --db CORPUS.db [--scale 100000]
        [--queries QUERIES.tsv] [--repeat 3] [--rounds 3] [--throughput-only]
        [--json]

``--db`` is an ingested database whose posts are embedded with the default
model (``kb embed``); it is copied, never changed. The script prints one
Markdown report:

1. throughput: the chunks of ``--sample-posts`` posts embedded by
   ``kb.embed.embed_posts`` (chunking, encoding and storing) against a plain
   ``SentenceTransformer.encode`` of the same chunk texts;
2. the time of an ``embed_posts`` run when nothing changed;
3. query latency p50/p95 per mode and vector backend, each query timed from
   the text to the results, query embedding included, at the corpus size and
   at ``--scale`` posts. The larger database repeats the corpus posts with a
   serial number appended to each text and Gaussian noise (sigma 0.02)
   added to each vector, which keeps the word statistics and the vector
   neighbourhoods of real posts;
4. at each size, for several shares of the posts past which a query term
   counts as common: keyword p50 and MRR@10 of keyword and hybrid search on
   the queries, with each scaled copy counted as the post it copies;
5. peak RSS of the process.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_QUERIES = REPO.parent / "shared" / "eval" / "dev-queries.tsv"
MODES = ("keyword", "semantic", "hybrid")
NOISE_SIGMA = 0.02
COPY_PREFIX = "https://copies.example/"
# Shares of the posts past which the keyword arm treats a term as common.
COMMON_SHARES = (0.1, 0.03, 0.02, 0.01)


def copy_db(source: Path, target: Path):
    """Copy a WAL-mode database with SQLite's backup API and open the copy."""
    from kb.db import open_db
    from kb.db import sqlite3 as sqlite

    with sqlite.connect(str(source)) as src, sqlite.connect(str(target)) as dst:
        src.backup(dst)
    return open_db(target)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def measure_throughput(
    db_path: Path, scratch: Path, sample_posts: int, rounds: int = 3
) -> dict:
    """Time embed_posts on a sample of posts against plain encode of its chunks.

    Each round times plain encode, then kb, then kb, then plain encode, so
    that neither side always runs first. The ratio compares median times.
    """
    from sentence_transformers import SentenceTransformer

    from kb.embed import embed_posts, get_embedder, post_text

    embedder = get_embedder()
    if not hasattr(embedder, "model_path"):
        return {"skipped": f"{embedder.name} is not a sentence-transformers model"}
    db = copy_db(db_path, scratch / "throughput.db")
    keep = [row[0] for row in db.execute("SELECT id FROM posts ORDER BY id")]
    keep = keep[:: max(1, len(keep) // sample_posts)][:sample_posts]
    id_list = ",".join(map(str, keep))
    texts = []
    for row in db.execute(
        f"SELECT title, content_text FROM posts WHERE id IN ({id_list})"
    ):
        texts.extend(embedder.chunk(post_text(row[0], row[1])))
    plain = SentenceTransformer(embedder.model_path, device="cpu")
    plain.encode(texts[:8])
    embedder.encode(texts[:8])

    def time_plain() -> float:
        started = time.perf_counter()
        plain.encode(texts, batch_size=32, normalize_embeddings=True)
        return time.perf_counter() - started

    def time_kb() -> float:
        # Forget the sample's embeddings, so embed_posts embeds them again.
        db.execute(f"DELETE FROM post_embeddings WHERE post_id IN ({id_list})")
        db.conn.commit()
        started = time.perf_counter()
        stats = embed_posts(db)
        seconds = time.perf_counter() - started
        assert stats.posts_embedded == len(keep), stats
        return seconds

    plain_times, kb_times = [], []
    for _ in range(rounds):
        plain_times.append(time_plain())
        kb_times.append(time_kb())
        kb_times.append(time_kb())
        plain_times.append(time_plain())
    db.close()
    plain_seconds = statistics.median(plain_times)
    kb_seconds = statistics.median(kb_times)
    return {
        "posts": len(keep),
        "chunks": len(texts),
        "runs_each": len(kb_times),
        "kb_chunks_per_s": round(len(texts) / kb_seconds, 1),
        "plain_chunks_per_s": round(len(texts) / plain_seconds, 1),
        "ratio": round(plain_seconds / kb_seconds, 3),
        "kb_seconds": [round(t, 2) for t in kb_times],
        "plain_seconds": [round(t, 2) for t in plain_times],
    }


def measure_noop_embed(db_path: Path, scratch: Path) -> dict:
    from kb.embed import embed_posts

    db = copy_db(db_path, scratch / "noop.db")
    embed_posts(db)
    started = time.perf_counter()
    stats = embed_posts(db)
    seconds = time.perf_counter() - started
    db.close()
    return {"posts_unchanged": stats.posts_unchanged, "seconds": round(seconds, 3)}


def scale_up(db, target_posts: int, seed: int = 0) -> int:
    """Add copies of the stored posts, with their vectors perturbed, up to a size.

    Returns the number of posts added. Each copy gets its source's text with
    " copy N" appended and each of its vectors plus N(0, NOISE_SIGMA) noise,
    L2-normalised again.
    """
    from kb.vectors import pack, update_clusters

    rng = np.random.default_rng(seed)
    posts = db.execute(
        "SELECT id, feed_id, title, published, content_text FROM posts "
        "WHERE id IN (SELECT post_id FROM post_embeddings) ORDER BY id"
    ).fetchall()
    vectors_of: dict[int, list] = {}
    for post_id, chunk, model, blob in db.execute(
        "SELECT post_id, chunk, model, vector FROM vectors ORDER BY id"
    ):
        vectors_of.setdefault(post_id, []).append((chunk, model, blob))
    existing = db.execute("SELECT count(*) FROM posts").fetchone()[0]
    added = 0
    with db.conn:
        while existing + added < target_posts:
            source = posts[added % len(posts)]
            copy_id = add_copy(db, source, added)
            rows = []
            for chunk, model, blob in vectors_of[source[0]]:
                vector = np.frombuffer(blob, dtype="<f4")
                noisy = vector + rng.normal(0, NOISE_SIGMA, vector.shape)
                noisy = (noisy / np.linalg.norm(noisy)).astype(np.float32)
                rows.append((copy_id, chunk, model, pack(noisy)))
            db.conn.executemany(
                "INSERT INTO vectors (post_id, chunk, model, vector) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )
            db.execute(
                "INSERT INTO post_embeddings SELECT ?, model, dim, text_hash, chunks, "
                "embedded_at FROM post_embeddings WHERE post_id = ?",
                [copy_id, source[0]],
            )
            added += 1
    update_clusters(db)
    return added


def add_copy(db, source, number: int) -> int:
    post_id, feed_id, title, published, text = source
    cursor = db.execute(
        "INSERT INTO posts (feed_id, url, link, fingerprint, title, published, "
        "first_seen, content_text, content_hash, word_count) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            feed_id,
            f"{COPY_PREFIX}{number}",
            f"{COPY_PREFIX}{number}",
            f"copy-{number}",
            title,
            published,
            "2026-01-01T00:00:00+00:00",
            f"{text or ''} copy {number}",
            f"copy-{number}",
            0,
        ],
    )
    return cursor.lastrowid


def measure_latency(db, queries: list[str], repeat: int) -> dict:
    """Time every query in every mode and backend; return p50/p95 in ms.

    Query embedding alone and hybrid search (numpy) are also timed with the
    query embedded on torch's default thread count instead of kb's one.
    """
    import torch

    from kb.embed import get_embedder
    from kb.search import search

    embedder = get_embedder()
    threads = torch.get_num_threads()
    report = {}
    for label, encode in (
        ("query embedding alone", embedder.encode_query),
        (f"query embedding, {threads} threads", lambda text: embedder.encode([text])),
    ):
        report[label] = time_calls(encode, queries, 1)
    for backend in ("sqlite-vec", "numpy"):
        os.environ["KB_VECTORS"] = backend
        for mode in MODES:
            search(db, queries[0], mode=mode)
            key = mode if mode == "keyword" else f"{mode} ({backend})"
            report[key] = time_calls(
                lambda text, mode=mode: search(db, text, mode=mode), queries, repeat
            )
        os.environ.pop("KB_VECTORS", None)
    os.environ["KB_VECTORS"] = "numpy"
    default_threads = embedder.query_threads
    embedder.query_threads = threads
    try:
        report[f"hybrid (numpy), query on {threads} threads"] = time_calls(
            lambda text: search(db, text), queries, repeat
        )
    finally:
        embedder.query_threads = default_threads
        os.environ.pop("KB_VECTORS", None)
    return report


def time_calls(call, queries: list[str], repeat: int) -> dict:
    """Call ``call`` on each query ``repeat`` times; return p50/p95 in ms."""
    timings = []
    for _ in range(repeat):
        for query in queries:
            started = time.perf_counter()
            call(query)
            timings.append((time.perf_counter() - started) * 1000)
    return percentiles(timings)


def measure_ivf_recall(db, queries: list[str]) -> float | None:
    """Return the mean share of the exact top 10 posts that the cluster scan finds.

    None when the database is too small to be split into clusters.
    """
    from kb import vectors
    from kb.embed import get_embedder

    if vectors.cached_centroids(db) is None:
        return None
    embedder = get_embedder()
    shares = []
    for query in queries:
        query_vector = embedder.encode([query])[0]
        approximate = vectors.nearest_posts(db, query_vector, 10)
        default_probes = vectors.IVF_PROBES
        vectors.IVF_PROBES = 10**9
        try:
            exact = vectors.nearest_posts(db, query_vector, 10)
        finally:
            vectors.IVF_PROBES = default_probes
        found = {post_id for post_id, _ in approximate}
        shares.append(len(found & {post_id for post_id, _ in exact}) / len(exact))
    return round(sum(shares) / len(shares), 3)


def measure_keyword_agreement(db, queries: list[str]) -> float:
    """Return the share of queries whose keyword top 10 is the plain OR query's.

    kb's keyword arm leaves out posts that contain only common terms. With
    the share set to 1 no term is common, so the arm runs the plain OR query.
    """
    import kb.search
    from kb.search import search

    default_share = kb.search.COMMON_TERM_SHARE
    same = 0
    for query in queries:
        split = [r.post_id for r in search(db, query, mode="keyword", limit=10)]
        kb.search.COMMON_TERM_SHARE = 1.0
        try:
            plain = [r.post_id for r in search(db, query, mode="keyword", limit=10)]
        finally:
            kb.search.COMMON_TERM_SHARE = default_share
        same += split == plain
    return round(same / len(queries), 3)


def measure_common_share(db, rows: list[dict], shares=COMMON_SHARES) -> list[dict]:
    """Score and time the keyword arm with each share of posts that makes a term common.

    For each share: keyword p50 over one run of the queries, and MRR@10 of
    keyword and hybrid search (numpy backend). A scaled copy counts as the
    post it was copied from, and the results are deduplicated that way, so a
    target's rank is its rank among distinct posts.
    """
    from search_quality import canonical_link

    import kb.search

    originals = [
        url
        for (url,) in db.execute(
            "SELECT url FROM posts WHERE id IN (SELECT post_id FROM post_embeddings) "
            f"AND url NOT LIKE '{COPY_PREFIX}%' ORDER BY id"
        )
    ]

    def source(url: str) -> str:
        if url.startswith(COPY_PREFIX):
            url = originals[int(url[len(COPY_PREFIX) :]) % len(originals)]
        return canonical_link(url)

    def reciprocal_rank(query: dict, mode: str) -> float:
        results = kb.search.search(db, query["query"], mode=mode, limit=10)
        distinct = list(dict.fromkeys(source(result.url) for result in results))
        target = canonical_link(query["target_link"])
        return 1 / (distinct.index(target) + 1) if target in distinct else 0.0

    default_share = kb.search.COMMON_TERM_SHARE
    os.environ["KB_VECTORS"] = "numpy"
    report = []
    try:
        for share in shares:
            kb.search.COMMON_TERM_SHARE = share
            timings = []
            for query in rows:
                started = time.perf_counter()
                kb.search.search(db, query["query"], mode="keyword")
                timings.append((time.perf_counter() - started) * 1000)
            scores = {
                mode: round(
                    statistics.mean(reciprocal_rank(query, mode) for query in rows), 3
                )
                for mode in ("keyword", "hybrid")
            }
            report.append(
                {"share": share, "keyword_p50_ms": percentiles(timings)["p50_ms"]}
                | {f"{mode}_mrr_at_10": score for mode, score in scores.items()}
            )
    finally:
        kb.search.COMMON_TERM_SHARE = default_share
        os.environ.pop("KB_VECTORS", None)
    return report


def matrix_megabytes(db) -> float:
    """Return the size of the numpy backend's in-memory copy of the vectors."""
    from kb import vectors

    vm = vectors.cached_matrix(db)
    total = vm.matrix.nbytes + vm.ids.nbytes + vm.post_ids.nbytes + vm.clusters.nbytes
    return round(total / 2**20, 1)


def percentiles(timings: list[float]) -> dict:
    ordered = sorted(timings)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
    }


def progress(name: str, value) -> None:
    """Print one finished measurement to stderr, so a cut-short run keeps it."""
    print(json.dumps({name: value}), file=sys.stderr, flush=True)


def read_queries(path: Path) -> list[dict]:
    from search_quality import read_queries as read_rows

    return read_rows(path)


def report_markdown(report: dict) -> str:
    out = [f"Machine: {report['machine']}", ""]
    t = report["throughput"]
    out.append(f"Throughput: {t['skipped']}.") if "skipped" in t else out.append(
        f"Throughput on {t['chunks']} chunks of {t['posts']} posts, median of "
        f"{t['runs_each']} runs each: kb {t['kb_chunks_per_s']} chunks/s, plain "
        f"encode {t['plain_chunks_per_s']} chunks/s, ratio {t['ratio']}."
    )
    n = report["noop_embed"]
    out.append(
        f"No-change embed of {n['posts_unchanged']} posts: {n['seconds']} s.",
    )
    out += [
        "",
        "| posts | vectors | mode | p50 ms | p95 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for size in report["latency"]:
        for mode, numbers in size["modes"].items():
            out.append(
                f"| {size['posts']} | {size['vectors']} | {mode} | "
                f"{numbers['p50_ms']} | {numbers['p95_ms']} |"
            )
    for size in report["latency"]:
        if size["ivf_recall_at_10"] is not None:
            out.append(
                f"Cluster scan at {size['posts']} posts finds "
                f"{size['ivf_recall_at_10']} of the exact top 10 on average."
            )
    for size in report["latency"]:
        out.append(
            f"At {size['posts']} posts: keyword top 10 equal to the plain OR "
            f"query's for {size['keyword_top10_same']} of the queries; numpy "
            f"backend's vectors in memory {size['numpy_matrix_mb']} MiB."
        )
    for size in report["latency"]:
        out += [
            "",
            f"Common-term share at {size['posts']} posts:",
            "",
            "| share | keyword p50 ms | keyword MRR@10 | hybrid MRR@10 |",
            "| --- | --- | --- | --- |",
        ]
        for row in size["common_share"]:
            out.append(
                f"| {row['share']} | {row['keyword_p50_ms']} | "
                f"{row['keyword_mrr_at_10']} | {row['hybrid_mrr_at_10']} |"
            )
    out += ["", f"Peak RSS: {report['peak_rss_mb']} MB; total {report['seconds']} s."]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="embedded corpus DB")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    parser.add_argument("--scale", type=int, default=100_000, help="posts to scale to")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each query")
    parser.add_argument("--sample-posts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds")
    parser.add_argument(
        "--throughput-only", action="store_true", help="skip the latency runs"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    rows = read_queries(args.queries)
    queries = [row["query"] for row in rows]
    report = {"machine": machine(), "latency": []}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        report["throughput"] = measure_throughput(
            args.db, scratch, args.sample_posts, args.rounds
        )
        progress("throughput", report["throughput"])
        if args.throughput_only:
            print(json.dumps(report["throughput"], indent=2))
            return 0
        report["noop_embed"] = measure_noop_embed(args.db, scratch)
        progress("noop_embed", report["noop_embed"])
        db = copy_db(args.db, scratch / "scaled.db")
        for target in (0, args.scale):
            if target:
                scaling_started = time.perf_counter()
                scale_up(db, target)
                progress("scale_up_seconds", time.perf_counter() - scaling_started)
            report["latency"].append(
                {
                    "posts": db.execute("SELECT count(*) FROM posts").fetchone()[0],
                    "vectors": db.execute("SELECT count(*) FROM vectors").fetchone()[0],
                    "modes": measure_latency(db, queries, args.repeat),
                    "ivf_recall_at_10": measure_ivf_recall(db, queries),
                    "keyword_top10_same": measure_keyword_agreement(db, queries),
                    "numpy_matrix_mb": matrix_megabytes(db),
                    "common_share": measure_common_share(db, rows),
                }
            )
            progress("latency", report["latency"][-1])
        db.close()
        shutil.rmtree(scratch, ignore_errors=True)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report["peak_rss_mb"] = round(peak_kb / 1024)
    report["seconds"] = round(time.perf_counter() - started)
    print(json.dumps(report, indent=2) if args.json else report_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
