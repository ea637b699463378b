"""The review function over HTTP (functions-framework test client, local S3, a real local event sink)."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from shared.config import PROJECT_ROOT
from shared.names import FEEDBACK_BUCKET, FEEDBACK_RECEIVED, feedback_key
from tests.shared.review.cases import png, put_case

TOKENS = "ann:tok-ann,bob:tok-bob"
XSS_KEY = '<script>alert("x")</script><img src=x onerror=alert(1)>.png'


@pytest.fixture
def client(client_for, sink, storage, s3_server):
    return client_for("review", S3_ENDPOINT_URL=s3_server, K_SINK=sink.url, REVIEWER_TOKENS=TOKENS)


def csrf(client) -> str:
    return client.get("/review/api/session").get_json()["csrf"]


def sign_in(client, token: str = "tok-ann", **headers):
    return client.post("/review/api/session", json={"token": token},
                       headers={"X-CSRF-Token": csrf(client), **headers})


def test_the_page_is_one_file_set_of_the_function_with_a_strict_csp(client):
    response = client.get("/review")
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy and "script-src 'sha256-" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    html = response.get_data(as_text=True)
    assert "Reviewer token" in html and "Confirm" in html and "/*SCRIPT*/" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers (the CSP would block them anyway)
    script = (PROJECT_ROOT / "functions" / "review" / "page" / "review.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    assert client.get("/").status_code == 200  # the same routes answer without the prefix (behind the gateway)


def test_sign_in_sets_a_strict_http_only_expiring_cookie_and_names_the_reviewer(client):
    response = sign_in(client)
    assert response.status_code == 200 and response.get_json()["reviewer"] == "ann"
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("review_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie
    assert "Secure" not in cookie
    assert client.get("/review/api/session").get_json()["reviewer"] == "ann"
    assert client.get("/review/api/worklist").status_code == 200


def test_the_cookie_is_secure_behind_https(client):
    response = sign_in(client, **{"X-Forwarded-Proto": "https"})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("review_session="))
    assert "Secure" in cookie


def test_a_wrong_token_is_401_and_the_sixth_failure_within_a_minute_429(client):
    for _ in range(5):
        response = sign_in(client, "wrong")
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
        assert "review_session" not in response.headers.get("Set-Cookie", "")
    blocked = sign_in(client, "tok-ann")  # even the right token waits: the client is locked out for the window
    assert blocked.status_code == 429 and blocked.get_json()["error"]["code"] == "too_many_attempts"
    other_client = sign_in(client, "tok-ann", **{"X-Forwarded-For": "10.9.9.9"})
    assert other_client.status_code == 200


def test_a_post_without_the_csrf_token_is_403_and_changes_nothing(client, storage, sink):
    body = put_case(storage, "one.png")
    no_csrf = client.post("/review/api/session", json={"token": "tok-ann"})
    assert no_csrf.status_code == 403 and no_csrf.get_json()["error"]["code"] == "csrf"
    assert sign_in(client).status_code == 200
    label = client.post("/review/api/label", json={"key": "one.png", "label": "normal"})
    assert label.status_code == 403 and label.get_json()["error"]["code"] == "csrf"
    wrong = client.post("/review/api/label", json={"key": "one.png", "label": "normal"},
                        headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status_code == 403
    assert not storage.exists(FEEDBACK_BUCKET, feedback_key(body["request_id"])) and sink.events == []


def test_the_worklist_needs_a_session_or_a_bearer_token(client, storage):
    put_case(storage, "one.png", urgent=True, label="pneumonia")
    assert client.get("/review/api/worklist").status_code == 401
    assert client.get("/review/api/worklist", headers={"Authorization": "Bearer nope"}).status_code == 401
    response = client.get("/review/api/worklist", headers={"Authorization": "Bearer tok-bob"})
    assert response.status_code == 200
    payload = response.get_json()
    [item] = payload["items"]
    assert item["key"] == "one.png" and item["urgent"] is True and item["status"] == "unreviewed"
    assert payload["counts"]["urgent"] == 1 and payload["models"] == ["7"]
    bad = client.get("/review/api/worklist?status=open", headers={"Authorization": "Bearer tok-bob"})
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "invalid_field"


def test_a_label_from_the_page_is_feedback_by_the_signed_in_reviewer(client, storage, sink):
    body = put_case(storage, "one.png", label="normal")
    sign_in(client, "tok-bob")
    token = csrf(client)
    response = client.post("/review/api/label", json={"key": "one.png", "label": "pneumonia"},
                           headers={"X-CSRF-Token": token})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "stored"
    stored = storage.get_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]))
    assert (stored["label"], stored["reviewer"]) == ("pneumonia", "bob")
    assert [e["type"] for e in sink.events] == [FEEDBACK_RECEIVED]
    [item] = client.get("/review/api/worklist").get_json()["items"]
    assert (item["status"], item["reviewed_by"]) == ("reviewed", "bob")


def test_a_second_reviewer_is_told_their_label_is_a_second_opinion(client, storage, sink):
    body = put_case(storage, "one.png", label="normal")
    client.post("/review/api/label", json={"key": "one.png", "label": "normal"},
                headers={"Authorization": "Bearer tok-ann"})
    response = client.post("/review/api/label", json={"key": "one.png", "label": "pneumonia"},
                           headers={"Authorization": "Bearer tok-bob"})
    assert response.status_code == 200 and response.get_json()["status"] == "second_opinion"
    assert "second opinion" in response.get_json()["message"]
    assert storage.get_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]))["label"] == "normal"
    assert len(sink.events) == 1


def test_unknown_key_404_bad_key_422_bad_label_422_nothing_stored(client, storage, sink):
    put_case(storage, "one.png")
    auth = {"Authorization": "Bearer tok-ann"}
    assert client.get("/review/api/case?key=missing.png", headers=auth).status_code == 404
    assert client.get("/review/api/image?key=missing.png", headers=auth).status_code == 404
    assert client.get("/review/api/case", headers=auth).status_code == 422
    assert client.post("/review/api/label", json={"key": "missing.png", "label": "normal"},
                       headers=auth).status_code == 404
    assert client.post("/review/api/label", json={"key": "one.png", "label": "maybe"}, headers=auth).status_code == 422
    assert client.post("/review/api/label", data=b"{", content_type="application/json",
                       headers=auth).status_code == 400
    assert list(storage.iter_keys(FEEDBACK_BUCKET)) == [] and sink.events == []


def test_a_key_with_markup_is_data_not_html(client, storage):
    put_case(storage, XSS_KEY)
    auth = {"Authorization": "Bearer tok-ann"}
    response = client.get("/review/api/worklist", headers=auth)
    assert response.mimetype == "application/json" and response.get_json()["items"][0]["key"] == XSS_KEY
    case = client.get("/review/api/case", query_string={"key": XSS_KEY}, headers=auth)
    assert case.status_code == 200 and case.mimetype == "application/json"


def test_images_stream_from_the_private_buckets_as_png(client, storage):
    put_case(storage, "one.png", image=png(40, 32))
    auth = {"Authorization": "Bearer tok-ann"}
    image = client.get("/review/api/image?key=one.png", headers=auth)
    assert image.status_code == 200 and image.mimetype == "image/png"
    assert Image.open(io.BytesIO(image.data)).size == (40, 32)
    heat = client.get("/review/api/heatmap?key=one.png", headers=auth)
    assert heat.status_code == 200 and heat.data.startswith(b"\x89PNG")
    assert client.get("/review/api/image?key=one.png").status_code == 401


def test_sign_out_ends_the_session(client):
    sign_in(client)
    token = csrf(client)
    assert client.post("/review/api/signout", json={}).status_code == 403  # CSRF here too
    response = client.post("/review/api/signout", json={}, headers={"X-CSRF-Token": token})
    assert response.status_code == 200
    assert client.get("/review/api/worklist").status_code == 401
    assert client.get("/review/api/session").get_json()["signed_in"] is False


def test_a_stolen_cookie_stops_working_after_sign_out(client):
    sign_in(client)
    cookie = client.get_cookie("review_session").value
    client.post("/review/api/signout", json={}, headers={"X-CSRF-Token": csrf(client)})
    client.set_cookie("review_session", cookie)
    assert client.get("/review/api/worklist").status_code == 401


def test_health_and_no_tokens_configured(client_for, s3_server):
    closed = client_for("review", S3_ENDPOINT_URL=s3_server, REVIEWER_TOKENS="")
    assert closed.get("/healthz").status_code == 200
    token = closed.get("/api/session").get_json()["csrf"]
    response = closed.post("/api/session", data=json.dumps({"token": "x"}), content_type="application/json",
                           headers={"X-CSRF-Token": token})
    assert response.status_code == 403
