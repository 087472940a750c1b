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
