"""The radiologist's worklist on the local stack, in headless Chromium (real S3, minio-source, ingest, review).

Three uploads go through ingest; the test then sets what a tiny random model cannot be made to produce on
purpose: one result urgent, one uploaded two hours ago (past REVIEW_MAX_WAIT_MIN). The page must order them,
open a case, toggle and fade the heatmap, take a confirmation from the keyboard (stored in `feedback/` under the
signed-in reviewer), show the case as reviewed, pick up a new urgent case without a reload, and sign out; axe-core
finds no serious or critical violation on either view.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.names import FEEDBACK_BUCKET, INPUT_BUCKET, RESULT_BUCKET, feedback_key, result_key
from shared.timestamps import utc_iso
from tests.browser import headless_chromium
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes
from triage.stack import Stack, StackConfig, StackPorts

TOKEN = "tok-radiologist-0123456789"
XSS_KEY = 'fresh/<img src=x onerror="window.__xss=1">.png'


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("review-stack")
    model = build_tiny_model_dir(root / "model")
    config = StackConfig(run_dir=root / "run", model_uri=str(model),
                         functions=("minio_source", "ingest", "feedback", "review"), ports=StackPorts.free(),
                         mlflow=False, prometheus=False, reviewer_tokens=f"radiologist:{TOKEN},second:tok-second-1")
    with Stack(config, echo=None) as running:
        yield running


def read_result(s3, key: str, timeout_s: float = 60) -> dict:
    """The committed result: ingest writes the flag first and the result again once its heatmap is stored, so a
    test that rewrites the result must wait for that second write (or ingest would overwrite the rewrite)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = json.loads(s3.get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read())
            if (result.get("heatmap") or {}).get("status") != "pending":
                return result
        except s3.exceptions.NoSuchKey:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no committed result for {key} within {timeout_s} s")
        time.sleep(0.2)


def upload(s3, key: str, seed: int, **override) -> dict:
    """Upload, wait for ingest's result, then set the fields the test needs (as if the model had said so)."""
    s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=png_bytes(40, width=48, seed=seed), ContentType="image/png")
    result = {**read_result(s3, key), **override}
    s3.put_object(Bucket=RESULT_BUCKET, Key=result_key(key), Body=json.dumps(result).encode())
    return result


def axe_violations(browser) -> list[str]:
    from axe_selenium_python import Axe

    axe = Axe(browser)
    axe.inject()
    found = axe.run()["violations"]
    return [f"{v['id']} ({v['impact']}): {v['help']}" for v in found if v["impact"] in ("serious", "critical")]


def test_bad_requests_through_the_gateway(stack):
    s3 = stack.s3()
    with httpx.Client(base_url=stack.urls["gateway"], timeout=30) as client:
        assert client.get("/review/api/worklist").status_code == 401
        ok = client.get("/review/api/worklist", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "items" in ok.json()
        assert client.get("/review/api/case?key=nope.png",
                          headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
        csrf = client.get("/review/api/session").json()["csrf"]
        assert client.post("/review/api/session", json={"token": TOKEN}).status_code == 403  # no CSRF header
        # As a client behind a proxy (the last X-Forwarded-For hop), so the browser test's client is not locked out.
        codes = [client.post("/review/api/session", json={"token": "wrong"},
                             headers={"X-CSRF-Token": csrf, "X-Forwarded-For": "203.0.113.9"}).status_code
                 for _ in range(6)]
        assert codes == [401] * 5 + [429]
    assert s3.list_objects_v2(Bucket=FEEDBACK_BUCKET).get("KeyCount", 0) == 0


def test_the_worklist_in_a_browser(stack, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    s3 = stack.s3()
    now = datetime.now(UTC)
    upload(s3, "ward-b/waited.png", 1, urgent=False, label="normal", probability=0.12,
           uploaded_at=utc_iso(now - timedelta(hours=2)))
    upload(s3, "ward-b/fresh.png", 2, urgent=False, label="normal", probability=0.2,
           uploaded_at=utc_iso(now - timedelta(minutes=3)))
    urgent = upload(s3, "ward-a/urgent.png", 3, urgent=True, label="pneumonia", probability=0.97,
                    uploaded_at=utc_iso(now - timedelta(minutes=1)))
    upload(s3, XSS_KEY, 4, urgent=False, label="normal", uploaded_at=utc_iso(now))
    with headless_chromium() as browser:
        wait = WebDriverWait(browser, 20)

        def rows() -> list[str]:
            return browser.execute_script(
                "return Array.from(document.querySelectorAll('#rows tr')).map(r => r.dataset.key)")

        def row_text(key: str) -> str:
            return browser.execute_script(
                "return Array.from(document.querySelectorAll('#rows tr')).find(r => r.dataset.key === arguments[0])"
                ".textContent", key)

        browser.get(stack.urls["gateway"] + "/review")
        token = wait.until(lambda b: b.find_element(By.ID, "token") if b.find_element(By.ID, "token").is_displayed()
                           else None)
        assert axe_violations(browser) == []
        token.send_keys("wrong-token", Keys.ENTER)
        wait.until(lambda b: "Sign-in failed" in b.find_element(By.ID, "signin-error").text)
        token.clear()
        token.send_keys(TOKEN, Keys.ENTER)
        wait.until(lambda b: len(rows()) == 4)
        assert rows()[:3] == ["ward-a/urgent.png", "ward-b/waited.png", "ward-b/fresh.png"]
        assert rows()[3] == XSS_KEY  # the key is shown as text; its markup never ran
        assert browser.execute_script("return window.__xss === undefined")
        assert browser.find_element(By.CSS_SELECTOR, '#rows tr[data-key="ward-a/urgent.png"] td').text == "URGENT"
        assert "Signed in as radiologist" in browser.find_element(By.ID, "who").text
        assert browser.find_element(By.ID, "count-urgent").text == "1 urgent"
        assert axe_violations(browser) == []
        browser.save_screenshot(str(tmp_path / "review-worklist.png"))

        # Keyboard only: the first case's button, Enter.
        first = browser.find_element(By.CSS_SELECTOR, "#rows tr:first-child button.open-case")
        first.send_keys(Keys.ENTER)
        wait.until(lambda b: b.find_element(By.ID, "case-title").text == "Case ward-a/urgent.png")
        wait.until(lambda b: b.execute_script("const i = document.getElementById('image'), h = "
                                              "document.getElementById('heat'); return i.complete && "
                                              "i.naturalWidth === 48 && h.complete && h.naturalWidth > 0"))
        assert "URGENT" in browser.find_element(By.ID, "verdict").text
        facts = browser.find_element(By.ID, "facts").text
        assert "Threshold" in facts and "xray-vit" in facts and "Upload to result" in facts
        heat = browser.find_element(By.ID, "heat")
        assert heat.is_displayed()
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("h")
        assert not heat.is_displayed()
        body.send_keys("h")
        assert heat.is_displayed()
        slider = browser.find_element(By.ID, "opacity")
        slider.send_keys(Keys.ARROW_LEFT * 20)  # on the slider the arrows move it, not the case
        assert browser.execute_script("return document.getElementById('heat').style.opacity") == "0.4"
        assert browser.find_element(By.ID, "case-title").text == "Case ward-a/urgent.png"
        assert axe_violations(browser) == []
        browser.save_screenshot(str(tmp_path / "review-case.png"))

        browser.find_element(By.ID, "verdict").click()  # focus off the slider, then the shortcut
        browser.switch_to.active_element.send_keys("c")
        wait.until(lambda b: "Saved: pneumonia" in b.find_element(By.ID, "notice").text)
        wait.until(lambda b: b.find_element(By.ID, "case-title").text == "Case ward-b/waited.png")  # the next opens
        stored = json.loads(s3.get_object(Bucket=FEEDBACK_BUCKET, Key=feedback_key(urgent["request_id"]))["Body"]
                            .read())
        assert (stored["label"], stored["reviewer"]) == ("pneumonia", "radiologist")

        browser.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait.until(lambda b: b.find_element(By.ID, "list-view").is_displayed() and rows()
                   and rows()[-1] == "ward-a/urgent.png")
        assert "Reviewed" in row_text("ward-a/urgent.png") and "radiologist" in row_text("ward-a/urgent.png")

        # A new urgent case shows without a reload, within 5 s of its result.
        upload(s3, "ward-c/new-urgent.png", 5, urgent=True, label="pneumonia", probability=0.99,
               uploaded_at=utc_iso(datetime.now(UTC)))
        WebDriverWait(browser, 5).until(lambda b: rows() and rows()[0] == "ward-c/new-urgent.png")

        browser.find_element(By.ID, "signout").send_keys(Keys.ENTER)
        wait.until(lambda b: b.find_element(By.ID, "signin-view").is_displayed())
        browser.refresh()
        wait.until(lambda b: b.find_element(By.ID, "token").is_displayed())
    assert Path(tmp_path / "review-case.png").stat().st_size > 10_000
