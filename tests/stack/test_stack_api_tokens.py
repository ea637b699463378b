"""The local stack issues its own API token at start; `triage tokens` changes reach the running functions."""

from __future__ import annotations

import json
import time

import httpx

from tests.functions.tiny_model import build_tiny_model_dir, png_bytes
from triage.cli import main
from triage.stack import Stack, StackConfig, StackPorts
from triage.tokens import local_table


def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_the_stack_token_is_accepted_and_tokens_added_or_revoked_apply_live(tmp_path, capsys, monkeypatch) -> None:
    model = build_tiny_model_dir(tmp_path / "model")
    config = StackConfig(run_dir=tmp_path / "run", model_uri=str(model), functions=("predict", "explain"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False,
                         extra_env={"API_TOKENS_REFRESH_S": "0.5", "THREADS": "2"})
    with Stack(config, echo=None) as stack:
        table = local_table(stack.config.run_dir)
        assert stack.api_token and stack.api_token not in table.read_text()  # hashes only
        with httpx.Client(base_url=stack.urls["gateway"], timeout=30) as client:
            image = {"content": png_bytes(), "headers": {"Content-Type": "image/png"}}
            for path in ("/predict", "/explain"):
                refused = client.post(path, **image)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
                assert client.post(path, content=png_bytes(),
                                   headers={"Content-Type": "image/png", **stack.api_headers}).status_code == 200

            monkeypatch.setenv("RUN_DIR", str(stack.config.run_dir))  # `triage tokens` finds the stack's table
            assert main(["tokens", "add", "ward-3-viewer", "--json"]) == 0
            token = json.loads(capsys.readouterr().out.splitlines()[-1])["token"]
            bearer = {"Content-Type": "image/png", "Authorization": f"Bearer {token}"}
            wait_for(lambda: client.post("/predict", content=png_bytes(), headers=bearer).status_code == 200)
            assert main(["tokens", "revoke", "ward-3-viewer"]) == 0
            wait_for(lambda: client.post("/predict", content=png_bytes(), headers=bearer).status_code == 403)
            assert client.get(f"{stack.function_urls['predict']}/healthz").status_code == 200  # open
