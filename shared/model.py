"""The serving model: one ONNX Runtime session per process, its inference steps written once (as KServe's Model).

`model(data, content_type, explain=None, request_id=None)` runs decode → preprocess → predict → (explain) →
postprocess, each step timed into `triage_step_seconds{step}` and into the answer's `timings_ms`. `get_model(settings)`
returns the process's `TriageModel`; functions read `ready` for `/healthz`. Loading is lazy (first request or first
health check) because functions-framework builds the app in gunicorn's master process and forks workers afterwards:
a session created before the fork would lose its thread pool in the worker.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np

from shared import explain as saliency
from shared import imaging, metrics
from shared.config import Settings
from shared.dicom import BurnedInAnnotation, burned_in_annotation
from shared.errors import InvalidField, NotReady, TriageError
from shared.model_store import ModelLoadError, resolve_model
from shared.modelcard import ModelCard, calibrated_probability

__all__ = ["EXPLAIN_METHODS", "Explanation", "Prediction", "TriageModel", "get_model"]

log = logging.getLogger(__name__)

EXPLAIN_METHODS = ("rollout", "occlusion")
# The steps' names in `timings_ms` where they differ from the histogram's (the response has always said "inference").
_TIMING_KEYS = {"predict": "inference"}


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
    # Mean brightness in [0, 1] of what the model saw: ingest stores it for the monitor's input drift (not in to_json).
    mean_intensity: float = 0.0
    # BurnedInAnnotation YES under BURNED_IN_ANNOTATION=mark: said in the answer, and the heatmap shows no pixels.
    burned_in_annotation: bool = False

    def to_json(self) -> dict[str, Any]:
        marked = {"burned_in_annotation": True} if self.burned_in_annotation else {}
        return {
            "request_id": self.request_id,
            "label": self.label,
            "probability": round(self.probability, 6),
            "threshold": round(self.threshold, 6),
            "urgent": self.urgent,
            "model": dict(self.model),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            **marked,
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


class _StepTimer:
    """Times each step into the histogram and (all but postprocess) into the answer's timings in ms."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.timings_ms: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = self.clock()
        yield
        seconds = self.clock() - start
        metrics.STEP_SECONDS.labels(step=name).observe(seconds)
        if name != "postprocess":  # postprocess writes the timings: its own time is in the histogram only
            self.timings_ms[_TIMING_KEYS.get(name, name)] = seconds * 1000.0


class TriageModel:
    """The served model: `load()` once, then call it; `ready` says whether it can answer."""

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
        import onnxruntime as ort  # imported here so that modules importing the model stay cheap to import

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
        warmup = self.decode(imaging.encode_png(np.zeros((8, 8), np.float32)), "image/png")
        self.run(self.preprocess(warmup)[np.newaxis])
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

    # --- the inference order, written once ---------------------------------------------------------------------
    @overload
    def __call__(
        self,
        data: bytes,
        content_type: str | None = None,
        *,
        explain: None = None,
        request_id: str | None = None,
        on_prediction: Callable[[Prediction], None] | None = None,
    ) -> Prediction: ...

    @overload
    def __call__(
        self,
        data: bytes,
        content_type: str | None = None,
        *,
        explain: str,
        request_id: str | None = None,
        on_prediction: Callable[[Prediction], None] | None = None,
    ) -> Explanation: ...

    def __call__(
        self,
        data: bytes,
        content_type: str | None = None,
        *,
        explain: str | None = None,
        request_id: str | None = None,
        on_prediction: Callable[[Prediction], None] | None = None,
    ) -> Prediction | Explanation:
        """decode → preprocess → predict → postprocess → (explain: "rollout" | "occlusion").

        The prediction is complete before the heatmap is started: `on_prediction(prediction)` is called with it
        then (ingest writes the flag there, before the picture), and the returned Explanation's prediction is the
        same answer with the explain step's time added to its `timings_ms`.

        Raises ImageError (400; BurnedInAnnotation under BURNED_IN_ANNOTATION=refuse), UnsupportedMediaType (415),
        PayloadTooLarge (413), InvalidField (422: an unknown explain method) and NotReady / ModelLoadError (503).
        The decoded image is at most `imaging.WORKING_SIDE` on its longer side, the heatmap and overlay at that size.
        """
        if explain is not None and explain not in EXPLAIN_METHODS:
            raise InvalidField(f"method: {explain!r} is not one of {', '.join(EXPLAIN_METHODS)}")
        self.ensure_loaded()
        timer = _StepTimer(self._clock)
        with timer.step("decode"):
            marked = self.screen(data, content_type)
            image = self.decode(data, content_type)
        with timer.step("preprocess"):
            model_input = self.preprocess(image)
        with timer.step("predict"):
            logits, attention = self.predict(model_input, with_attention=explain == "rollout")
        with timer.step("postprocess"):
            prediction = self.postprocess(logits, model_input, timer.timings_ms, request_id, burned_in=marked)
        if on_prediction is not None:
            on_prediction(prediction)
        if explain is None:
            return prediction
        with timer.step("explain"):
            heatmap, overlay = self.explain(image, model_input, explain, attention, underlay=not marked,
                                            logits=logits)  # fmt: skip
        timings = {**prediction.timings_ms, "explain": timer.timings_ms["explain"]}
        timings["total"] = timings.get("total", 0.0) + timings["explain"]
        return Explanation(replace(prediction, timings_ms=timings), explain, heatmap, overlay)

    # --- the steps -----------------------------------------------------------------------------------------------
    def screen(self, data: bytes, content_type: str | None = None) -> bool:
        """True when a DICOM's pixels carry burned-in text and the operator marks such images
        (BURNED_IN_ANNOTATION=mark); BurnedInAnnotation (400) when the operator refuses them (the default)."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        kind = imaging.sniff_format(data)
        if not data or not (kind == "dicom" or (kind is None and media == "application/dicom")):
            return False
        if not burned_in_annotation(data):
            return False
        if self.settings.burned_in_annotation == "mark":
            return True
        raise BurnedInAnnotation(
            "DICOM BurnedInAnnotation (0028,0301) is YES: the pixels carry text that may identify the patient, "
            "and this installation refuses such images (BURNED_IN_ANNOTATION=refuse)"
        )

    def decode(self, data: bytes, content_type: str | None = None) -> np.ndarray:
        """PNG / JPEG / DICOM bytes → float32 [H, W] in [0, 1] (ImageError 400 / UnsupportedMediaType 415 / 413)."""
        return imaging.decode_image(data, content_type, max_pixels=self.settings.max_pixels)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Decoded image → the model input float32 [1, S, S], with the training preprocessing."""
        return imaging.to_model_input(image, self.image_size)

    def predict(self, model_input: np.ndarray, *, with_attention: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """One model input [1, S, S] → (logits [1, 2], attention [1, depth, T, T] or None)."""
        return self.run(model_input[np.newaxis], with_attention=with_attention)

    def explain(
        self,
        image: np.ndarray,
        model_input: np.ndarray,
        method: str,
        attention: np.ndarray | None = None,
        *,
        underlay: bool = True,
        logits: np.ndarray | None = None,
    ) -> tuple[np.ndarray, bytes]:
        """(heatmap at the decoded image's size in [0, 1], its overlay as PNG: on the image, or alone without
        `underlay`). The map is computed at the model's resolution; only it is upsampled, to the working size.
        `logits` [1, 2] of the prediction spare occlusion its reference run."""
        reference = None if logits is None else float(calibrated_probability(logits, self.temperature)[0])
        heatmap = saliency.resize_map(
            self.saliency_map(model_input, method, None if attention is None else attention[0], reference=reference),
            (int(image.shape[0]), int(image.shape[1])),
        )
        return heatmap, saliency.overlay_png(image, heatmap, underlay=underlay)

    def postprocess(
        self,
        logits: np.ndarray,
        model_input: np.ndarray,
        timings_ms: dict[str, float],
        request_id: str | None,
        *,
        burned_in: bool = False,
    ) -> Prediction:
        """Calibrated probability, label at the card's threshold, urgency, model and timings (with their total)."""
        probability = float(calibrated_probability(logits, self.temperature)[0])
        label = "pneumonia" if probability >= self.threshold else "normal"
        metrics.PREDICTIONS.labels(label=label).inc()
        return Prediction(
            request_id=request_id or uuid.uuid4().hex,
            label=label,
            probability=probability,
            threshold=self.threshold,
            urgent=probability >= self.urgent_threshold,
            model=self.model_ref,
            timings_ms={**timings_ms, "total": sum(timings_ms.values())},
            mean_intensity=float(imaging.mean_intensity(model_input[np.newaxis])[0]),
            burned_in_annotation=burned_in,
        )

    # --- raw model calls (the steps above, the benchmark and the occlusion map use them) ------------------------
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

    def saliency_map(
        self,
        model_input: np.ndarray,
        method: str,
        attention: np.ndarray | None = None,
        *,
        reference: float | None = None,
    ) -> np.ndarray:
        """The raw map of one model input [1, S, S] in [0, 1]: rollout [G, G] or occlusion [S, S].

        The benchmark scores these with `shared.explain.deletion_insertion_auc(model.probabilities, ...)`.
        `attention` [depth, T, T] saves a second ONNX call when the caller already has it; so does `reference`
        (the input's own probability) for occlusion, whose occluded copies then go through ONNX as one batch.
        """
        if method == "rollout":
            if attention is None:
                attention = self.run(model_input[np.newaxis], with_attention=True)[1][0]
            return saliency.attention_rollout(attention)
        if method == "occlusion":
            patch = int(self.loaded_card.config.get("patch") or max(1, self.image_size // 7))
            # All windows of the default 28 px model in one ONNX run; larger models in batches of about as many pixels.
            batch = max(16, saliency.OCCLUSION_BATCH * 28 * 28 // (self.image_size * self.image_size))
            return saliency.occlusion_map(self.probabilities, model_input, patch=patch, reference=reference,
                                          batch_size=batch)  # fmt: skip
        raise InvalidField(f"method: {method!r} is not one of {', '.join(EXPLAIN_METHODS)}")


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
