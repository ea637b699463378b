"""The API token table: names and hashes only, constant-time lookup, add / revoke / rotate."""

from __future__ import annotations

import hashlib
import json

import pytest

from shared import api_tokens
from shared.api_tokens import TokenEntry, TokenTable, TokenTableError, new_token, token_hash
from shared.errors import InvalidField


def test_a_new_token_is_long_random_and_recognisable() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(t.startswith("xrt_") and len(t) >= 40 for t in tokens)
    assert token_hash("abc") == hashlib.sha256(b"abc").hexdigest()


def test_the_stored_table_has_names_and_hashes_but_no_plaintext_token() -> None:
    table, first = TokenTable().add("pacs-bridge", now="t0")
    table, second = table.add("ward-3-viewer", now="t1", functions=["predict"], rate_per_s=2.0, burst=4)
    stored = table.dumps()
    assert first.encode() not in stored and second.encode() not in stored
    assert first[4:].encode() not in stored  # nor its random part
    value = json.loads(stored)
    assert [t["name"] for t in value["tokens"]] == ["pacs-bridge", "ward-3-viewer"]
    assert value["tokens"][0]["sha256"] == token_hash(first)
    assert value["tokens"][1]["functions"] == ["predict"] and value["tokens"][1]["burst"] == 4
    assert TokenTable.parse(stored) == table  # round trip


def test_lookup_finds_the_entry_of_a_token_and_nothing_else() -> None:
    table, token = TokenTable().add("pacs-bridge", now="t0")
    table, other = table.add("ward-3-viewer", now="t0")
    assert table.lookup(token).name == "pacs-bridge"
    assert table.lookup(other).name == "ward-3-viewer"
    for wrong in ("", token[:-1], token + "x", token_hash(token), token.upper()):
        assert table.lookup(wrong) is None


def test_lookup_compares_every_entry_with_hmac_compare_digest(monkeypatch) -> None:
    table = TokenTable()
    for name in ("a", "b", "c"):
        table, _ = table.add(name, now="t0")
    table, token = table.add("d", now="t0")
    calls = []
    real = api_tokens.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_tokens.hmac, "compare_digest", spy)
    assert table.lookup(token).name == "d"
    assert len(calls) == 4  # every entry, even after the match at the last (and before it): no early exit
    table.lookup("xrt_unknown")
    assert len(calls) == 8


def test_revoke_keeps_the_hash_so_the_token_is_known_but_inactive() -> None:
    table, token = TokenTable().add("pacs-bridge", now="t0")
    revoked = table.revoke("pacs-bridge", now="t1")
    entry = revoked.lookup(token)
    assert entry is not None and not entry.active and entry.revoked_at == "t1"
    with pytest.raises(TokenTableError, match="no active token"):
        revoked.revoke("pacs-bridge", now="t2")


def test_rotate_revokes_the_old_token_and_issues_a_new_one_with_the_same_rights() -> None:
    table, old = TokenTable().add("pacs-bridge", now="t0", functions=["predict"], rate_per_s=3.0, burst=6)
    rotated, new = table.rotate("pacs-bridge", now="t1")
    assert new != old
    assert not rotated.lookup(old).active
    fresh = rotated.lookup(new)
    assert fresh.active and fresh.functions == ("predict",) and (fresh.rate_per_s, fresh.burst) == (3.0, 6)


def test_a_name_has_one_active_token_and_names_are_checked() -> None:
    table, _ = TokenTable().add("pacs-bridge", now="t0")
    with pytest.raises(TokenTableError, match="already has an active token"):
        table.add("pacs-bridge", now="t1")
    for bad in ("", "Pacs", "pacs bridge", "-x", "x-", "a" * 64, "../x"):
        with pytest.raises(InvalidField):
            TokenTable().add(bad, now="t0")
    with pytest.raises(InvalidField, match="functions"):
        TokenTable().add("x", now="t0", functions=["feedback"])
    with pytest.raises(InvalidField, match="rate"):
        TokenTable().add("x", now="t0", rate_per_s=0)


def test_without_drops_every_entry_of_a_name() -> None:
    table, token = TokenTable().add("local-stack", now="t0")
    table, kept = table.add("pacs-bridge", now="t0")
    assert table.without("local-stack").lookup(token) is None
    assert table.without("local-stack").lookup(kept).name == "pacs-bridge"


@pytest.mark.parametrize("data", [b"not json", b"[]", b'{"tokens": {}}', b'{"tokens": [1]}',
                                  b'{"tokens": [{"name": "a"}]}', b'{"tokens": [{"name": "a", "sha256": "zz"}]}'])
def test_a_malformed_table_is_refused_by_name(data: bytes) -> None:
    with pytest.raises(TokenTableError):
        TokenTable.parse(data)


def test_an_absent_table_has_no_tokens() -> None:
    assert TokenTable.parse(None).entries == () and TokenTable.parse(b"").entries == ()
    assert TokenEntry(name="a", sha256="0" * 64).allows("predict")
