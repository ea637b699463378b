"""OpenAPI 3.1 of every HTTP function: each document is valid (openapi-spec-validator), served at
`GET /openapi.json` without a token, names every route its function serves, and holds against a running
function under schemathesis (no 5xx; every status, content type, header and JSON body as documented)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from shared.config import PROJECT_ROOT
from shared.openapi import FUNCTIONS, document
from tests.functions.function_process import function_process

HTTP_FUNCTIONS = sorted(p.parent.name for p in (PROJECT_ROOT / "functions").glob("*/main.py"))
EXAMPLES = 12  # per operation: keeps the three fuzzed functions well under a minute together


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


def _fuzz(base: str, headers: dict[str, str]) -> dict[str, int]:
    """Every operation of the served document, up to EXAMPLES cases each; → requests made per operation."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    made: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        made[operation.label] = 0

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            made[operation.label] += 1  # noqa: B023 (run() is called at once, in this iteration)
            case.call_and_validate(base_url=base, headers=headers, checks=checks, timeout=10)

        run()
    return made


@pytest.fixture
def model_env(tiny_model_dir, tmp_path, api_tokens) -> dict[str, str]:
    return {"MODEL_URI": str(tiny_model_dir), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "API_TOKENS_URI": str(api_tokens[0].path), "API_RATE_PER_S": "1000", "API_RATE_BURST": "1000"}


@pytest.mark.parametrize("function", ["predict", "explain"])
def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(function, model_env, api_tokens, s3_server,
                                                              storage) -> None:
    with function_process(function, {**model_env, "S3_ENDPOINT_URL": s3_server}) as base:
        made = _fuzz(base, {"Authorization": f"Bearer {api_tokens[1]}"})
    assert made["POST /"] >= EXAMPLES // 2 and {"GET /healthz", "GET /metrics"} <= set(made), sorted(made.items())
    if function == "predict":
        assert made["POST /v2/models/{model}/infer"] >= EXAMPLES // 2, sorted(made.items())


def test_schemathesis_on_feedback(s3_server, storage) -> None:
    env = {"S3_ENDPOINT_URL": s3_server, "REVIEWER_TOKENS": "alice:secret-token-1234567890"}
    with function_process("feedback", env) as base:
        made = _fuzz(base, {"Authorization": "Bearer secret-token-1234567890"})
    assert made["POST /"] >= EXAMPLES // 2
