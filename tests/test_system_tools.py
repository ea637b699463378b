"""`require_tool`: a missing checker skips locally (with the install command) and fails under CI."""

from __future__ import annotations

import pytest

from tests.system_tools import require_tool


def test_a_present_tool_is_found() -> None:
    assert require_tool("sh", "apt-get install -y dash").endswith("sh")


def test_a_missing_tool_skips_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y no-such-checker"):
        require_tool("no-such-checker-xyz", "apt-get install -y no-such-checker")


def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("no-such-checker-xyz", "apt-get install -y no-such-checker")
