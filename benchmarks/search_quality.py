"""Score kb search on known-item queries: MRR@10 and recall@10 per mode and kind.

Each query aims at one target post. A result list scores 1/rank when the
target is among the first 10 results (links compared after canonicalising:
lowercase scheme and host, no query string or fragment, no trailing slash),
else 0. MRR@10 is the mean of those scores; recall@10 is the share of
queries whose target is in the top 10.

Usage::

    python benchmarks/search_quality.py [QUERIES.tsv] [--db PATH] [--json]

Without --db, the script ingests the feed corpus next to the queries
(``../corpus/feeds``) into a temporary database and embeds it with the
default model, which takes a few minutes on two cores.
"""

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_QUERIES = REPO.parent / "shared" / "eval" / "dev-queries.tsv"
MODES = ("keyword", "semantic", "hybrid")
KINDS = ("all", "exact", "concept", "mixed")
CUTOFF = 10


def canonical_link(link: str) -> str:
    """Canonicalise a link the way the query set does."""
    parts = urlsplit(link.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def read_queries(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def target_rank(result_links: list[str], target: str) -> int | None:
    """Return the 1-based rank of ``target`` in the first CUTOFF links, or None."""
    wanted = canonical_link(target)
    for rank, link in enumerate(result_links[:CUTOFF], start=1):
        if canonical_link(link) == wanted:
            return rank
    return None


def score_queries(db, queries: list[dict], modes=MODES, model_name=None) -> dict:
    """Run every query in every mode; return per-mode, per-kind scores and ranks."""
    from kb.search import search

    report = {"modes": {}, "ranks": {}}
    for mode in modes:
        ranks = {}
        for query in queries:
            results = search(
                db, query["query"], mode=mode, limit=CUTOFF, model_name=model_name
            )
            links = [result.url for result in results]
            ranks[query["id"]] = target_rank(links, query["target_link"])
        report["ranks"][mode] = ranks
        report["modes"][mode] = summarise(queries, ranks)
    return report


def summarise(queries: list[dict], ranks: dict) -> dict:
    summary = {}
    for kind in KINDS:
        chosen = [q for q in queries if kind == "all" or q["kind"] == kind]
        if not chosen:
            continue
        reciprocal = [1 / ranks[q["id"]] if ranks[q["id"]] else 0.0 for q in chosen]
        found = [ranks[q["id"]] is not None for q in chosen]
        summary[kind] = {
            "n": len(chosen),
            "mrr@10": round(sum(reciprocal) / len(chosen), 3),
            "recall@10": round(sum(found) / len(chosen), 3),
        }
    return summary


def build_corpus_db(feeds_dir: Path, db_path: Path, model_name=None):
    """Ingest the feed corpus into ``db_path``, embed it, and return the database."""
    from kb.db import open_db
    from kb.embed import embed_posts
    from kb.ingest import ingest_paths

    db = open_db(db_path)
    ingest_paths(db, [str(feeds_dir)])
    embed_posts(db, model_name)
    return db


def markdown_table(report: dict) -> str:
    lines = [
        "| mode | kind | n | MRR@10 | recall@10 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, summary in report["modes"].items():
        for kind, numbers in summary.items():
            lines.append(
                f"| {mode} | {kind} | {numbers['n']} | {numbers['mrr@10']:.3f} "
                f"| {numbers['recall@10']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="?", type=Path, default=DEFAULT_QUERIES)
    parser.add_argument("--db", type=Path, help="an ingested, embedded database")
    parser.add_argument(
        "--model", help="embedding model (default: KB_MODEL or bundled)"
    )
    parser.add_argument(
        "--embed", action="store_true", help="embed changed posts of --db first"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not Markdown")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    queries = read_queries(args.queries)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.db:
            from kb.db import open_db

            db = open_db(args.db, create=False)
            if args.embed:
                from kb.embed import embed_posts

                embed_posts(db, args.model)
        else:
            feeds_dir = args.queries.resolve().parent.parent / "corpus" / "feeds"
            db = build_corpus_db(feeds_dir, Path(scratch) / "kb.db", args.model)
        report = score_queries(db, queries, model_name=args.model)
        db.close()
    report["queries"] = str(args.queries)
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(markdown_table(report))
        misses = {
            mode: sorted(qid for qid, rank in ranks.items() if rank != 1)
            for mode, ranks in report["ranks"].items()
        }
        print(f"\nNot at rank 1: {json.dumps(misses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
