"""The peers `triage bench` measures predict against: `mlflow models serve --env-manager local` on the same ONNX
model, as its (a) onnx flavor (a JSON tensor body: the client preprocesses) and (b) a ten-line pyfunc that decodes
the same PNG (base64 in JSON) with the same preprocessing into the same one-thread ONNX session.

`build_peers(onnx_path, image_size, out_dir)` writes both model folders into the report folder;
`PeerServer(model_dir, port)` starts one server (its cold start: process start to the first 200 on
/invocations) and stops it; `peer_bodies(...)` are the request bodies; `tree_cpu_s(pid)` the CPU seconds of a
process and its children (psutil), for CPU per request.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

__all__ = ["PEERS", "PYFUNC_CODE", "PeerServer", "build_peers", "peer_bodies", "png_peer_model", "tree_cpu_s"]

PEERS = ("mlflow_png_pyfunc", "mlflow_onnx_flavor")  # the model folders' names under <out>/peers/

# The PNG pyfunc (MLflow "models from code"): what a user of MLflow would write around the same model.
PYFUNC_CODE = '''"""base64 PNG in JSON -> the training preprocessing -> the same one-thread ONNX session."""
import base64
import mlflow.pyfunc
import numpy as np
import onnxruntime as ort
from shared.imaging import decode_image, to_model_input


class PngModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(context.artifacts["onnx"], options, providers=["CPUExecutionProvider"])
        self.size, self.name = int(context.model_config["image_size"]), self.session.get_inputs()[0].name

    def predict(self, context, model_input, params=None):
        pngs = model_input["png"] if isinstance(model_input, dict) else model_input["png"].tolist()
        x = np.stack([to_model_input(decode_image(base64.b64decode(str(p)), "image/png"), self.size) for p in pngs])
        return {"logits": self.session.run(["logits"], {self.name: x.astype(np.float32)})[0]}


mlflow.models.set_model(PngModel())
'''


def build_peers(onnx_path: Path, image_size: int, out_dir: Path) -> dict[str, Path]:
    """Write the two peers' MLflow model folders under `out_dir` (replacing old ones): name → folder."""
    import shutil

    import mlflow.onnx
    import mlflow.pyfunc
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    folders = {name: out_dir / name for name in PEERS}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    code = out_dir / "png_pyfunc.py"
    code.write_text(PYFUNC_CODE)
    mlflow.pyfunc.save_model(str(folders["mlflow_png_pyfunc"]), python_model=str(code),
                             artifacts={"onnx": str(onnx_path)}, model_config={"image_size": image_size})
    # The stock flavor, with the session options predict uses (one intra-op thread, CPU).
    mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(folders["mlflow_onnx_flavor"]),
                           onnx_execution_providers=["CPUExecutionProvider"],
                           onnx_session_options={"intra_op_num_threads": 1, "inter_op_num_threads": 1},
                           save_as_external_data=False)
    return folders


def png_peer_model(model_dir: Path) -> Any:
    """The PNG pyfunc loaded in this process (`mlflow.pyfunc.load_model`), for tests and checks."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(model_dir))


def peer_bodies(png: bytes, model_input: np.ndarray) -> dict[str, bytes]:
    """The request body of each peer for one image: base64 PNG, and the preprocessed tensor [1, 1, S, S]."""
    tensor = np.asarray(model_input, np.float32).reshape(1, 1, *model_input.shape[-2:])
    return {
        "mlflow_png_pyfunc": json.dumps({"inputs": {"png": [base64.b64encode(png).decode("ascii")]}}).encode(),
        "mlflow_onnx_flavor": json.dumps({"inputs": {"image": np.round(tensor, 6).tolist()}}).encode(),
    }


def tree_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes and all their children (those alive now)."""
    import psutil

    total, seen = 0.0, set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                if process.pid in seen:
                    continue
                seen.add(process.pid)
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


class PeerServer:
    """`mlflow models serve -m <folder> --env-manager local` on 127.0.0.1:`port`, as a context manager.

    Entering waits for the first 200 on POST /invocations with `body` (`cold_start_s`: from Popen); leaving
    stops the process group.
    """

    def __init__(self, model_dir: Path, port: int, body: bytes, *, log_path: Path | None = None,
                 timeout_s: float = 120.0) -> None:
        self.model_dir, self.port, self.body, self.timeout_s = model_dir, port, body, timeout_s
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}/invocations"
        self.cold_start_s: float | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PeerServer:
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        argv = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "models", "serve", "-m", str(self.model_dir),
                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port)]
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - closed in __exit__
        started = time.perf_counter()
        # The server runs `uvicorn` from PATH: this interpreter's scripts first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        if log is not subprocess.DEVNULL:
            log.close()
        try:
            self._wait_first_answer(started)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_first_answer(self, started: float) -> None:
        assert self.process is not None
        headers = {"Content-Type": "application/json"}
        with httpx.Client(timeout=10) as client:
            while time.perf_counter() - started < self.timeout_s:
                if self.process.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited ({self.process.returncode}) before answering; "
                                       f"see {self.log_path or 'its output'}")
                try:
                    response = client.post(self.url, content=self.body, headers=headers)
                    if response.status_code == 200:
                        self.cold_start_s = time.perf_counter() - started
                        return
                    raise RuntimeError(f"mlflow models serve answered {response.status_code}: {response.text[:300]}")
                except httpx.TransportError:
                    time.sleep(0.02)
        raise RuntimeError(f"mlflow models serve did not answer within {self.timeout_s:g} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __exit__(self, *exc_info: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass
