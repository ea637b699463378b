"""`require_tool`: a missing checker skips locally (with the install command) and fails under CI."""

from __future__ import annotations

import re
from pathlib import Path

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


def test_ci_installs_every_debian_package_a_test_asks_for() -> None:
    # A package missing from .ci/run fails CI (CI=true turns the skip into a failure): catch it here first.
    root = Path(__file__).resolve().parents[1]
    installed = set(re.search(r"apt_packages=\(([^)]*)\)", (root / ".ci" / "run").read_text()).group(1).split())
    wanted: dict[str, str] = {}
    for source in root.joinpath("tests").rglob("*.py"):
        if source.name == Path(__file__).name:  # this file names made-up packages on purpose
            continue
        for packages in re.findall(r'"apt-get install -y ([a-z0-9 .+-]+)"', source.read_text()):
            wanted.update(dict.fromkeys(packages.split(), source.name))
    assert {"cloud-init", "prometheus", "chromium", "chromium-driver"} <= wanted.keys()
    missing = {package: where for package, where in wanted.items() if package not in installed}
    assert not missing, f"tests ask for Debian packages .ci/run does not install: {missing}"
