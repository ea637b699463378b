"""Where the token table lives: a file (atomic, 0600, locked) or an S3 object (conditional writes)."""

from __future__ import annotations

import stat
import threading

from shared.api_tokens import TokenTable
from shared.names import API_TOKENS_KEY, STATE_BUCKET
from shared.token_store import FileTokenStore, S3TokenStore, token_store


def add(name: str):
    return lambda table: table.add(name, now="t0")[::-1]


def test_token_store_picks_the_backend_from_the_uri(tmp_path) -> None:
    assert isinstance(token_store(str(tmp_path / "t.json"), lambda: None), FileTokenStore)
    assert isinstance(token_store("s3://triage-state/auth/api-tokens.json", lambda: None), S3TokenStore)


def test_a_file_store_writes_the_table_0600_without_the_token_and_sees_each_change(tmp_path) -> None:
    store = FileTokenStore(tmp_path / "dir" / "api-tokens.json")
    assert store.version() is None and store.read() is None
    token = store.update(add("pacs-bridge"))
    first = store.version()
    assert first is not None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert token.encode() not in store.read()
    assert TokenTable.parse(store.read()).lookup(token).name == "pacs-bridge"
    store.update(lambda table: (None, table.revoke("pacs-bridge", now="t1")))
    assert store.version() != first
    assert not TokenTable.parse(store.read()).lookup(token).active
    unchanged = store.version()
    store.update(lambda table: (None, None))  # no write: same version
    assert store.version() == unchanged


def test_concurrent_file_updates_lose_nothing(tmp_path) -> None:
    store = FileTokenStore(tmp_path / "api-tokens.json")
    threads = [threading.Thread(target=store.update, args=(add(f"client-{i}"),)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(entry.name for entry in TokenTable.parse(store.read()).entries)
    assert names == sorted(f"client-{i}" for i in range(12))


def test_an_s3_store_keeps_the_table_in_the_state_bucket_without_the_token(storage) -> None:
    store = S3TokenStore(f"s3://{STATE_BUCKET}/{API_TOKENS_KEY}", lambda: storage)
    assert store.version() is None and store.read() is None
    token = store.update(add("pacs-bridge"))
    first = store.version()
    raw = storage.get_bytes(STATE_BUCKET, API_TOKENS_KEY)
    assert token.encode() not in raw and b"pacs-bridge" in raw
    store.update(add("ward-3-viewer"))
    assert store.version() != first
    table = TokenTable.parse(store.read())
    assert [e.name for e in table.entries] == ["pacs-bridge", "ward-3-viewer"] and table.lookup(token)
