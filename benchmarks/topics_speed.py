"""Time topic clustering, labelling and theme assignment at two corpus sizes.

Usage, from the repository root::

    python benchmarks/topics_speed.py --db DB [--sizes 1275,100000] [--output PAGE]

DB is an embedded kb database (``kb ingest`` with embeddings). Its post
vectors and texts are the first size. Larger sizes are synthetic: rows are
drawn with replacement from the real posts, each vector gets Gaussian noise
with a tenth of the real vectors' per-dimension spread and is normalised
again, and each row keeps its source post's text. So the synthetic corpus has
the real topic structure, dimension and text lengths, without duplicates.

Timed steps, each once, in this process:

* clustering: kb.clusters.cluster_vectors (choosing k by silhouette);
* labels: kb.labels.cluster_terms over the titles and texts;
* joining: kb.clusters.assign_to_centroids of every row to the topics;
* themes: kb.theme_scores.score_themes and select_members for the default
  themes file, including loading the model and embedding the descriptions.

The results go between the ``speed`` markers of a Markdown page (default
docs/benchmarks/topics.md), with the machine named.
"""

import argparse
import os
import platform
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
NOISE_SCALE = 0.1


def machine() -> str:
    """Describe the CPU, core count and memory of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()}"


def load_average() -> str:
    """Return the 1-minute load average, which inflates wall times."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def load_real(db_path: Path):
    """Return the real corpus (kb.theme_scores.Corpus) of the database."""
    from kb.db import open_db
    from kb.theme_scores import load_corpus

    return load_corpus(open_db(db_path, create=False))


def scale_corpus(corpus, size: int, seed: int = 0):
    """Return a corpus of ``size`` rows drawn from ``corpus`` with noise."""
    from kb.clusters import normalise
    from kb.theme_scores import Corpus

    if size == len(corpus.post_ids):
        return corpus
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(corpus.post_ids), size=size)
    spread = corpus.post_vectors.std(axis=0)
    noise = rng.normal(size=(size, corpus.post_vectors.shape[1])) * spread
    vectors = normalise(corpus.post_vectors[rows] + NOISE_SCALE * noise)
    first_noise = rng.normal(size=vectors.shape) * spread
    return Corpus(
        post_ids=np.arange(size),
        post_vectors=vectors,
        first_chunks=normalise(corpus.first_chunks[rows] + NOISE_SCALE * first_noise),
        documents=[corpus.documents[row] for row in rows],
        model=corpus.model,
    )


def timed(function, *args, **kwargs):
    """Call ``function`` and return its result, wall seconds and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def score_and_select(corpus, themes: list) -> None:
    from kb import theme_scores

    scores = theme_scores.score_themes(corpus, themes)
    for column in range(scores.shape[1]):
        theme_scores.select_members(scores[:, column])


def measure(corpus, themes: list) -> dict:
    """Time each step on ``corpus`` and return the seconds and outcomes."""
    from kb import clusters, labels

    clustering, *cluster_seconds = timed(clusters.cluster_vectors, corpus.post_vectors)
    _, *label_seconds = timed(
        labels.cluster_terms, corpus.documents, clustering.labels, clustering.k
    )
    _, *join_seconds = timed(
        clusters.assign_to_centroids,
        corpus.post_vectors,
        clustering.centroids,
        clustering.thresholds,
    )
    _, *theme_seconds = timed(score_and_select, corpus, themes)
    return {
        "posts": len(corpus.post_ids),
        "topics": clustering.k,
        "unassigned": clustering.unassigned_share,
        "clustering": cluster_seconds,
        "labels": label_seconds,
        "joining": join_seconds,
        "themes": theme_seconds,
    }


def format_page(rows: list[dict], command: str, themes: int) -> str:
    lines = [
        "## Speed",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {machine()}, "
        f"Python {platform.python_version()}, with:",
        "",
        "```",
        command,
        "```",
        "",
        "The first row is the real corpus; larger rows are synthetic vectors "
        "drawn from it with noise (see the script's docstring). Each cell is "
        "wall seconds / CPU seconds of this process for one run; themes covers "
        f"scoring {themes} themes, including loading the model to embed their "
        f"descriptions. One-minute load average at the end of the run: "
        f"{load_average()}.",
        "",
        "| posts | topics | unassigned | clustering (s) | labels (s) | "
        "joining (s) | themes (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        steps = [row[step] for step in ("clustering", "labels", "joining", "themes")]
        cells = " | ".join(f"{wall:.2f} / {cpu:.2f}" for wall, cpu in steps)
        share = f"{row['unassigned']:.1%}"
        lines.append(f"| {row['posts']:,} | {row['topics']} | {share} | {cells} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak resident memory of the whole run: {peak:.0f} MiB.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, type=Path, help="embedded kb database")
    parser.add_argument("--sizes", default="", help="comma-separated row counts")
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "benchmarks" / "topics.md"
    )
    args = parser.parse_args(argv)
    from kb.themes import DEFAULT_THEMES, load_themes

    themes = load_themes(DEFAULT_THEMES)
    real = load_real(args.db)
    sizes = [int(size) for size in args.sizes.split(",") if size] or [
        len(real.post_ids),
        100_000,
    ]
    rows = []
    for size in sizes:
        row = measure(scale_corpus(real, size), themes)
        print(row, flush=True)
        rows.append(row)
    command = "python benchmarks/topics_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    # Run as a script, this folder is on sys.path.
    from topics_quality import write_results

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.output, format_page(rows, command, len(themes)), "speed")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
