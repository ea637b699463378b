"""`triage tokens add / rotate / revoke / list`: the token is printed once and stored only as a hash."""

from __future__ import annotations

import json

import pytest

from shared.api_tokens import TokenTable
from shared.token_store import FileTokenStore
from triage.cli import main
from triage.tokens import issue_local_token, local_table


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(["tokens", *argv])
    return code, capsys.readouterr().out.splitlines()


def test_add_prints_the_token_once_and_stores_only_its_hash(tmp_path, capsys) -> None:
    store = tmp_path / "api-tokens.json"
    code, out = run(capsys, "add", "pacs-bridge", "--functions", "predict", "--store", str(store), "--json")
    assert code == 0
    result = json.loads(out[-1])
    token = result["token"]
    assert token.startswith("xrt_") and out.count(token) == 1  # the human line, then the JSON line
    assert token not in store.read_text()
    entry = TokenTable.parse(store.read_bytes()).lookup(token)
    assert entry.name == "pacs-bridge" and entry.functions == ("predict",)


def test_list_rotate_and_revoke(tmp_path, capsys) -> None:
    store = str(tmp_path / "api-tokens.json")
    _, out = run(capsys, "add", "ward-3-viewer", "--store", store, "--rate", "2", "--burst", "4", "--json")
    old = json.loads(out[-1])["token"]
    _, out = run(capsys, "rotate", "ward-3-viewer", "--store", store, "--json")
    new = json.loads(out[-1])["token"]
    table = TokenTable.parse(FileTokenStore(store).read())
    assert not table.lookup(old).active and table.lookup(new).active and table.lookup(new).burst == 4
    assert run(capsys, "revoke", "ward-3-viewer", "--store", store)[0] == 0
    code, out = run(capsys, "list", "--store", store, "--json")
    listing = json.loads(out[-1])["tokens"]
    assert code == 0 and [t["state"] for t in listing] == ["revoked", "revoked"]
    text = "\n".join(out) + FileTokenStore(store).read().decode()
    assert old not in text and new not in text
    assert all("sha256" not in item for item in listing)


def test_mistakes_exit_2_with_a_message(tmp_path, capsys) -> None:
    store = str(tmp_path / "api-tokens.json")
    run(capsys, "add", "pacs-bridge", "--store", store)
    assert main(["tokens", "add", "pacs-bridge", "--store", store]) == 2
    assert "already has an active token" in capsys.readouterr().err
    assert main(["tokens", "revoke", "nobody", "--store", store]) == 2
    assert main(["tokens", "add", "Bad Name", "--store", store]) == 2
    assert main(["tokens", "add", "x", "--functions", "feedback", "--store", store]) == 2


def test_the_default_table_is_api_tokens_uri_else_the_local_stacks(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("API_TOKENS_URI", raising=False)
    run(capsys, "add", "pacs-bridge")
    assert local_table(tmp_path / "run").is_file()
    monkeypatch.setenv("API_TOKENS_URI", str(tmp_path / "elsewhere.json"))
    run(capsys, "add", "pacs-bridge")
    assert (tmp_path / "elsewhere.json").is_file()


def test_an_s3_table_in_the_state_bucket(storage, s3_server, capsys, monkeypatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)
    uri = "s3://triage-state/auth/api-tokens.json"
    _, out = run(capsys, "add", "pacs-bridge", "--store", uri, "--json")
    token = json.loads(out[-1])["token"]
    raw = storage.get_bytes("triage-state", "auth/api-tokens.json")
    assert token.encode() not in raw and TokenTable.parse(raw).lookup(token).name == "pacs-bridge"


def test_the_local_stack_token_is_reissued_each_start_without_growing_the_table(tmp_path) -> None:
    store = FileTokenStore(local_table(tmp_path))
    kept = store.update(lambda table: table.add("pacs-bridge", now="t0")[::-1])
    first = issue_local_token(tmp_path)
    second = issue_local_token(tmp_path)
    table = TokenTable.parse(store.read())
    assert table.lookup(first) is None and table.lookup(second).name == "local-stack"
    assert table.lookup(second).rate_per_s == 1000.0 and table.lookup(kept).name == "pacs-bridge"
    assert len(table.entries) == 2


@pytest.mark.parametrize("action", ["add", "rotate", "revoke", "list"])
def test_every_action_has_help(action, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["tokens", action, "--help"])
    assert done.value.code == 0 and "--store" in capsys.readouterr().out
