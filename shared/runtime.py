"""The serving model: one ONNX Runtime session per process, with KServe-style load / preprocess / predict / explain.

`get_model(settings)` returns the process's `TriageModel`; functions call `ensure_loaded()` before serving and read
`ready` for `/healthz`. Loading is lazy (first request or first health check) because functions-framework builds the
app in gunicorn's master process and forks workers afterwards: a session created before the fork would lose its
thread pool in the worker.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared import explain as explain_maps
from shared import imaging, metrics
from shared.config import Settings
from shared.errors import InvalidField, NotReady, TriageError
from shared.modelcard import ModelCard, ModelCardError, calibrated_probability

log = logging.getLogger(__name__)

CARD_FILE = "model_card.json"
EXPLAIN_METHODS = ("rollout", "occlusion")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelLoadError(TriageError):
    """The model named by MODEL_URI cannot be found, downloaded, verified or opened (our fault: HTTP 503)."""

    status = 503
    code = "model_unavailable"


@dataclass(frozen=True)
class PreparedImage:
    """A decoded input: the gray image at its own size and the model's input tensor, with their timings."""

    image: np.ndarray  # float32 [H, W] in [0, 1], 0 = black
    model_input: np.ndarray  # float32 [1, S, S], normalized
    decode_ms: float
    preprocess_ms: float

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the input image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class Prediction:
    """One triage answer, serialized by `to_json()` as design §5's predict response."""

    request_id: str
    label: str
    probability: float
    threshold: float
    urgent: bool
    model: dict[str, str | None]  # {"name", "version"}
    timings_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "label": self.label,
            "probability": round(self.probability, 6),
            "threshold": round(self.threshold, 6),
            "urgent": self.urgent,
            "model": dict(self.model),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


@dataclass(frozen=True)
class Explanation:
    """A prediction with a heatmap at the input image's size and its overlay on the image as PNG."""

    prediction: Prediction
    method: str
    heatmap: np.ndarray  # float32 [H, W] in [0, 1]
    overlay_png: bytes = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The prediction's JSON plus `method`, `heatmap_size` [H, W] and `heatmap_png` (base64)."""
        return {
            **self.prediction.to_json(),
            "method": self.method,
            "heatmap_size": [int(self.heatmap.shape[0]), int(self.heatmap.shape[1])],
            "heatmap_png": base64.b64encode(self.overlay_png).decode("ascii"),
        }


@dataclass(frozen=True)
class ResolvedModel:
    """Local files of a model and the version the registry (or the card) gives it."""

    onnx_path: Path
    card: ModelCard
    version: str | None


def _without_credentials(uri: str) -> str:
    """A URI safe to show in errors and logs: `scheme://user:password@host` loses its user part."""
    return re.sub(r"//[^/@]*@", "//", uri)


def _ms(start: float, end: float) -> float:
    return (end - start) * 1000.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_card(path: Path) -> ModelCard:
    try:
        return ModelCard.load(path)
    except ModelCardError as exc:
        raise ModelLoadError(exc.message) from exc


def verify_sha256(onnx_path: Path, card: ModelCard) -> None:
    """Refuse a model file whose sha256 is missing from, or differs from, the model card."""
    expected = card.sha256.get(onnx_path.name)
    if not expected:
        raise ModelLoadError(f"{onnx_path}: the model card lists no sha256 for {onnx_path.name}")
    actual = sha256_file(onnx_path)
    if actual != expected:
        raise ModelLoadError(f"{onnx_path}: sha256 {actual[:12]}... differs from the model card's {expected[:12]}...")


def _card_version(card: ModelCard) -> str | None:
    return None if card.version is None else str(card.version)


def _local_files(path: Path, variant: str) -> tuple[Path, Path]:
    """(onnx file, card file) for a model directory or an .onnx file beside its card."""
    if path.is_dir():
        return path / variant, path / CARD_FILE
    return path, path.parent / CARD_FILE


def _resolve_local(path: Path, variant: str) -> ResolvedModel:
    onnx_path, card_path = _local_files(path, variant)
    if not onnx_path.is_file():
        raise ModelLoadError(f"MODEL_URI {path}: no model file {onnx_path.name}")
    card = _read_card(card_path)
    verify_sha256(onnx_path, card)
    return ResolvedModel(onnx_path, card, _card_version(card))


def _cache_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(directory: Path, variant: str) -> ResolvedModel | None:
    """A complete, verified cached download, or None (a bad cache entry is downloaded again)."""
    if not (directory / variant).is_file() or not (directory / CARD_FILE).is_file():
        return None
    try:
        return _resolve_local(directory, variant)
    except ModelLoadError:
        log.warning("cached model in %s does not verify; downloading it again", directory)
        return None


def _install(source_dir: Path, target: Path, variant: str) -> None:
    """Move a verified download into the cache in one rename, so a crash never leaves half a model there."""
    if _cached(target, variant) is not None:
        return  # another process sharing the cache installed it meanwhile
    if target.exists():
        shutil.rmtree(target)  # a cache entry that failed verification
    try:
        os.replace(source_dir, target)
    except OSError as exc:
        if _cached(target, variant) is None:
            raise ModelLoadError(f"cannot write the model cache {target} ({exc.strerror})") from exc


def _resolve_s3(uri: str, settings: Settings, storage: Any | None) -> ResolvedModel:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ModelLoadError(f"MODEL_URI {uri}: no bucket")
    prefix = prefix.strip("/")
    target = Path(settings.model_cache_dir) / "s3" / _cache_key(uri)
    cached = _cached(target, settings.model_variant)
    if cached is not None:
        return cached
    if storage is None:
        from shared.storage import Storage

        storage = Storage.from_settings(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        for name in (CARD_FILE, settings.model_variant):
            key = f"{prefix}/{name}" if prefix else name
            try:
                data = storage.get_bytes(bucket, key)
            except Exception as exc:  # boto3 raises many kinds; all mean "not there" for the caller
                raise ModelLoadError(f"MODEL_URI {uri}: cannot download s3://{bucket}/{key} ({exc})") from exc
            (staging / name).write_bytes(data)
        resolved = _resolve_local(staging, settings.model_variant)
        _install(staging, target, settings.model_variant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ResolvedModel(target / settings.model_variant, resolved.card, resolved.version)


def _resolve_mlflow(uri: str, settings: Settings) -> ResolvedModel:
    match = _MODELS_URI.match(uri)
    if match is None:
        raise ModelLoadError(f"MODEL_URI {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    import mlflow  # lazily: only processes serving a registry model pay for importing MLflow
    from mlflow.tracking import MlflowClient

    from shared.config import default_tracking_uri

    tracking_uri = settings.mlflow_tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version = match["name"], match["version"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        target = Path(settings.model_cache_dir) / "mlflow" / _cache_key(tracking_uri) / name / str(version)
        cached = _cached(target, settings.model_variant)
        if cached is not None:
            return ResolvedModel(cached.onnx_path, cached.card, str(version))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
        try:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
            downloaded = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(staging))
            )
            _resolve_local(downloaded, settings.model_variant)
            _install(downloaded, target, settings.model_variant)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # MLflow raises MlflowException and transport errors alike
        where = _without_credentials(tracking_uri)
        raise ModelLoadError(
            f"MODEL_URI {uri}: cannot resolve through MLflow at {where} ({_without_credentials(str(exc))})"
        ) from exc
    resolved = _resolve_local(target, settings.model_variant)
    return ResolvedModel(resolved.onnx_path, resolved.card, str(version))


def resolve_model(settings: Settings, *, storage: Any | None = None) -> ResolvedModel:
    """Local files of the model named by `settings.model_uri`, downloaded once into the cache and sha256-verified."""
    uri = settings.model_uri
    if not uri:
        raise ModelLoadError("MODEL_URI is not set: give a model directory, s3://bucket/prefix/ or models:/NAME@ALIAS")
    if uri.startswith("s3://"):
        return _resolve_s3(uri, settings, storage)
    if uri.startswith("models:/"):
        return _resolve_mlflow(uri, settings)
    path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
    if not path.exists():
        raise ModelLoadError(f"MODEL_URI {uri}: no such file or directory")
    return _resolve_local(path, settings.model_variant)


def prepare_image(data: bytes, content_type: str | None, image_size: int, *, max_pixels: int) -> PreparedImage:
    """Decode bytes (PNG / JPEG / DICOM) and build the model input with the training preprocessing."""
    t0 = time.perf_counter()
    image = imaging.decode_image(data, content_type, max_pixels=max_pixels)
    t1 = time.perf_counter()
    model_input = imaging.to_model_input(image, image_size)
    t2 = time.perf_counter()
    return PreparedImage(image=image, model_input=model_input, decode_ms=_ms(t0, t1), preprocess_ms=_ms(t1, t2))


@dataclass(frozen=True)
class CleanUpload:
    """An accepted upload: bytes safe to store (DICOM de-identified) and the image they decode to."""

    data: bytes = field(repr=False)
    content_type: str
    format: str  # png | jpeg | dicom
    image: np.ndarray  # float32 [H, W] in [0, 1]
    deidentified: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def to_json(self) -> dict[str, Any]:
        image = self.image
        return {
            "format": self.format,
            "shape": [int(image.shape[0]), int(image.shape[1])],
            "deidentified": self.deidentified,
            "sha256": self.sha256,
            "stats": {
                name: round(float(fn(image)), 6)
                for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))
            },
        }


_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}


def clean_upload(data: bytes, content_type: str | None, *, max_pixels: int) -> CleanUpload:
    """Validate an upload and strip DICOM patient identifiers (PS3.15 basic profile) before anything stores it.

    The de-identified bytes are decoded again, so what is stored is exactly what was validated.
    """
    image = imaging.decode_image(data, content_type, max_pixels=max_pixels)  # validates type, size, pixels
    kind = imaging.sniff_format(data) or "dicom"  # decode_image only accepts unsniffable bytes as DICOM
    deidentified = False
    if kind == "dicom":
        from shared.dicom import deidentify_bytes

        data = deidentify_bytes(data)
        image = imaging.decode_image(data, "application/dicom", max_pixels=max_pixels)
        deidentified = True
    return CleanUpload(data, _CONTENT_TYPES[kind], kind, image, deidentified)


class TriageModel:
    """The served model: `load()` once, then `preprocess` → `predict` (or `explain`), each step timed."""

    def __init__(
        self,
        settings: Settings,
        *,
        intra_op_threads: int = 1,
        storage: Any | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings
        self.intra_op_threads = intra_op_threads
        self.ready = False
        self.load_seconds: float | None = None
        self.card: ModelCard | None = None
        self.name = "xray-vit"
        self.version: str | None = None
        self._storage = storage
        self._clock = clock
        self._session: Any = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        self._load_error: Exception | None = None
        self._pid: int | None = None

    # --- loading -----------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Resolve, verify and open the model, run one warm-up inference, then set `ready`."""
        import onnxruntime as ort  # imported here so that modules importing runtime stay cheap to import

        start = self._clock()
        resolved = resolve_model(self.settings, storage=self._storage)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(resolved.onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise ModelLoadError(f"{resolved.onnx_path}: onnxruntime cannot open the model ({exc})") from exc
        self._session = session
        self.card = resolved.card
        self.name = resolved.card.name
        self.version = resolved.version
        # Warm up decode and inference (lazy codec imports, ORT's first-run allocations) so the first request is warm.
        warmup = prepare_image(
            imaging.encode_png(np.zeros((8, 8), np.float32)),
            "image/png",
            self.image_size,
            max_pixels=self.settings.max_pixels,
        )
        session.run(None, {self.input_name: warmup.model_input[np.newaxis]})
        self.load_seconds = self._clock() - start
        self._pid = os.getpid()
        self.ready = True
        metrics.record_model_loaded(self.name, self.version, self.settings.revision, self.load_seconds)
        log.info("model %s version %s ready in %.3f s", self.name, self.version, self.load_seconds)

    def ensure_loaded(self, timeout_s: float | None = 120.0) -> None:
        """Load once per process (after a fork too); raise NotReady / ModelLoadError when that is not possible."""
        if self.ready and self._pid == os.getpid():
            return
        self.start_loading()
        loader = self._loader
        if loader is not None:
            loader.join(timeout_s)
        if self.ready and self._pid == os.getpid():
            return
        if self._load_error is not None:
            error = self._load_error
            if isinstance(error, TriageError):
                raise ModelLoadError(error.message) from error
            raise ModelLoadError(f"the model failed to load ({error})") from error
        raise NotReady("the model is still loading; retry shortly")

    def start_loading(self) -> None:
        """Begin loading in a background thread (used by /healthz so that readiness does not wait for traffic)."""
        with self._lock:
            if self._pid is not None and self._pid != os.getpid():
                self.ready, self._session, self._loader = False, None, None  # forked: the session is not ours
            if self.ready or (self._loader is not None and self._loader.is_alive()):
                return
            self._load_error = None
            self._loader = threading.Thread(target=self._load_in_background, name="model-load", daemon=True)
            self._loader.start()

    def _load_in_background(self) -> None:
        try:
            self.load()
        except Exception as exc:  # kept for ensure_loaded to report; the process keeps serving /healthz
            self._load_error = exc
            log.error("model load failed: %s", exc)

    # --- model facts -------------------------------------------------------------------------------------------
    @property
    def loaded_card(self) -> ModelCard:
        if self.card is None:
            raise NotReady("the model is not loaded")
        return self.card

    @property
    def image_size(self) -> int:
        return self.loaded_card.image_size

    @property
    def input_name(self) -> str:
        return str(self.loaded_card.input.get("name", "image"))

    @property
    def threshold(self) -> float:
        return float(self.loaded_card.threshold)

    @property
    def urgent_threshold(self) -> float:
        return float(self.loaded_card.urgent_threshold)

    @property
    def temperature(self) -> float:
        return float(self.loaded_card.temperature)

    @property
    def model_ref(self) -> dict[str, str | None]:
        return {"name": self.name, "version": self.version}

    # --- inference steps ---------------------------------------------------------------------------------------
    def run(self, batch: np.ndarray, *, with_attention: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw ONNX call on float32 [N, 1, S, S]: (logits [N, 2], attention [N, depth, T, T] or None)."""
        if self._session is None:
            raise NotReady("the model is not loaded")
        outputs = ["logits", "attention"] if with_attention else ["logits"]
        result = self._session.run(outputs, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return result[0], (result[1] if with_attention else None)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated pneumonia probability for each image of a float32 [N, 1, S, S] batch."""
        logits, _ = self.run(batch)
        return np.asarray(calibrated_probability(logits, self.temperature), dtype=np.float64)

    def preprocess(self, data: bytes, content_type: str | None = None) -> PreparedImage:
        """Bytes → decoded image + model input (raises ImageError 400 / UnsupportedMediaType 415 / 413)."""
        self.ensure_loaded()
        return prepare_image(data, content_type, self.image_size, max_pixels=self.settings.max_pixels)

    def _postprocess(self, probability: float, request_id: str | None, timings: dict[str, float]) -> Prediction:
        label = "pneumonia" if probability >= self.threshold else "normal"
        metrics.PREDICTIONS.labels(label=label).inc()
        return Prediction(
            request_id=request_id or uuid.uuid4().hex,
            label=label,
            probability=probability,
            threshold=self.threshold,
            urgent=probability >= self.urgent_threshold,
            model=self.model_ref,
            timings_ms=timings,
        )

    def _timings(self, prepared: PreparedImage, inference_ms: float, **extra: float) -> dict[str, float]:
        timings = {"decode": prepared.decode_ms, "preprocess": prepared.preprocess_ms, "inference": inference_ms}
        timings.update(extra)
        timings["total"] = sum(timings.values())
        return timings

    def predict(self, prepared: PreparedImage, request_id: str | None = None) -> Prediction:
        """Calibrated probability, label at the card's threshold, urgency, model and timings."""
        t0 = self._clock()
        probability = float(self.probabilities(prepared.model_input[np.newaxis])[0])
        return self._postprocess(probability, request_id, self._timings(prepared, _ms(t0, self._clock())))

    def explain(self, prepared: PreparedImage, method: str = "rollout", request_id: str | None = None) -> Explanation:
        """Prediction plus a heatmap (attention rollout or occlusion sensitivity) at the input image's size."""
        if method not in EXPLAIN_METHODS:
            raise InvalidField(f"method: {method!r} is not one of {', '.join(EXPLAIN_METHODS)}")
        self.ensure_loaded()
        t0 = self._clock()
        logits, attention = self.run(prepared.model_input[np.newaxis], with_attention=True)
        probability = float(calibrated_probability(logits, self.temperature)[0])
        t1 = self._clock()
        heatmap = explain_maps.resize_map(self.saliency_map(prepared.model_input, method, attention[0]), prepared.size)
        overlay = explain_maps.overlay_png(prepared.image, heatmap)
        timings = self._timings(prepared, _ms(t0, t1), explain=_ms(t1, self._clock()))
        return Explanation(self._postprocess(probability, request_id, timings), method, heatmap, overlay)

    def saliency_map(self, model_input: np.ndarray, method: str, attention: np.ndarray | None = None) -> np.ndarray:
        """The raw map of one model input [1, S, S] in [0, 1]: rollout [G, G] or occlusion [S, S].

        The benchmark scores these with `shared.explain.deletion_insertion_auc(model.probabilities, ...)`.
        `attention` [depth, T, T] saves a second ONNX call when the caller already has it.
        """
        if method == "rollout":
            if attention is None:
                attention = self.run(model_input[np.newaxis], with_attention=True)[1][0]
            return explain_maps.attention_rollout(attention)
        if method == "occlusion":
            patch = int(self.loaded_card.config.get("patch") or max(1, self.image_size // 7))
            return explain_maps.occlusion_map(self.probabilities, model_input, patch=patch)
        raise InvalidField(f"method: {method!r} is not one of {', '.join(EXPLAIN_METHODS)}")

    def triage(self, data: bytes, content_type: str | None = None, request_id: str | None = None) -> Prediction:
        """preprocess + predict in one call (what ingest and the review page need)."""
        return self.predict(self.preprocess(data, content_type), request_id)


_MODELS: dict[tuple[str | None, str, str], TriageModel] = {}
_MODELS_LOCK = threading.Lock()


def get_model(settings: Settings) -> TriageModel:
    """The process's one TriageModel for `settings.model_uri` (created on first call, loaded by ensure_loaded)."""
    key = (settings.model_uri, settings.model_variant, str(settings.model_cache_dir))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            threads = max(1, settings.ort_intra_op_threads)
            model = _MODELS[key] = TriageModel(settings, intra_op_threads=threads)
        return model
