"""Requests the framework refuses before a function runs still get design §5's JSON error (found by schemathesis:
a path with a newline never reaches functions-framework's catch-all route)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.functions.function_process import function_process


@pytest.mark.parametrize("server", ["functions_framework", "triage.stack.function_server"])
def test_an_unroutable_path_is_a_json_404_in_a_real_process(server: str) -> None:
    with function_process("dead_letter", {}, server=server, ready_path="/healthz") as base:
        parts = urlsplit(base)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        connection.request("GET", "/a%0Ab")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 404
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(body)["error"]["code"] == "not_found"
        connection.close()
