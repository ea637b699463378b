"""The Open Inference Protocol (KServe v2, REST) on predict, so KServe / Triton clients can call the model.

Routes (`InferenceProtocol.handle`, for any path under `/v2`):

- `GET /v2/health/live`, `GET /v2/health/ready` (ready once the model is loaded; 503 before), `GET /v2`;
- `GET /v2/models/{name}[/versions/{v}]` (metadata), `.../ready`, `POST .../infer`.

The input is the model input the design's route would compute from an image: `image` FP32 `[N, 1, S, S]`
(N ≤ `MAX_BATCH`), the training preprocessing already applied (`(x - mean) / std` of a [0, 1] image, so values
lie in [-1, 1]). Tensors come as JSON (`data`, flat or nested, row-major) or in the binary tensor data extension
(`Inference-Header-Content-Length`, `parameters.binary_data_size`); outputs (`probability`, `logits`, `label`,
`urgent`, `assessable`, `reason`) go back as JSON, or binary where the request asks (`binary_data_output` or an
output's `binary_data`). The not-assessable gate judges each image as on the design's route (its flat and
out-of-distribution checks: a tensor has no colour or source size): refused, its `probability` is NaN (null in
JSON), `label` "" and `urgent` false, `assessable` false and `reason` the gate's code.
Errors take the protocol's form `{"error": "<message>"}`: 400 for a bad request or tensor, 404 for a model not
served here, 401 / 403 / 429 for the API token (`guard`), 503 while the model is not loaded. Health and model
readiness stay open; metadata and inference go through `guard` (the predict route's `@AUTH.require`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flask
import numpy as np

from shared import metrics
from shared.errors import NotFound, TriageError, UserError
from shared.http import Handler, json_response, read_body
from shared.model import TriageModel
from shared.names import REQUEST_ID
from shared.payloads import parse_json

__all__ = ["BINARY_HEADER", "MAX_BATCH", "OUTPUTS", "InferenceProtocol", "Tensor"]

log = logging.getLogger(__name__)

BINARY_HEADER = "Inference-Header-Content-Length"
MAX_BATCH = 64  # images in one infer request: the batch sizes the export checks the graph at (1 … 64)
SERVER_NAME = "xray-triage"
PROTOCOL_VERSION = "2"
# Output name → (datatype, shape after the batch axis); the order of a response's outputs.
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "probability": ("FP32", ()),  # calibrated P(pneumonia), the temperature of the model card applied
    "logits": ("FP32", (2,)),  # raw model logits [normal, pneumonia]
    "label": ("BYTES", ()),  # "pneumonia" | "normal" at the card's threshold; "" when not assessable
    "urgent": ("BOOL", ()),  # probability ≥ the card's urgent threshold; false when not assessable
    "assessable": ("BOOL", ()),  # the not-assessable gate's verdict (`shared.gate`), as the design's route gives it
    "reason": ("BYTES", ()),  # its reason code (`shared.gate.REASONS`) when not assessable, else ""
}
_DTYPES = {"FP32": np.dtype("<f4"), "BOOL": np.dtype("?")}
_MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<action>/ready|/infer)?$")


class ProtocolError(UserError):
    """A request the protocol refuses: 400 with its message."""

    code = "bad_request"


@dataclass(frozen=True)
class Tensor:
    """One named tensor of a request or response."""

    name: str
    datatype: str
    data: np.ndarray  # already of `shape`


@dataclass(frozen=True)
class _Route:
    template: str  # the metrics' route label: never the raw path (unbounded)
    method: str
    action: Callable[[flask.Request, str | None], flask.Response]
    guarded: bool


def _oip_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> flask.Response:
    response = json_response({"error": message}, status)
    response.headers.update(dict(headers or {}))
    return response


def _as_oip_error(response: flask.Response) -> flask.Response:
    """A design-form error answer (`{"error": {"code", "message"}}`, e.g. the API token's) in the protocol's form."""
    if response.status_code < 400 or response.mimetype != "application/json":
        return response
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return response
    kept = {k: v for k, v in response.headers.items() if k in ("WWW-Authenticate", "Retry-After")}
    return _oip_error(response.status_code, str(error.get("message", "")), kept)


class InferenceProtocol:
    """The `/v2` routes of predict over one TriageModel; `guard` wraps the routes that need an API token."""

    def __init__(
        self,
        model: TriageModel,
        *,
        guard: Callable[[Handler], Handler],
        max_body_bytes: int,
        function: str = "predict",
    ) -> None:
        self.model = model
        self.guard = guard
        self.max_body_bytes = max_body_bytes
        self.function = function

    @staticmethod
    def owns(request: flask.Request) -> bool:
        """True for a path this protocol answers (`/v2` and below)."""
        return request.path == "/v2" or request.path.startswith("/v2/")

    # --- routing -------------------------------------------------------------------------------------------------
    def handle(self, request: flask.Request) -> flask.Response:
        """Route, time into `triage_request_duration_seconds` and turn every failure into the protocol's error."""
        start = time.perf_counter()
        template = "/v2/other"
        try:
            route, template, version = self._route(request)
            if route.guarded:
                response = self.guard(lambda req: route.action(req, version))(request)
            else:
                response = route.action(request, version)
            response = _as_oip_error(response)
        except TriageError as exc:
            response = _oip_error(exc.status, exc.message)
        except Exception as exc:  # our fault: type and stack only (a message may quote the request)
            log.error("unhandled %s:\n%s", type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
            response = _oip_error(500, "internal error")
        status = str(response.status_code)
        metrics.REQUEST_LATENCY.labels(function=self.function, route=template, status=status).observe(
            time.perf_counter() - start
        )
        return response

    def _route(self, request: flask.Request) -> tuple[_Route, str, str | None]:
        path = request.path.rstrip("/") or "/"
        fixed = {
            "/v2": _Route("/v2", "GET", self._server_metadata, guarded=True),
            "/v2/health/live": _Route("/v2/health/live", "GET", self._live, guarded=False),
            "/v2/health/ready": _Route("/v2/health/ready", "GET", self._ready, guarded=False),
        }
        version: str | None = None
        route = fixed.get(path)
        if route is None:
            match = _MODEL_PATH.match(path)
            if match is None:
                raise NotFound(f"no route {path} in the inference protocol")
            self._check_model(match["name"], match["version"])
            version = match["version"]
            action = match["action"] or ""
            route = {
                "": _Route("/v2/models/{model}", "GET", self._model_metadata, guarded=True),
                "/ready": _Route("/v2/models/{model}/ready", "GET", self._model_ready, guarded=False),
                "/infer": _Route("/v2/models/{model}/infer", "POST", self._infer, guarded=True),
            }[action]
        if request.method != route.method:
            raise TriageError(f"{request.method} is not allowed on {path}", code="method_not_allowed", status=405)
        return route, route.template, version

    def _check_model(self, name: str, version: str | None) -> None:
        if name != self.model.name:
            raise NotFound(f"model {name[:64]!r} is not served here; this server serves {self.model.name!r}")
        if version is not None:
            served = self._loaded().version or "1"
            if version != served:
                raise NotFound(f"model {name!r} has no version {version[:64]!r} here; it serves version {served!r}")

    def _loaded(self) -> TriageModel:
        self.model.ensure_loaded()
        return self.model

    # --- health and metadata ----------------------------------------------------------------------------------
    def _live(self, request: flask.Request, version: str | None) -> flask.Response:
        return json_response({"live": True})

    def _ready(self, request: flask.Request, version: str | None) -> flask.Response:
        self.model.start_loading()
        if not self.model.ready:
            return _oip_error(503, "the model is not loaded yet")
        return json_response({"ready": True})

    def _model_ready(self, request: flask.Request, version: str | None) -> flask.Response:
        self.model.start_loading()
        if not self.model.ready:
            return _oip_error(503, f"model {self.model.name!r} is not loaded yet")
        return json_response({"name": self.model.name, "ready": True})

    def _server_metadata(self, request: flask.Request, version: str | None) -> flask.Response:
        return json_response({"name": SERVER_NAME, "version": PROTOCOL_VERSION, "extensions": ["binary_tensor_data"]})

    def _model_metadata(self, request: flask.Request, version: str | None) -> flask.Response:
        model = self._loaded()
        size = model.image_size
        card = model.loaded_card
        return json_response(
            {
                "name": model.name,
                "versions": [model.version or "1"],
                "platform": "onnxruntime_onnx",
                "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, size, size]}],
                "outputs": [
                    {"name": name, "datatype": datatype, "shape": [-1, *shape]}
                    for name, (datatype, shape) in OUTPUTS.items()
                ],
                "parameters": {
                    "threshold": model.threshold,
                    "urgent_threshold": model.urgent_threshold,
                    "temperature": model.temperature,
                    "input_mean": float(card.input["mean"]),
                    "input_std": float(card.input["std"]),
                    "max_batch_size": MAX_BATCH,
                },
            }
        )

    # --- inference ----------------------------------------------------------------------------------------------
    def _infer(self, request: flask.Request, version: str | None) -> flask.Response:
        model = self._loaded()
        body = read_body(request, self.max_body_bytes)
        header, binary = _split_body(body, request.headers.get(BINARY_HEADER))
        request_id = _request_id(header.get("id"))
        batch = _image_input(_read_inputs(header, binary), model.image_size)
        wanted = _requested_outputs(header)
        start = time.perf_counter()
        outputs = model.run_outputs(batch, ("logits", "embedding") if model.gate is not None else ("logits",))
        logits, embedding = outputs[0], (outputs[1] if len(outputs) > 1 else None)
        metrics.STEP_SECONDS.labels(step="predict").observe(time.perf_counter() - start)
        start = time.perf_counter()
        # A tensor carries no colour and no source size: the gate's other checks (flat, out of distribution) apply.
        verdicts = [model.assess(0.0, batch[i], None if embedding is None else embedding[i : i + 1])
                    for i in range(len(batch))]  # fmt: skip
        metrics.STEP_SECONDS.labels(step="gate").observe(time.perf_counter() - start)
        start = time.perf_counter()
        predictions = [model.postprocess(logits[i : i + 1], batch[i], {}, request_id, verdict=verdicts[i])
                       for i in range(len(batch))]  # fmt: skip
        values = {
            "probability": np.array([math.nan if p.probability is None else p.probability for p in predictions],
                                    dtype=np.float32),  # fmt: skip
            "logits": np.asarray(logits, dtype=np.float32),
            "label": np.array([(p.label or "").encode() for p in predictions], dtype=object),
            "urgent": np.array([p.urgent for p in predictions], dtype=bool),
            "assessable": np.array([p.assessable for p in predictions], dtype=bool),
            "reason": np.array([(p.verdict.reason or "").encode() for p in predictions], dtype=object),
        }
        outputs = [Tensor(name, OUTPUTS[name][0], values[name]) for name in wanted]
        metrics.STEP_SECONDS.labels(step="postprocess").observe(time.perf_counter() - start)
        answer = {"model_name": model.name, "model_version": model.version or "1", "id": request_id}
        return _infer_response(answer, outputs, _binary_outputs(header, wanted))


# --- request parsing (pure functions: the tests call them without HTTP) --------------------------------------------
def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON header object, the binary tensor data after it)."""
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{BINARY_HEADER}: expected a byte count of at most the body's {len(body)}")
        header_bytes, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        header = parse_json(header_bytes)
    except (UserError, RecursionError) as exc:
        raise ProtocolError("body: the inference request is not valid JSON") from exc
    if not isinstance(header, dict):
        raise ProtocolError('body: expected a JSON object {"inputs": [...]}')
    return header, binary


def _request_id(value: Any) -> str:
    if value is None or value == "":
        return uuid.uuid4().hex
    if not isinstance(value, str) or not REQUEST_ID.match(value):
        raise ProtocolError("id: expected 1 to 64 letters, digits, '.', '_' or '-'")
    return value


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}.parameters: expected an object")
    return params


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"{where}.shape: expected a list of non-negative integers")
    return tuple(value)


def _read_inputs(header: Mapping[str, Any], binary: bytes) -> dict[str, Tensor]:
    """Every input tensor by name, from JSON `data` or its slice of the binary data (in input order)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("inputs: expected a non-empty list of tensors")
    tensors: dict[str, Tensor] = {}
    offset = 0
    for index, item in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"{where}: expected an object with name, datatype, shape and data")
        name, datatype = item["name"][:64], item.get("datatype")
        shape = _shape(item.get("shape"), where)
        if datatype != "FP32":
            raise ProtocolError(f"{where} ({name}): datatype {str(datatype)[:16]!r} is not accepted; send FP32")
        count = math.prod(shape)  # a Python int: no overflow
        size = _parameters(item, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != count * 4 or offset + size > len(binary):
                raise ProtocolError(f"{where} ({name}): binary_data_size must be {count * 4} bytes present in the body")
            data = np.frombuffer(binary, dtype=_DTYPES["FP32"], count=count, offset=offset)
            offset += size
        else:
            data = _json_data(item.get("data"), count, f"{where} ({name})")
        tensors[name] = Tensor(name, datatype, data.reshape(shape))
    if offset != len(binary):
        raise ProtocolError(f"body: {len(binary) - offset} bytes of binary data belong to no input")
    return tensors


def _json_data(value: Any, count: int, where: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise ProtocolError(f"{where}: data must be a (flat or nested) list of numbers") from exc
    if not isinstance(value, list) or array.dtype.kind not in "iuf" or array.size != count:
        raise ProtocolError(f"{where}: data must be a list of {count} numbers (the product of its shape)")
    return array.astype(np.float32).reshape(-1)


def _image_input(tensors: Mapping[str, Tensor], size: int) -> np.ndarray:
    """The `image` input as the model's float32 [N, 1, S, S] batch."""
    unknown = sorted(set(tensors) - {"image"})
    if unknown or "image" not in tensors:
        raise ProtocolError(f"inputs: the model takes one input 'image'; got {[n[:64] for n in tensors]}")
    batch = tensors["image"].data
    if batch.ndim != 4 or batch.shape[1:] != (1, size, size) or not 1 <= batch.shape[0] <= MAX_BATCH:
        raise ProtocolError(
            f"image: shape {list(batch.shape)} is not [N, 1, {size}, {size}] with 1 ≤ N ≤ {MAX_BATCH}"
        )
    if not np.all(np.isfinite(batch)) or batch.min() < -1.0 or batch.max() > 1.0:
        raise ProtocolError("image: values must be finite and in [-1, 1] ((x - 0.5) / 0.5 of a [0, 1] image)")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _requested_outputs(header: Mapping[str, Any]) -> list[str]:
    outputs = header.get("outputs")
    if outputs is None:
        return list(OUTPUTS)
    named = isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    if not named:
        raise ProtocolError("outputs: expected a list of objects with a name")
    names = [o["name"] for o in outputs]
    unknown = [n[:64] for n in names if n not in OUTPUTS]
    if unknown:
        raise ProtocolError(f"outputs: {unknown} are not outputs of the model ({', '.join(OUTPUTS)})")
    return list(dict.fromkeys(names))


def _binary_outputs(header: Mapping[str, Any], wanted: list[str]) -> set[str]:
    """The outputs to send as binary tensor data: all under `binary_data_output`, else those that ask."""
    if _parameters(header, "request").get("binary_data_output") is True:
        return set(wanted)
    outputs = header.get("outputs") or []
    return {o["name"] for o in outputs if _parameters(o, f"outputs ({o['name'][:64]})").get("binary_data") is True}


# --- the response --------------------------------------------------------------------------------------------------
def _raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":  # each element: 4-byte little-endian length, then its bytes
        return b"".join(len(item).to_bytes(4, "little") + item for item in tensor.data.reshape(-1))
    return np.ascontiguousarray(tensor.data, dtype=_DTYPES[tensor.datatype]).tobytes()


def _json_values(tensor: Tensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [item.decode() for item in flat]
    if tensor.datatype == "FP32":  # JSON has no NaN: a not-assessable image's probability is null
        return [None if math.isnan(value) else value for value in flat.tolist()]
    return flat.tolist()


def _infer_response(answer: dict[str, Any], outputs: list[Tensor], binary: set[str]) -> flask.Response:
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.data.shape)}
        if tensor.name in binary:
            chunk = _raw(tensor)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _json_values(tensor)
        described.append(entry)
    header = json.dumps({**answer, "outputs": described}).encode()
    if not chunks:
        return flask.Response(header, status=200, mimetype="application/json")
    response = flask.Response(header + b"".join(chunks), status=200, mimetype="application/octet-stream")
    response.headers[BINARY_HEADER] = str(len(header))
    return response
