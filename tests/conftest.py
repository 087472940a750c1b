import os
import sys
from pathlib import Path

import pytest

from kb.db import open_db

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KB_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Return a path under the shared corpus, failing in CI when it is missing.

    Outside CI a missing corpus skips the test, so a contributor without the
    corpus can still run the fast tests; with CI=true it is an error.
    """
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"shared data not found: {path} (set KB_SHARED to its folder)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def corpus_dir() -> Path:
    """The folder of real feed snapshots laid out as <source>/<YYYY-MM-DD>.xml."""
    return shared_path("corpus", "feeds")


@pytest.fixture
def tricky_dir() -> Path:
    return shared_path("corpus", "tricky")


@pytest.fixture
def eval_dir() -> Path:
    return shared_path("eval")


@pytest.fixture
def db_file(tmp_path) -> Path:
    return tmp_path / "kb.db"


@pytest.fixture
def fresh_db(db_file):
    db = open_db(db_file)
    yield db
    db.close()


@pytest.fixture(scope="session")
def corpus_db_path(tmp_path_factory) -> Path:
    """A database holding the whole real corpus, built once per test session.

    Built without embeddings; tests that change it must copy it first
    (``shutil.copy``), since other tests share the file.
    """
    from kb.ingest import ingest_paths

    feeds = shared_path("corpus", "feeds")
    path = tmp_path_factory.mktemp("corpus") / "corpus.db"
    db = open_db(path)
    ingest_paths(db, [str(feeds)])
    db.close()
    return path


@pytest.fixture
def fake_embedder(monkeypatch):
    """The deterministic ``hash:64`` test model, also selected through $KB_MODEL.

    It needs no weights and embeds a text as a signed bag of hashed words, so
    texts that share words are near each other and nothing else is.
    """
    from kb.embed import get_embedder

    monkeypatch.setenv("KB_MODEL", "hash:64")
    return get_embedder("hash:64")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Give torch back every CPU after a test that started kb's Datasette plugin.

    The plugin sets torch to one thread for the whole process, which suits a
    server but would halve the speed of later tests that embed the corpus.
    """
    yield
    torch = sys.modules.get("torch")
    if torch is None:
        return
    from kb.datasette_plugin.functions import available_cpus

    if torch.get_num_threads() < available_cpus():
        torch.set_num_threads(available_cpus())
