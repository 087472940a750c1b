#!/usr/bin/env bash
# Install kb into .venv, ingest the feeds into data/kb.db and serve it with Datasette.
#   ./demo.sh                                  fetch every feed in data/sources.opml
#   ./demo.sh --from ../shared/corpus/feeds    replay saved snapshots (offline mode)
# Other arguments go to `kb ingest`; KB_PORT sets the port (default 8001).
set -uo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[vec]' || exit 1

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/kb ingest "$@"
status=$?
if [ "$status" -ne 0 ]; then
    echo "kb ingest exited with status $status; serving what is stored." >&2
fi
exec .venv/bin/kb serve --port "${KB_PORT:-8001}"
