"""The database survives kills, a full disk and read-only files.

``kb ingest`` is killed with SIGKILL at seeded random moments over a copy of
part of the corpus. After a final rerun the posts must equal those of a clean
ingest, with the FTS index and the vectors in step. A full disk and a
read-only file or folder must end the command with exit status 1 and a
message that names the file and the reason, and leave earlier posts intact.
"""

import ctypes
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shared_path

from kb.db import open_db

SEED = 20260820
# Sources with several dated snapshots each, so a replay is many short runs
# (167 posts over 27 snapshots) and a kill can land between any two.
SOURCES = (
    "anthropic-engineering",
    "google-deepmind-blog",
    "google-developers-ai",
    "khan-academy-engineering",
)
KILLS_WITHOUT_EMBEDDING = 14
KILLS_WITH_EMBEDDING = 8
# Each kill comes within this fraction of a clean run's time after its
# start. Work committed before a kill is kept, so successive kills land
# ever later in the ingest, and a fresh database is needed only rarely.
KILL_WINDOW = 0.25
FAKE_MODEL = "hash:64"
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
PR_CAPBSET_DROP = 24

# A process that imports kb once and then forks one child per request, each
# running the real ``kb`` command line. Every child starts in milliseconds,
# so a kill can land anywhere in the work instead of in Python start-up.
# Children are reaped automatically (SIGCHLD ignored); each writes its exit
# status to a file just before it exits.
FORKER = r"""
import json, os, signal, sys, traceback
from kb.cli import cli

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.update(request["env"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 0
    try:
        cli.main(request["args"], prog_name="kb")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    with open(request["status"] + ".tmp", "w") as handle:
        handle.write(str(code))
    os.rename(request["status"] + ".tmp", request["status"])
    os._exit(code)
"""


class ForkingCli:
    """Start ``kb`` commands as children of one warm process, to kill them at will."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.count = 0
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, args: list[str], env: dict[str, str]) -> tuple[int, Path]:
        """Start ``kb ARGS``; return its pid and the file its exit status goes to."""
        self.count += 1
        status = self.workdir / f"status-{self.count}"
        request = {
            "args": args,
            "env": env,
            "log": str(self.workdir / "kb.log"),
            "status": str(status),
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline()), status

    def run(
        self, args: list[str], env: dict[str, str], kill_after: float
    ) -> int | None:
        """Run a command, killing it after ``kill_after`` seconds unless it ended.

        Returns its exit status, or None when it was killed.
        """
        pid, status = self.start(args, env)
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline and not status.exists():
            time.sleep(0.005)
        if not status.exists():
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        return int(status.read_text()) if status.exists() else None

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Wait until a child of the forker has exited and been reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} still running after {timeout} s")


@pytest.fixture(scope="module")
def corpus_subset(tmp_path_factory) -> Path:
    """A copy of a few sources of the corpus, laid out as <source>/<date>.xml."""
    feeds = shared_path("corpus", "feeds")
    root = tmp_path_factory.mktemp("subset")
    for source in SOURCES:
        shutil.copytree(feeds / source, root / source)
    return root


@pytest.fixture(scope="module")
def forking_cli(tmp_path_factory):
    cli = ForkingCli(tmp_path_factory.mktemp("forker"))
    yield cli
    cli.close()


def ingest_args(db_path: Path, subset: Path, *, embed: bool) -> list[str]:
    args = ["ingest", "--from", str(subset), "--db", str(db_path), "-q"]
    return args if embed else [*args, "--no-embed"]


def fake_model_env() -> dict[str, str]:
    return {"KB_MODEL": FAKE_MODEL, "HF_HUB_OFFLINE": "1"}


def post_state(db) -> dict[str, tuple]:
    """Map each post's URL to what a rerun must reproduce: title and content hash."""
    rows = db.execute("select url, title, content_hash from posts")
    return {url: (title, content_hash) for url, title, content_hash in rows}


def assert_consistent(db_path: Path, expected: dict[str, tuple], *, embedded: bool):
    """Check the database against a clean ingest and its own indexes."""
    db = open_db(db_path)
    try:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert post_state(db) == expected
        duplicate_guids = db.execute(
            "select feed_id, guid from posts where guid is not null "
            "group by feed_id, guid having count(*) > 1"
        ).fetchall()
        assert duplicate_guids == []
        # With rank 1, FTS5 also compares the index with the posts table.
        db.execute(
            "insert into posts_fts(posts_fts, rank) values('integrity-check', 1)"
        )
        posts = db.execute("select count(*) from posts").fetchone()[0]
        assert db.execute("select count(*) from posts_fts").fetchone()[0] == posts
        running = db.execute("select count(*) from runs where status = 'running'")
        assert running.fetchone()[0] == 0
        if embedded:
            assert_vectors_in_step(db)
    finally:
        db.close()


def assert_vectors_in_step(db) -> None:
    """Every post with text has current vectors, and no vector lacks its post."""
    from kb.embed import changed_posts, get_embedder

    pending, unchanged, without_text = changed_posts(db, get_embedder(FAKE_MODEL))
    assert [post.post_id for post in pending] == []
    assert without_text == []
    assert unchanged > 0
    orphans = db.execute(
        "select count(*) from vectors where post_id not in (select id from posts)"
    ).fetchone()[0]
    assert orphans == 0
    mismatched = db.execute(
        "select count(*) from post_embeddings as e where "
        "(select count(*) from vectors as v where v.post_id = e.post_id "
        "and v.chunk is null) != 1 or "
        "(select count(*) from vectors as v where v.post_id = e.post_id "
        "and v.chunk is not null) != e.chunks"
    ).fetchone()[0]
    assert mismatched == 0


def kill_repeatedly(
    forking_cli, subset: Path, workdir: Path, *, kills: int, embed: bool
) -> tuple[Path, dict, dict]:
    """Kill ingests of ``subset`` at random moments until ``kills`` kills landed.

    Returns the last database, the state of a clean ingest and a tally of
    kills and completed runs. A run that completes before its kill is
    checked against the clean ingest, and the next run starts on a new
    database, so that later kills still land in the middle of the work.
    """
    env = fake_model_env()
    reference = workdir / "reference.db"
    started = time.monotonic()
    code = forking_cli.run(ingest_args(reference, subset, embed=embed), env, 600)
    clean_seconds = time.monotonic() - started
    assert code == 0
    reference_db = open_db(reference)
    expected = post_state(reference_db)
    reference_db.close()
    rng = random.Random(SEED + embed)
    tally = {"killed": 0, "completed": 0}
    episode = 0
    db_path = workdir / f"kb-{episode}.db"
    while tally["killed"] < kills:
        delay = rng.uniform(0, clean_seconds * KILL_WINDOW)
        code = forking_cli.run(ingest_args(db_path, subset, embed=embed), env, delay)
        if code is None:
            tally["killed"] += 1
            continue
        assert code == 0, (workdir / "kb.log").read_text()[-3000:]
        tally["completed"] += 1
        assert_consistent(db_path, expected, embedded=embed)
        episode += 1
        db_path = workdir / f"kb-{episode}.db"
    return db_path, expected, tally


def rerun_with_real_cli(db_path: Path, subset: Path, *, embed: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kb", *ingest_args(db_path, subset, embed=embed)],
        env={**os.environ, **fake_model_env()},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_killed_ingests_lose_nothing(forking_cli, corpus_subset, tmp_path):
    db_path, expected, tally = kill_repeatedly(
        forking_cli,
        corpus_subset,
        tmp_path,
        kills=KILLS_WITHOUT_EMBEDDING,
        embed=False,
    )
    assert tally["killed"] == KILLS_WITHOUT_EMBEDDING
    rerun_with_real_cli(db_path, corpus_subset, embed=False)
    assert_consistent(db_path, expected, embedded=False)


@pytest.mark.slow
def test_killed_embedding_runs_recover(forking_cli, corpus_subset, tmp_path):
    db_path, expected, tally = kill_repeatedly(
        forking_cli,
        corpus_subset,
        tmp_path,
        kills=KILLS_WITH_EMBEDDING,
        embed=True,
    )
    assert tally["killed"] == KILLS_WITH_EMBEDDING
    rerun_with_real_cli(db_path, corpus_subset, embed=True)
    assert_consistent(db_path, expected, embedded=True)


# Opens a new database but dies by SIGKILL inside migration 1, after its
# tables were created and before its FTS index was.
KILL_INSIDE_MIGRATION = r"""
import os, signal, sys
import sqlite_utils.db

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

sqlite_utils.db.Table.enable_fts = die
from kb.db import open_db
open_db(sys.argv[1])
"""


def test_kill_inside_migration_recovers(tmp_path):
    from kb.migrations import MIGRATIONS

    path = tmp_path / "kb.db"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_INSIDE_MIGRATION, str(path)], timeout=300
    )
    assert killed.returncode == -signal.SIGKILL
    db = open_db(path)
    applied = [row["id"] for row in db.query("select id from kb_migrations")]
    assert applied == [number for number, _, _ in MIGRATIONS]
    assert "posts_fts" in db.table_names()
    db.close()


# -- full disk and read-only files ---------------------------------------------


@pytest.fixture(scope="module")
def base_db(tmp_path_factory) -> Path:
    """A database of one source, to copy before a test makes writing fail."""
    from kb.ingest import ingest_paths

    path = tmp_path_factory.mktemp("base") / "kb.db"
    db = open_db(path)
    ingest_paths(db, [str(shared_path("corpus", "feeds", "jvns"))])
    db.close()
    return path


@pytest.fixture
def db_copy(base_db, tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(base_db, folder / "kb.db")
    return folder / "kb.db"


def more_feeds() -> str:
    return str(shared_path("corpus", "feeds", "khan-academy-engineering"))


def without_file_overrides() -> None:
    """Drop root's right to ignore file permissions, in a child before exec.

    As root, chmod 444 stops nothing; removing CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from the bounding set makes the exec'd program obey
    file modes like any other user.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.fixture(scope="module")
def permissions_enforced(tmp_path_factory) -> None:
    """Skip unless a child process can be made to obey file permissions."""
    probe = tmp_path_factory.mktemp("probe") / "read-only.txt"
    probe.write_text("x")
    probe.chmod(0o444)
    try:
        result = subprocess.run(
            [sys.executable, "-c", f"open({str(probe)!r}, 'a')"],
            preexec_fn=without_file_overrides,
            capture_output=True,
        )
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE as root: {error}")
    if result.returncode == 0:
        pytest.skip("file permissions are not enforced for this user")


def run_kb(args: list[str], *, preexec_fn=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kb", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        preexec_fn=preexec_fn,
        capture_output=True,
        text=True,
        timeout=600,
    )


def file_size_limit(size: int):
    """Return a pre-exec hook that caps the size of any file the child writes.

    Python ignores SIGXFSZ, so a write past the cap fails with EFBIG, which
    SQLite reports as a disk I/O error, as it does for a disk that is full.
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def assert_intact(db_path: Path, before: dict[str, tuple]) -> None:
    """Check the file is sound and still contains every post it had before."""
    db = open_db(db_path)
    try:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
        db.execute(
            "insert into posts_fts(posts_fts, rank) values('integrity-check', 1)"
        )
        after = post_state(db)
        assert {url: after.get(url) for url in before} == before
    finally:
        db.close()


def assert_clean_failure(result, db_path: Path, reason: str) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert str(db_path) in result.stderr
    assert reason in result.stderr


def read_state(db_path: Path) -> dict[str, tuple]:
    db = open_db(db_path)
    try:
        return post_state(db)
    finally:
        db.close()


@pytest.mark.slow
def test_full_disk_during_ingest(db_copy):
    before = read_state(db_copy)
    result = run_kb(
        ["ingest", "--from", more_feeds(), "--no-embed", "--db", str(db_copy)],
        preexec_fn=file_size_limit(db_copy.stat().st_size + 64 * 1024),
    )
    assert_clean_failure(result, db_copy, "disk I/O error")
    assert "Free some disk space" in result.stderr
    assert_intact(db_copy, before)
    # With space again, a rerun stores what the failed run could not.
    rerun = run_kb(
        ["ingest", "--from", more_feeds(), "--no-embed", "--db", str(db_copy)]
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(read_state(db_copy)) > len(before)


@pytest.mark.slow
def test_full_disk_during_embedding(db_copy):
    before = read_state(db_copy)
    # The snapshot is already stored, so the run writes only its log rows
    # before embedding. The vectors of about 20 long posts then need more
    # room than 100 KB of write-ahead log.
    jvns = str(shared_path("corpus", "feeds", "jvns"))
    result = run_kb(
        ["ingest", "--from", jvns, "--db", str(db_copy)],
        preexec_fn=file_size_limit(100 * 1024),
        KB_MODEL=FAKE_MODEL,
    )
    assert "Total: 1 feed from 1 snapshot file, 0 failed" in result.stdout
    assert "Embeddings:" not in result.stdout
    assert_clean_failure(result, db_copy, "disk I/O error")
    assert_intact(db_copy, before)


def test_page_limit_raises_database_error(db_copy):
    from kb.errors import DatabaseError
    from kb.ingest import ingest_paths

    before = read_state(db_copy)
    db = open_db(db_copy)
    pages = db.execute("pragma page_count").fetchone()[0]
    # SQLite reports a write past max_page_count as SQLITE_FULL, the error
    # of a full disk, without filling one.
    db.execute(f"pragma max_page_count = {pages + 1}")
    with pytest.raises(DatabaseError, match="full") as raised:
        ingest_paths(db, [more_feeds()])
    db.close()
    assert str(db_copy) in str(raised.value)
    assert_intact(db_copy, before)


@pytest.mark.slow
def test_read_only_file_rejected(db_copy, permissions_enforced):
    before = read_state(db_copy)
    db_copy.chmod(0o444)
    result = run_kb(
        ["ingest", "--from", more_feeds(), "--no-embed", "--db", str(db_copy)],
        preexec_fn=without_file_overrides,
    )
    db_copy.chmod(0o644)
    assert_clean_failure(result, db_copy, "readonly database")
    assert "Check the permissions" in result.stderr
    assert_intact(db_copy, before)


@pytest.mark.slow
@pytest.mark.parametrize(
    "lock_file, reason",
    [
        # A folder made read-only before the first ingest: no lock file yet.
        (False, "Permission denied"),
        # A folder made read-only later: the lock opens, SQLite cannot write.
        (True, "readonly database"),
    ],
)
def test_read_only_folder_rejected(db_copy, permissions_enforced, lock_file, reason):
    before = read_state(db_copy)
    if lock_file:
        Path(f"{db_copy}.lock").touch()
    db_copy.parent.chmod(0o555)
    try:
        result = run_kb(
            ["ingest", "--from", more_feeds(), "--no-embed", "--db", str(db_copy)],
            preexec_fn=without_file_overrides,
        )
    finally:
        db_copy.parent.chmod(0o755)
    assert_clean_failure(result, db_copy, reason)
    assert "Check the permissions" in result.stderr
    assert_intact(db_copy, before)
