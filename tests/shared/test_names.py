"""shared.names: how logs name an object, which feedback objects are labels, where state lives."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared import names


def test_key_ref_is_a_short_stable_hash_that_tells_objects_apart_and_hides_the_key() -> None:
    ref = names.key_ref("inference-inputs", "ward3/Doe^John_1970-01-01.png")
    assert re.fullmatch(r"obj:[0-9a-f]{12}", ref)
    assert ref == names.key_ref("inference-inputs", "ward3/Doe^John_1970-01-01.png")  # stable
    assert ref != names.key_ref("inference-results", "ward3/Doe^John_1970-01-01.png")
    assert ref != names.key_ref("inference-inputs", "ward3/Doe^Jane_1970-01-01.png")
    assert "Doe" not in ref
    assert names.key_ref("b", "\udcff odd") != names.key_ref("b", "odd")  # any key a client can send


@pytest.mark.parametrize(("key", "request_id"), [
    ("req-1.json", "req-1"),
    ("0123abcd.json", "0123abcd"),
    ("_state/retrain.json", None),  # the old layout's retrain state: not a label
    ("req-1.json.tmp", None),
    ("req 1.json", None),
    (".json", None),
])
def test_feedback_request_id_accepts_label_keys_only(key: str, request_id: str | None) -> None:
    assert names.feedback_request_id(key) == request_id
    if request_id is not None:
        assert names.feedback_key(request_id) == key


def test_every_state_key_lives_in_the_state_bucket_layout() -> None:
    state_keys = [names.CANARY_STATE_KEY, names.MONITOR_STATE_KEY, names.MONITOR_LABELS_KEY, names.MONITOR_REPORT_KEY,
                  names.RETRAIN_STATE_KEY, names.retrain_batch_key("b1"), names.request_record_key("r1")]
    assert len(set(state_keys)) == len(state_keys)
    assert names.STATE_BUCKET in names.BUCKETS and names.STATE_BUCKET not in names.NOTIFYING_BUCKETS


def _ref_in_a_process(secret: str | None, bucket: str, key: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LOG_REF_SECRET"}
    if secret:
        env["LOG_REF_SECRET"] = secret
    code = f"from shared.names import key_ref; print(key_ref({bucket!r}, {key!r}))"
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_key_ref_is_keyed_by_the_installations_secret_not_a_hash_anyone_can_recompute() -> None:
    key = "ward3/MRN-0012345.png"  # a guessable key: record numbers are
    plain = "obj:" + hashlib.sha256(f"inference-inputs/{key}".encode()).hexdigest()[:12]
    one = _ref_in_a_process("installation-one", "inference-inputs", key)
    assert one == _ref_in_a_process("installation-one", "inference-inputs", key)  # every process of it alike
    assert one != _ref_in_a_process("installation-two", "inference-inputs", key)
    assert plain not in (one, names.key_ref("inference-inputs", key))
    # Without the secret (a tool outside an installation): a key of this process only, matching no guess.
    unkeyed = _ref_in_a_process(None, "inference-inputs", key)
    assert unkeyed not in (plain, _ref_in_a_process(None, "inference-inputs", key))
