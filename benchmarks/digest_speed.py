"""Time building and rendering digests on an ingested knowledge base.

Usage::

    kb ingest --from path/to/corpus/feeds --db /tmp/digest.db
    python benchmarks/digest_speed.py --db /tmp/digest.db [--date 2026-04-16]

Without ``--date`` the script picks the day whose posts come from the most
companies. Each case runs ``--repeat`` times in this process after one
warm-up run. The table reports the median and fastest wall time and the
median CPU time of this process in milliseconds, with the machine, its load
average and the database size. CPU time counts only this process, so it
varies less than wall time on a shared machine. Nothing is written to the
database.
"""

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

from kb.db import open_db
from kb.digest import (
    build_digest,
    build_digests,
    fit_background,
    render_atom,
    render_html,
    render_markdown,
)


def busiest_day(db) -> str:
    """Return the day whose posts come from the most companies, then the most posts."""
    row = db.execute(
        """
        SELECT substr(posts.published, 1, 10) AS day
        FROM posts JOIN feeds ON feeds.id = posts.feed_id
        WHERE posts.published IS NOT NULL
        GROUP BY day
        ORDER BY COUNT(DISTINCT feeds.company) DESC, COUNT(*) DESC, day DESC
        LIMIT 1
        """
    ).fetchone()
    if row is None:
        raise SystemExit("The database has no dated posts; ingest some feeds first.")
    return row[0]


def time_case(
    function: Callable[[], object], repeat: int
) -> tuple[float, float, float]:
    """Run ``function`` once to warm up, then ``repeat`` times.

    Returns the median and the minimum wall time and the median CPU time of
    this process, in milliseconds.
    """
    function()
    wall = []
    cpu = []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages, or "unknown"."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> str:
    """Describe the machine: CPU model, cores, memory and Python version."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        pass
    return (
        f"{model}, {os.cpu_count()} logical cores{memory}, "
        f"Python {platform.python_version()} on {platform.system()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=os.environ.get("KB_DB"), required=False)
    parser.add_argument("--date", help="Last day of the windows (YYYY-MM-DD)")
    parser.add_argument("--repeat", type=int, default=5, help="Timed runs per case")
    arguments = parser.parse_args()
    if not arguments.db:
        parser.error("--db is required (or set KB_DB)")

    db = open_db(arguments.db, create=False)
    date = arguments.date or busiest_day(db)
    day = build_digest(db, date)
    week = build_digest(db, date, days=7)

    def cold(days: int = 1):
        return build_digest(db, date, days, background=fit_background(db, date))

    # build_digest reuses a cached background after the warm-up run, so the
    # "cold" cases fit a new one each time, as the first request of a day does.
    cases = [
        ("fit background TF-IDF", lambda: fit_background(db, date)),
        ("build day digest, cold", cold),
        ("build day digest, background cached", lambda: build_digest(db, date)),
        ("build week digest, cold", lambda: cold(7)),
        ("build week digest, background cached", lambda: build_digest(db, date, 7)),
        ("render day as Markdown", lambda: render_markdown(day)),
        ("render day as HTML", lambda: render_html(day)),
        ("render week as HTML", lambda: render_html(week)),
        (
            "build and render 30-day Atom feed, cold",
            lambda: render_atom(
                build_digests(db, date, 30, background=fit_background(db, date))
            ),
        ),
    ]

    posts = db["posts"].count
    print(f"Machine: {machine()}")
    print(f"Load average before: {load_average()}")
    print(
        f"Database: {posts} posts. Day {date}: {day.post_count} posts from "
        f"{len(day.companies)} companies. Week to {date}: {week.post_count} posts "
        f"from {len(week.companies)} companies. Repeats: {arguments.repeat}."
    )
    print()
    print("| case | wall median ms | wall min ms | CPU median ms |")
    print("| --- | ---: | ---: | ---: |")
    for name, function in cases:
        median, fastest, cpu = time_case(function, arguments.repeat)
        print(f"| {name} | {median:.0f} | {fastest:.0f} | {cpu:.0f} |")
    print()
    print(f"Load average after: {load_average()}")


if __name__ == "__main__":
    main()
