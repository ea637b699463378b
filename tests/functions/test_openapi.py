"""OpenAPI 3.1 of every HTTP function: each document is valid (openapi-spec-validator), served at
`GET /openapi.json` without a token and names every route its function serves. That each holds against its
running function under schemathesis is test_openapi_fuzz_all.py."""

from __future__ import annotations

import json
import re

import pytest
from openapi_spec_validator import validate

from shared.config import PROJECT_ROOT
from shared.openapi import FUNCTIONS, document

HTTP_FUNCTIONS = sorted(p.parent.name for p in (PROJECT_ROOT / "functions").glob("*/main.py"))


def test_every_http_function_has_a_document() -> None:
    assert set(HTTP_FUNCTIONS) <= set(FUNCTIONS), set(HTTP_FUNCTIONS) - set(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_document_is_valid_openapi_3_1(function: str) -> None:
    doc = document(function)
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any schema error
    ids = [op["operationId"] for item in doc["paths"].values() for k, op in item.items() if k != "parameters"]
    assert len(ids) == len(set(ids))


def _route_keys(main_py: str) -> set[str]:
    """The "METHOD /path" keys in a function's route table (its main.py, or the review app's table)."""
    source = (PROJECT_ROOT / main_py).read_text()
    return set(re.findall(r'"((?:GET|POST|PUT|DELETE) /[^"]*)"', source))


@pytest.mark.parametrize("function", [f for f in FUNCTIONS if f != "review"])
def test_each_document_names_every_route_of_its_function(function: str) -> None:
    doc = document(function)
    for key in _route_keys(f"functions/{function}/main.py"):
        method, path = key.split(" ", 1)
        assert method.lower() in doc["paths"].get(path, {}), f"{function}: {key} is not documented"
    if function == "predict":
        assert {"/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model}/infer"} <= set(doc["paths"])


def test_the_review_document_names_every_api_route() -> None:
    doc = document("review")
    for key in _route_keys("shared/review/web.py"):
        method, path = key.split(" ", 1)
        full = "/review" + ("" if path == "/" else path)
        assert method.lower() in doc["paths"].get(full, {}), f"review: {key} is not documented"


@pytest.mark.parametrize("function", ["predict", "feedback", "preprocess", "monitor", "review", "dead_letter"])
def test_openapi_json_is_served_without_a_token(client_for, function: str) -> None:
    client = client_for(function, authorized=False, REVIEWER_TOKENS="alice:secret-token-1234567890")
    answer = client.get("/openapi.json")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.get_json() == json.loads(json.dumps(document(function)))
