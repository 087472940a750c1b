from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kb.cli import COMMANDS, cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_has_help_and_docs(name):
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert command.help, f"kb {name} has no help text"
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"kb {name}" in README, f"README does not mention kb {name}"


def test_version_runs():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("kb, version ")


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["nonsense"])
    assert result.exit_code == 2


# Commands that open the database, each with the arguments it needs.
DATABASE_COMMANDS = [
    ["feeds", "list"],
    ["feeds", "add", "https://example.com/feed.xml"],
    ["status"],
    ["search", "postgres"],
    ["digest"],
    ["ingest", "--no-embed", "--from", "https://example.invalid/feed.xml"],
]


@pytest.mark.parametrize("arguments", DATABASE_COMMANDS)
@pytest.mark.parametrize("below", ["kb.db", "sub/kb.db"])
def test_db_below_a_file_is_rejected(tmp_path, arguments, below):
    parent = tmp_path / "notes.txt"
    parent.write_text("not a folder")
    db_path = parent / below
    result = CliRunner().invoke(cli, [*arguments, "--db", str(db_path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"Cannot open database {db_path}" in result.output
    assert f"{parent} is a file, not a folder" in result.output
    assert parent.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "db_path, reason",
    [
        ("/proc/kb.db", "the folder /proc does not accept new files"),
        ("/proc/sub/kb.db", "the folder /proc/sub cannot be created"),
    ],
)
def test_db_in_unwritable_folder_is_rejected(db_path, reason):
    arguments = ["feeds", "add", "https://example.com/feed.xml", "--db", db_path]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"Cannot create database {db_path}: {reason}" in result.output
    assert "No such file or directory" in result.output


READ_ONLY_COMMANDS = [
    ["feeds", "list"],
    ["feeds", "export"],
    ["feeds", "remove", "7"],
    ["status"],
    ["search", "postgres"],
    ["topics"],
    ["digest"],
]


@pytest.mark.parametrize("arguments", READ_ONLY_COMMANDS)
def test_read_only_command_needs_database(tmp_path, arguments):
    db_path = tmp_path / "typo.db"
    result = CliRunner().invoke(cli, [*arguments, "--db", str(db_path)])
    assert result.exit_code == 1, result.output
    assert f"Database not found: {db_path}" in result.output
    assert f"kb ingest --db {db_path}" in result.output
    assert not db_path.exists()


def test_writing_commands_create_database(tmp_path):
    runner = CliRunner()
    added = tmp_path / "added.db"
    result = runner.invoke(
        cli, ["feeds", "add", "https://example.com/feed.xml", "--db", str(added)]
    )
    assert result.exit_code == 0, result.output
    assert added.is_file()
    opml = tmp_path / "one.opml"
    opml.write_text(
        '<opml version="2.0"><body>'
        '<outline text="One" xmlUrl="https://example.com/one.xml"/>'
        "</body></opml>"
    )
    imported = tmp_path / "imported.db"
    result = runner.invoke(cli, ["feeds", "import", str(opml), "--db", str(imported)])
    assert result.exit_code == 0, result.output
    assert imported.is_file()
