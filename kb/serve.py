"""Serve the knowledge base read-only with Datasette, metadata.yml and the kb plugin."""

import asyncio
import copy
import logging
import os
from pathlib import Path

import yaml
from datasette.app import Datasette
from datasette.utils import StartupError

from kb import config
from kb.datasette_plugin.facet_cache import use_facet_cache
from kb.db import open_db
from kb.errors import ConfigError

logger = logging.getLogger(__name__)

# metadata.yml describes the database under this name, the stem of data/kb.db.
METADATA_DATABASE = "kb"
DEFAULT_METADATA = Path(__file__).resolve().parent.parent / "metadata.yml"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
# Datasette's own default.
DEFAULT_SQL_TIME_LIMIT_MS = 1000
# Datasette settings that kb serve changes. The caller's settings win.
# suggest_facets: on a table page Datasette otherwise tries each column as a
# facet, about 40 extra queries per page, which cost a second of SQL time on
# posts_view at 100,000 posts (docs/benchmarks/serve.md).
# facet_time_limit_ms: the default facets of posts_view take 0.1 to 0.6 s each
# at 100,000 posts, over Datasette's default of 200 ms. kb serve keeps their
# results until the file changes (kb.datasette_plugin.facet_cache), so the
# full cost is paid once per ingest for each set of filters. Datasette caps
# the value at sql_time_limit_ms.
DEFAULT_SETTINGS = {"suggest_facets": False, "facet_time_limit_ms": 1000}


def load_metadata(path: str | os.PathLike | None = None) -> dict:
    """Read a Datasette metadata file (default: the repository's metadata.yml).

    Raises ConfigError when the file is missing or is not a YAML mapping.
    """
    path = Path(path) if path else DEFAULT_METADATA
    try:
        metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            f"Cannot read metadata file {path}: {error.strerror}\n"
            "Pass the file with --metadata."
        ) from error
    except yaml.YAMLError as error:
        raise ConfigError(f"Invalid YAML in metadata file {path}: {error}") from error
    if not isinstance(metadata, dict):
        raise ConfigError(f"Metadata file {path} must contain a YAML mapping.")
    return metadata


def metadata_for(metadata: dict, database_name: str, model: str | None) -> dict:
    """Return a copy of ``metadata`` that applies to ``database_name``.

    Datasette names a database after its file, so a knowledge base in
    /tmp/x.db is served as ``x``, and the ``kb`` entry moves to that name.
    ``model`` becomes the kb plugin's ``model`` setting.
    """
    metadata = copy.deepcopy(metadata)
    databases = metadata.setdefault("databases", {})
    if database_name != METADATA_DATABASE and METADATA_DATABASE in databases:
        databases[database_name] = databases.pop(METADATA_DATABASE)
    if model:
        plugins = metadata.setdefault("plugins", {})
        plugins.setdefault("kb", {})["model"] = model
    return metadata


def build_datasette(
    db_path: str | os.PathLike | None = None,
    *,
    metadata_path: str | os.PathLike | None = None,
    model: str | None = None,
    settings: dict | None = None,
) -> Datasette:
    """Create the Datasette app for a knowledge base, migrating the file first.

    Pending migrations run here, with a normal connection, because every
    connection Datasette opens to the file is read-only.

    Raises DatabaseError when the file does not exist and ConfigError for a
    bad metadata file.
    """
    path = config.db_path(db_path)
    prepare_database(path)
    metadata = metadata_for(load_metadata(metadata_path), path.stem, model)
    datasette = Datasette(
        [str(path)],
        metadata=metadata,
        settings={**DEFAULT_SETTINGS, **(settings or {})},
        cors=False,
    )
    use_facet_cache(datasette, datasette.get_database().name)
    return datasette


def prepare_database(path: Path) -> None:
    """Apply the pending migrations of the database at ``path``.

    Raises DatabaseError when the file does not exist or cannot be migrated.
    """
    open_db(path, create=False).close()


def serve(
    db_path: str | os.PathLike | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    metadata_path: str | os.PathLike | None = None,
    model: str | None = None,
    settings: dict | None = None,
) -> None:
    """Serve the knowledge base until interrupted.

    The kb plugin loads the embedding model during start-up, before the
    server accepts its first request.
    """
    import uvicorn

    datasette = build_datasette(
        db_path, metadata_path=metadata_path, model=model, settings=settings
    )
    start(datasette)
    logger.info("serving %s on http://%s:%s/-/kb/search", db_path, host, port)
    uvicorn.run(datasette.app(), host=host, port=port, lifespan="on", log_level="info")


def start(datasette: Datasette) -> None:
    """Run Datasette's start-up hooks now, so a failure stops ``kb serve`` early.

    Raises ConfigError with Datasette's message when a start-up hook fails,
    such as a missing embedding model or a canned query marked writable.
    """
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(datasette.invoke_startup())
    except StartupError as error:
        raise ConfigError(f"Cannot start the server: {error}") from error
    finally:
        loop.close()
