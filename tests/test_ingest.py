import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import feedparser
import pytest
from click.testing import CliRunner

from kb.cli import cli
from kb.db import open_db
from kb.ingest import ingest_lock, ingest_paths, plan_replay


def scoring_link(link: str) -> str:
    """Canonicalise a link the way the search-quality set does: no query at all."""
    parts = urlsplit(link.strip())
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", "")
    )


def corpus_links(corpus_dir: Path) -> set[str]:
    links = set()
    for path in corpus_dir.glob("*/*.xml"):
        for entry in feedparser.parse(path.read_bytes()).entries:
            if entry.get("link"):
                links.add(scoring_link(entry.link))
    return links


def run_kb(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_corpus_posts_are_stored_once(corpus_db_path):
    db = open_db(corpus_db_path)
    total, distinct = db.execute(
        "select count(*), count(distinct url) from posts"
    ).fetchone()
    assert total == distinct
    assert db.execute("select count(*) from posts where url is null").fetchone()[0] == 0


def test_every_corpus_link_is_stored(corpus_db_path, corpus_dir):
    db = open_db(corpus_db_path)
    stored = {scoring_link(row[0]) for row in db.execute("select url from posts")}
    expected = corpus_links(corpus_dir)
    assert expected - stored == set()
    assert len(stored) == len(expected)


def test_corpus_fts_index_matches_posts(corpus_db_path):
    db = open_db(corpus_db_path)
    db.execute("insert into posts_fts(posts_fts) values('integrity-check')")
    fts_rows = db.execute("select count(*) from posts_fts").fetchone()[0]
    assert fts_rows == db["posts"].count


def test_replay_runs_once_per_snapshot_date(corpus_db_path, corpus_dir):
    db = open_db(corpus_db_path)
    dates = {path.stem[:10] for path in corpus_dir.glob("*/*.xml")}
    labels = [row[0] for row in db.execute("select label from runs order by id")]
    assert labels == sorted(dates)


def test_rerun_adds_and_changes_nothing(corpus_db_path, corpus_dir, tmp_path):
    db_path = tmp_path / "copy.db"
    shutil.copy(corpus_db_path, db_path)
    before = open_db(db_path).execute("select count(*), max(id) from posts").fetchone()
    result = run_kb(
        "ingest", "--from", str(corpus_dir), "--db", str(db_path), "--no-embed"
    )
    assert result.exit_code == 0, result.output
    assert "0 new, 0 updated" in result.output
    assert "nothing changed" in result.output
    after = open_db(db_path).execute("select count(*), max(id) from posts").fetchone()
    assert after == before


def test_tricky_files_ingest_or_name_the_error(tricky_dir, fresh_db):
    report = ingest_paths(fresh_db, [str(tricky_dir)])
    files = sorted(path for path in tricky_dir.glob("*/*") if path.is_file())
    assert len(report.outcomes) == len(files)
    for outcome in report.outcomes:
        if outcome.failed:
            assert outcome.source in outcome.error
            assert ": " in outcome.error.replace(outcome.source, "", 1)
        else:
            assert outcome.new > 0 or outcome.unchanged > 0, outcome.line()
    failed = {
        Path(outcome.source).name for outcome in report.outcomes if outcome.failed
    }
    assert failed == {"rss_2.0_invalid_1.xml", "unrecognized.rss"}
    assert report.exit_code == 1


def test_html_page_fails_with_exit_status_2(tmp_path, db_file):
    page = tmp_path / "page.xml"
    page.write_text("<html><body>Moved</body></html>")
    result = CliRunner().invoke(
        cli, ["ingest", "--from", str(page), "--db", str(db_file), "--no-embed"]
    )
    assert result.exit_code == 2
    assert f"{page}: not a feed (it is an HTML page)" in result.output


def test_missing_path_is_a_usage_error(db_file):
    result = CliRunner().invoke(
        cli, ["ingest", "--from", "/nonexistent/feeds", "--db", str(db_file)]
    )
    assert result.exit_code == 2
    assert "/nonexistent/feeds" in result.output


def test_second_ingest_waits_for_the_lock(db_file, tricky_dir):
    with ingest_lock(db_file):
        result = CliRunner().invoke(
            cli,
            ["ingest", "--from", str(tricky_dir), "--db", str(db_file), "--no-embed"],
        )
    assert result.exit_code == 1
    assert "Another kb ingest is running" in result.output


def test_plan_replay_orders_nights_by_date(tmp_path):
    for source, dates in {
        "b": ["2026-01-02", "2026-01-01"],
        "a": ["2026-01-02"],
    }.items():
        (tmp_path / source).mkdir()
        for date in dates:
            (tmp_path / source / f"{date}.xml").write_text("<rss/>")
    (tmp_path / "loose.xml").write_text("<rss/>")
    nights = plan_replay([str(tmp_path)])
    assert [label for label, _ in nights] == ["files", "2026-01-01", "2026-01-02"]
    assert [snapshot.slug for snapshot in nights[2][1]] == ["a", "b"]


@pytest.mark.slow
def test_killed_ingest_leaves_no_duplicate_or_half_post(corpus_dir, tmp_path):
    db_path = tmp_path / "killed.db"
    command = [
        sys.executable,
        "-m",
        "kb",
        "ingest",
        "--from",
        str(corpus_dir),
        "--db",
        str(db_path),
        "--no-embed",
        "-q",
    ]
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(1.0, 6.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    subprocess.run(command, check=False, timeout=600, env={**os.environ})
    db = open_db(db_path)
    total, distinct = db.execute(
        "select count(*), count(distinct url) from posts"
    ).fetchone()
    assert total == distinct
    assert (
        db.execute(
            "select count(*) from posts where content_hash is null or title is null and url is null"
        ).fetchone()[0]
        == 0
    )
    db.execute("insert into posts_fts(posts_fts) values('integrity-check')")
    assert db.execute("select count(*) from posts_fts").fetchone()[0] == total
    assert total == len(
        {scoring_link(row[0]) for row in db.execute("select url from posts")}
    )


def test_invalid_snapshot_date_is_not_a_night(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "2024-13-45.xml").write_text("<rss/>")
    nights = plan_replay([str(tmp_path)])
    assert [label for label, _ in nights] == ["files"]


def test_empty_from_path_is_a_usage_error(db_file):
    result = CliRunner().invoke(cli, ["ingest", "--from", "", "--db", str(db_file)])
    assert result.exit_code == 2
    assert "empty path" in result.output


def test_replayed_file_source_is_never_fetched(tricky_dir, fresh_db):
    from datetime import datetime, timezone

    from kb.feeds import due_feeds

    ingest_paths(fresh_db, [str(tricky_dir / "feed-rs" / "atom_relative.xml")])
    due = due_feeds(fresh_db, datetime.now(timezone.utc))
    assert all(feed["url"].startswith(("http://", "https://")) for feed in due)


def rss_document(*links: str) -> str:
    items = "".join(
        f"<item><title>Post {link}</title><link>{link}</link>"
        f"<description>About {link}</description></item>"
        for link in links
    )
    return f'<rss version="2.0"><channel><title>t</title>{items}</channel></rss>'


def test_total_line_counts_feeds_and_files(tmp_path, db_file):
    snapshots = {
        "alpha/2026-01-01.xml": rss_document("https://a.example/1"),
        "alpha/2026-01-02.xml": rss_document(
            "https://a.example/1", "https://a.example/2"
        ),
        "beta/2026-01-01.xml": rss_document("https://b.example/1"),
        "beta/2026-01-02.xml": "<html><body>Moved</body></html>",
    }
    for name, text in snapshots.items():
        (tmp_path / "feeds" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "feeds" / name).write_text(text)
    result = CliRunner().invoke(
        cli,
        ["ingest", "--from", str(tmp_path / "feeds"), "--db", str(db_file)]
        + ["--no-embed"],
    )
    assert result.exit_code == 1, result.output
    assert (
        "Total: 2 feeds from 4 snapshot files, 1 failed; "
        "3 new, 0 updated, 1 unchanged posts" in result.output
    )
