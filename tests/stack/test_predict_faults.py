"""predict SIGKILLed (its whole process group, as a crash) right after answering, its request-record batch still
lingering: every answer it gave can still be labelled — the record writer child, in its own session, writes the
records it was handed (`shared/record_writer.py`). Real processes: the stack's S3, predict under gunicorn, feedback."""

from __future__ import annotations

import httpx

from tests.functions.tiny_model import build_tiny_model_dir, png_bytes
from triage.stack import Stack, StackConfig, StackPorts

ANSWERS = 30


def test_every_answer_given_before_predict_is_killed_can_be_labelled(tmp_path) -> None:
    model = build_tiny_model_dir(tmp_path / "model", seed=0)
    config = StackConfig(run_dir=tmp_path / "run", model_uri=str(model), functions=("predict", "feedback"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False)
    with Stack(config, echo=None) as stack:
        headers = {"Content-Type": "image/png", **stack.api_headers}
        with httpx.Client(base_url=stack.function_urls["predict"], timeout=30) as client:
            answered = []
            for i in range(ANSWERS):
                response = client.post("/", content=png_bytes(seed=i), headers=headers)
                assert response.status_code == 200, response.text
                answered.append(response.json()["request_id"])
        stack.kill("predict")  # within the batch's 250 ms linger: nothing was written by predict itself
        with httpx.Client(base_url=stack.function_urls["feedback"], timeout=30) as client:
            for request_id in answered:
                labelled = client.post("/", json={"request_id": request_id, "label": "normal",
                                                  "reviewer": "radiologist"},
                                       headers={"Authorization": f"Bearer {stack.reviewer_token}"})
                assert labelled.status_code == 200, (request_id, labelled.text)



def _answer(stack: Stack, count: int) -> list[str]:
    headers = {"Content-Type": "image/png", **stack.api_headers}
    with httpx.Client(base_url=stack.function_urls["predict"], timeout=30) as client:
        answers = [client.post("/", content=png_bytes(seed=i), headers=headers) for i in range(count)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    return [a.json()["request_id"] for a in answers]


def _label_all(stack: Stack, request_ids: list[str]) -> None:
    with httpx.Client(base_url=stack.function_urls["feedback"], timeout=30) as client:
        for request_id in request_ids:
            labelled = client.post("/", json={"request_id": request_id, "label": "normal", "reviewer": "radiologist"},
                                   headers={"Authorization": f"Bearer {stack.reviewer_token}"})
            assert labelled.status_code == 200, (request_id, labelled.text)


def test_answers_given_just_before_a_clean_stop_keep_their_records(tmp_path) -> None:
    """The whole stack stopped right after the answers (their batch still lingering): S3 is stopped last, so
    predict's graceful exit writes them; the stack started again on the same folder labels every one."""
    model = build_tiny_model_dir(tmp_path / "model", seed=0)
    config = StackConfig(run_dir=tmp_path / "run", model_uri=str(model), functions=("predict", "feedback"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False)
    with Stack(config, echo=None) as stack:
        answered = _answer(stack, 10)
    with Stack(config, echo=None) as again:
        _label_all(again, answered)
