"""The analyst notebooks: committed with clean outputs, and still running.

The fast tests read the committed .ipynb files: each was restarted and run in
full, raised nothing and embeds its charts. The slow test runs every notebook
again with nbclient against a database built from the feed corpus.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kb.db import open_db

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
NOTEBOOK_IDS = [path.stem for path in NOTEBOOKS]
DB_LINE = 'DB_PATH = os.environ.get("KB_DB", "../data/kb.db")'
# Committed notebooks are read on a code host, so their outputs stay small.
MAX_NOTEBOOK_BYTES = 1_500_000
MAX_TEXT_OUTPUT_CHARS = 20_000
# Paths of the machine a notebook was run on have no place in its outputs.
LOCAL_PATH_MARKERS = ("/tmp/", "/work/", "/home/", "/root/", "site-packages")
CELL_TIMEOUT_S = 600


def load_views():
    """Import notebooks/views.py by path, leaving sys.path as it is."""
    spec = importlib.util.spec_from_file_location("views", NOTEBOOKS_DIR / "views.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


views = load_views()


def read_notebook(path: Path):
    return nbformat.read(path, as_version=4)


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def text_of(output) -> str:
    """Return an output's text: a stream's text, or all its data as JSON."""
    if output.output_type == "stream":
        return output.text
    return json.dumps(output.get("data", {})) + json.dumps(output.get("traceback", []))


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_is_valid(path):
    nbformat.validate(read_notebook(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_opens_with_title(path):
    first = read_notebook(path).cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_database_path_set_once_first(path):
    cells = code_cells(read_notebook(path))
    assert DB_LINE in cells[0].source
    assert not any("DB_PATH =" in cell.source for cell in cells[1:])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_committed_run_is_restart_and_run_all(path):
    counts = [cell.execution_count for cell in code_cells(read_notebook(path))]
    assert counts == list(range(1, len(counts) + 1))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_committed_outputs_hold_no_errors(path):
    for cell in code_cells(read_notebook(path)):
        for output in cell.outputs:
            assert output.output_type != "error", cell.source
            assert output.get("name") != "stderr", output.text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_committed_outputs_embed_charts(path):
    notebook = read_notebook(path)
    images = [
        output
        for cell in code_cells(notebook)
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert images


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_committed_outputs_are_small(path):
    assert path.stat().st_size <= MAX_NOTEBOOK_BYTES
    for cell in code_cells(read_notebook(path)):
        for output in cell.outputs:
            data = output.get("data", {})
            text = output.get("text", "") + data.get("text/html", "")
            assert len(text) <= MAX_TEXT_OUTPUT_CHARS, cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_committed_outputs_hold_no_local_paths(path):
    for cell in code_cells(read_notebook(path)):
        for output in cell.outputs:
            text = text_of(output)
            for marker in LOCAL_PATH_MARKERS:
                assert marker not in text, cell.source


def test_pivot_fills_missing_pairs_with_zero():
    rows = [
        {"month": "2026-02", "company": "A", "posts": 2},
        {"month": "2026-01", "company": "B", "posts": 5},
    ]
    months, companies, matrix = views.pivot(rows, "month", "company", "posts")
    assert months == ["2026-01", "2026-02"]
    assert companies == ["A", "B"]
    assert matrix.tolist() == [[0.0, 2.0], [5.0, 0.0]]


def test_pivot_sums_repeated_pairs():
    rows = [
        {"mode": "keyword", "rank": "1", "queries": 1},
        {"mode": "keyword", "rank": "1", "queries": 1},
        {"mode": "keyword", "rank": "missed", "queries": None},
    ]
    _, ranks, matrix = views.pivot(rows, "mode", "rank", "queries")
    assert ranks == ["1", "missed"]
    assert matrix.tolist() == [[2.0], [0.0]]


def test_pivot_follows_given_x_values():
    rows = [
        {"year": "2021", "theme": "A", "posts": 3},
        {"year": "2018", "theme": "A", "posts": 9},
    ]
    years, themes, matrix = views.pivot(
        rows, "year", "theme", "posts", x_values=["2021", "2020"]
    )
    assert years == ["2021", "2020"]
    assert themes == ["A"]
    assert matrix.tolist() == [[3.0, 0.0]]


def test_table_escapes_html_in_cells():
    html = views.table([{"title": "Why <blink> came back & left"}])
    assert "&lt;blink&gt;" in html
    assert "&amp;" in html
    assert "<blink>" not in html


def test_table_keeps_only_named_columns():
    html = views.table([{"id": 1, "query": "q", "secret": "x"}], columns=["id"])
    assert "<th" in html
    assert "query" not in html
    assert "secret" not in html


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> Iterator[str]:
    """Install a kernelspec that runs this interpreter, in a temporary prefix.

    A user's or the system's own kernelspec named python3 could run another
    Python. This one names the interpreter running the tests, so the kernel
    imports the same kb.
    """
    prefix = tmp_path_factory.mktemp("jupyter")
    name = "kb-notebooks-test"
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix)]
        + ["--name", name],
        check=True,
        capture_output=True,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        yield name


@pytest.fixture(scope="module")
def notebook_db(corpus_db_path, tmp_path_factory) -> Path:
    """A copy of the corpus database with embeddings, topics and themes.

    Embeds with the ``hash:64`` test model: the notebooks run the same code
    whatever the model, and the real one would take minutes on two cores.
    The committed outputs come from the real model.
    """
    from kb.embed import embed_posts
    from kb.themes import assign_themes
    from kb.topics import update_topics

    path = tmp_path_factory.mktemp("notebooks") / "kb.db"
    shutil.copy(corpus_db_path, path)
    db = open_db(path)
    embed_posts(db, "hash:64")
    update_topics(db, "hash:64")
    assign_themes(db, model_name="hash:64")
    db.close()
    return path


def run_notebook(notebook, kernel_name: str) -> None:
    """Run every cell in a fresh kernel, in the notebooks folder.

    Raises nbclient's CellExecutionError, naming the cell, when a cell raises.
    """
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=CELL_TIMEOUT_S,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    client.execute()


@pytest.mark.slow
def test_run_fails_on_raising_cell(kernel_name):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('broken cell')"),
    ]
    with pytest.raises(CellExecutionError, match="broken cell"):
        run_notebook(notebook, kernel_name)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=NOTEBOOK_IDS)
def test_notebook_runs_on_corpus(path, notebook_db, kernel_name, eval_dir, monkeypatch):
    monkeypatch.setenv("KB_DB", str(notebook_db))
    monkeypatch.setenv("KB_MODEL", "hash:64")
    monkeypatch.setenv("KB_EVAL_QUERIES", str(eval_dir / "dev-queries.tsv"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = read_notebook(path)
    run_notebook(notebook, kernel_name)
    outputs = [output for cell in code_cells(notebook) for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs)
