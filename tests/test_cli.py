"""The `triage` command: every subcommand answers --help, unknown input fails clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from triage.cli import COMMANDS, main


def _triage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "triage.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command() -> None:
    result = _triage("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = _triage(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: triage {name}" in result.stdout


def test_unknown_command_exits_2() -> None:
    result = _triage("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
