"""The serving model: one ONNX Runtime session per process, its inference steps written once (as KServe's Model).

`model(data, content_type, explain=None, request_id=None)` runs decode → preprocess → predict → gate → postprocess →
(explain), each step timed into `triage_step_seconds{step}` and into the answer's `timings_ms`. The gate
(`shared.gate`, its reference in the model card) answers `assessable: false` with a `reason` for an input that is no
chest radiograph the model can judge: no label, no probability, not urgent, no heatmap; a card without one: all are.
`get_model(settings)` returns the process's `TriageModel`; functions read `ready` for `/healthz`. Loading is lazy
(first request or first health check) because functions-framework builds the app in gunicorn's master process and
forks workers afterwards: a session created before the fork would lose its thread pool in the worker.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from shared import imaging, metrics
from shared.config import Settings, disable_onnxruntime_telemetry
from shared.dicom import BurnedInAnnotation, DicomHeader, read_header
from shared.errors import InvalidField, NotReady, TriageError
from shared.gate import ASSESSABLE, NOT_CHEST_HEADER, Gate, Verdict
from shared.model_store import ModelLoadError, ResolvedModel, resolve_model, sha256_file
from shared.modelcard import ModelCard, calibrated_probability

if TYPE_CHECKING:  # imported where used: a prediction needs neither heatmaps nor the micro-batcher (cold start)
    from shared.batching import MicroBatcher

__all__ = ["EXPLAIN_METHODS", "Explanation", "Prediction", "TriageModel", "get_model"]

log = logging.getLogger(__name__)

EXPLAIN_METHODS = ("rollout", "occlusion")
# The steps' names in `timings_ms` where they differ from the histogram's (the response has always said "inference").
_TIMING_KEYS = {"predict": "inference"}


@dataclass(frozen=True)
class Prediction:
    """One triage answer, serialized by `to_json()` as design §5's predict response.

    Not assessable (the gate refused the input): `label` and `probability` are None, `urgent` False, and `reason`
    the gate's code (`shared.gate.REASONS`); the JSON says `"reason": {"code", "message"}`.
    """

    request_id: str
    label: str | None
    probability: float | None
    threshold: float
    urgent: bool
    model: dict[str, str | None]  # {"name", "version"}
    timings_ms: dict[str, float]
    # Mean brightness in [0, 1] of what the model saw: ingest stores it for the monitor's input drift (not in to_json).
    mean_intensity: float = 0.0
    # BurnedInAnnotation YES under BURNED_IN_ANNOTATION=mark: said in the answer, and the heatmap shows no pixels.
    burned_in_annotation: bool = False
    verdict: Verdict = ASSESSABLE  # the gate's: `assessable`, `reason`, the embedding's distance (not in to_json)

    @property
    def assessable(self) -> bool:
        return self.verdict.assessable

    def to_json(self) -> dict[str, Any]:
        marked = {"burned_in_annotation": True} if self.burned_in_annotation else {}
        refused = {} if self.verdict.assessable else {"reason": self.verdict.reason_json()}
        return {
            "request_id": self.request_id,
            "assessable": self.verdict.assessable,
            **refused,
            "label": self.label,
            "probability": None if self.probability is None else round(self.probability, 6),
            "threshold": round(self.threshold, 6),
            "urgent": self.urgent,
            "model": dict(self.model),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            **marked,
        }


@dataclass(frozen=True)
class Explanation:
    """A prediction with a heatmap at the input image's size and its overlay on the image as PNG; without either
    (None) when the input is not assessable: there is no finding to point at."""

    prediction: Prediction
    method: str
    heatmap: np.ndarray | None  # float32 [H, W] in [0, 1]
    overlay_png: bytes | None = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The prediction's JSON plus `method`, `heatmap_size` [H, W] and `heatmap_png` (base64), or null for both."""
        if self.heatmap is None or self.overlay_png is None:
            return {**self.prediction.to_json(), "method": self.method, "heatmap_size": None, "heatmap_png": None}
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
        self._gate: tuple[ModelCard, Gate | None] | None = None  # (the card it was built from, its gate)

    # --- loading -----------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Resolve, verify and open the model, run one warm-up inference, then set `ready`."""
        disable_onnxruntime_telemetry()  # before ONNX Runtime's first session in this process
        import onnxruntime as ort  # imported here so that modules importing the model stay cheap to import

        start = self._clock()
        resolved = resolve_model(self.settings, storage=self._storage)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            graph = _optimized_graph(ort, resolved, Path(self.settings.model_cache_dir)) or resolved.onnx_path
            session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
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

    @property
    def gate(self) -> Gate | None:
        """The loaded card's not-assessable gate for the served variant (None: no gate, every answer assessable)."""
        card = self.loaded_card
        if self._gate is None or self._gate[0] is not card:
            self._gate = (card, card.load_gate(self.settings.model_variant))
        return self._gate[1]

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
        """decode → preprocess → predict → gate → postprocess → (explain: "rollout" | "occlusion").

        The prediction is complete before the heatmap is started: `on_prediction(prediction)` is called with it
        then (ingest writes the flag there, before the picture), and the returned Explanation's prediction is the
        same answer with the explain step's time added to its `timings_ms`. An input the gate refuses is a valid
        request: its answer says `assessable: false` and why, and its Explanation has no heatmap (no explain step).

        Raises ImageError (400; BurnedInAnnotation under BURNED_IN_ANNOTATION=refuse), UnsupportedMediaType (415),
        PayloadTooLarge (413), InvalidField (422: an unknown explain method) and NotReady / ModelLoadError (503).
        The decoded image is at most `imaging.WORKING_SIDE` on its longer side, the heatmap and overlay at that size.
        """
        if explain is not None and explain not in EXPLAIN_METHODS:
            raise InvalidField(f"method: {explain!r} is not one of {', '.join(EXPLAIN_METHODS)}")
        self.ensure_loaded()
        timer = _StepTimer(self._clock)
        gate = self.gate
        chroma = imaging.Chroma()
        with timer.step("decode"):
            header = self.screened_header(data, content_type)
            marked = header is not None and header.burned_in
            image = self.decode(data, content_type, chroma=chroma)
        with timer.step("preprocess"):
            model_input = self.preprocess(image)
        with timer.step("predict"):
            logits, attention, embedding = self.predict(model_input, with_attention=explain == "rollout",
                                                        with_embedding=gate is not None)  # fmt: skip
        with timer.step("gate"):
            verdict = self.assess(chroma.mean, model_input, embedding, source_side=min(image.shape),
                                  header_not_chest=header is not None and header.not_chest)
        with timer.step("postprocess"):
            prediction = self.postprocess(logits, model_input, timer.timings_ms, request_id, burned_in=marked,
                                          verdict=verdict)  # fmt: skip
        if on_prediction is not None:
            on_prediction(prediction)
        if explain is None:
            return prediction
        if not verdict.assessable:
            return Explanation(prediction, explain, None, None)
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
        header = self.screened_header(data, content_type)
        return header is not None and header.burned_in

    def screened_header(self, data: bytes, content_type: str | None = None) -> DicomHeader | None:
        """The header facts of a DICOM input (`shared.dicom.read_header`; None for any other input), once the
        operator's burned-in policy passed it: BurnedInAnnotation (400) under BURNED_IN_ANNOTATION=refuse."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        kind = imaging.sniff_format(data)
        if not data or not (kind == "dicom" or (kind is None and media == "application/dicom")):
            return None
        header = read_header(data)
        if header.burned_in and self.settings.burned_in_annotation != "mark":
            raise BurnedInAnnotation(
                "DICOM BurnedInAnnotation (0028,0301) is YES: the pixels carry text that may identify the patient, "
                "and this installation refuses such images (BURNED_IN_ANNOTATION=refuse)"
            )
        return header

    def decode(self, data: bytes, content_type: str | None = None, *,
               chroma: imaging.Chroma | None = None) -> np.ndarray:
        """PNG / JPEG / DICOM bytes → float32 [H, W] in [0, 1] (ImageError 400 / UnsupportedMediaType 415 / 413);
        a colour source's channel spread goes into `chroma` (the gate's `not_grayscale` check)."""
        return imaging.decode_image(data, content_type, max_pixels=self.settings.max_pixels, chroma=chroma)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Decoded image → the model input float32 [1, S, S], with the training preprocessing."""
        return imaging.to_model_input(image, self.image_size)

    def predict(
        self, model_input: np.ndarray, *, with_attention: bool = False, with_embedding: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """One model input [1, S, S] → (logits [1, 2], attention [1, depth, T, T] or None, embedding [1, dim] or
        None), from one ONNX run."""
        names = ("logits", *(("attention",) if with_attention else ()), *(("embedding",) if with_embedding else ()))
        outputs = dict(zip(names, self.run_outputs(model_input[np.newaxis], names), strict=True))
        return outputs["logits"], outputs.get("attention"), outputs.get("embedding")

    def assess(self, chroma: float, model_input: np.ndarray, embedding: np.ndarray | None, *,
               source_side: int | None = None, header_not_chest: bool = False) -> Verdict:
        """The gate's verdict (`shared.gate`): the source's colour spread, the model input [1, S, S], its embedding,
        the decoded image's shorter side; a DICOM header naming something else than a frontal chest radiograph
        (`shared.dicom.read_header`) is `header_not_chest` whatever the pixels, with or without a gate."""
        if header_not_chest:
            return NOT_CHEST_HEADER
        gate = self.gate
        if gate is None:
            return ASSESSABLE
        card = self.loaded_card
        return gate(chroma, model_input, embedding, mean=float(card.input["mean"]), std=float(card.input["std"]),
                    source_side=source_side)

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
        from shared import explain as saliency

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
        verdict: Verdict = ASSESSABLE,
    ) -> Prediction:
        """Calibrated probability, label at the card's threshold, urgency, model and timings (with their total).

        Not assessable (`verdict`): no label, no probability, not urgent; counted in `triage_not_assessable_total`
        instead of `triage_predictions_total`.
        """
        probability: float | None = None
        label: str | None = None
        if verdict.assessable:
            probability = float(calibrated_probability(logits, self.temperature)[0])
            label = "pneumonia" if probability >= self.threshold else "normal"
            metrics.PREDICTIONS.labels(label=label).inc()
        else:
            metrics.NOT_ASSESSABLE.inc()
        return Prediction(
            request_id=request_id or uuid.uuid4().hex,
            label=label,
            probability=probability,
            threshold=self.threshold,
            urgent=probability is not None and probability >= self.urgent_threshold,
            model=self.model_ref,
            timings_ms={**timings_ms, "total": sum(timings_ms.values())},
            mean_intensity=float(imaging.mean_intensity(model_input[np.newaxis])[0]),
            burned_in_annotation=burned_in,
            verdict=verdict,
        )

    # --- raw model calls (the steps above, the benchmark and the occlusion map use them) ------------------------
    def run(self, batch: np.ndarray, *, with_attention: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw ONNX call on float32 [N, 1, S, S]: (logits [N, 2], attention [N, depth, T, T] or None)."""
        result = self.run_outputs(batch, ("logits", "attention") if with_attention else ("logits",))
        return result[0], (result[1] if with_attention else None)

    def run_outputs(self, batch: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        """The one raw ONNX call on float32 [N, 1, S, S]: the named outputs (logits, attention, embedding) in order.
        A single image goes through the micro-batcher when PREDICT_BATCH_MAX > 1 (`shared.batching`)."""
        session = self._session
        if session is None:
            raise NotReady("the model is not loaded")
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        if len(feed) == 1 and self.settings.predict_batch_max > 1:
            return _batcher(self, session, names)(feed)
        return session.run(list(names), {self.input_name: feed})

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
        from shared import explain as saliency

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


# Larger graphs (external data) are opened as they are.
_OPTIMIZE_MAX_BYTES = 1 << 30


def _optimized_graph(ort: Any, resolved: ResolvedModel, cache_dir: Path) -> Path | None:
    """The verified model's graph with ONNX Runtime's portable optimizations applied (ORT_ENABLE_EXTENDED: constant
    folding, attention / GELU / LayerNorm fusions; nothing hardware-specific), kept in the model cache per source
    sha256 and ONNX Runtime version; None when it cannot be made (e.g. a read-only cache: the source is opened).

    Optimizing is most of opening a session: the first process on a cache makes the file (once), every later fresh
    process opens it with the same ORT_ENABLE_ALL options, which then only add the hardware-specific layout steps:
    the same outputs, bit for bit, and the session in ~26 ms instead of ~44 ms (README, "cold start"). The file's
    own sha256 is in its name and checked before use, as every model file is."""
    source = resolved.card.sha256.get(resolved.onnx_path.name)  # verified by resolve_model
    if not source or resolved.onnx_path.stat().st_size > _OPTIMIZE_MAX_BYTES:
        return None
    directory = cache_dir / "optimized"
    stem = f"{source[:32]}-onnxruntime-{ort.__version__}"
    for candidate in sorted(directory.glob(f"{stem}-*.onnx")):
        try:
            if sha256_file(candidate).startswith(candidate.stem.rsplit("-", 1)[1]):
                return candidate
            log.warning("optimized graph %s does not verify; making it again", candidate.name)
            candidate.unlink(missing_ok=True)
        except OSError:  # unreadable (another user's cache) or removed meanwhile: make our own
            continue
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=directory, prefix=".optimizing-", suffix=".onnx")
        os.close(handle)
        staging = Path(name)
        try:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(staging)
            ort.InferenceSession(str(resolved.onnx_path), options, providers=["CPUExecutionProvider"])
            target = directory / f"{stem}-{sha256_file(staging)[:32]}.onnx"
            staging.chmod(0o644)  # as readable as the downloaded model beside it (mkstemp makes it 0600)
            os.replace(staging, target)  # whole or not at all: another process may be making the same file
        finally:
            staging.unlink(missing_ok=True)
    except Exception as exc:  # a read-only cache (OSError), or a graph ONNX Runtime cannot save: open the source
        log.info("no optimized graph in %s (%s): the model is optimized at each load", directory, type(exc).__name__)
        return None
    return target


_MODELS: dict[tuple[str | None, str, str], TriageModel] = {}
_MODELS_LOCK = threading.Lock()
# (id of the model, its outputs) → (the session, its batcher); only with PREDICT_BATCH_MAX > 1.
_BATCHERS: dict[tuple[int, tuple[str, ...]], tuple[Any, MicroBatcher]] = {}


def _batcher(model: TriageModel, session: Any, names: tuple[str, ...]) -> MicroBatcher:
    """The model's micro-batcher for its current session and these outputs, made on first use; a reloaded
    session gets a new one (the old one is closed: calls still inside it are answered)."""
    from shared.batching import MicroBatcher

    key = (id(model), names)
    entry = _BATCHERS.get(key)
    if entry is None or entry[0] is not session:
        with _MODELS_LOCK:
            entry = _BATCHERS.get(key)
            if entry is None or entry[0] is not session:
                if entry is not None:
                    entry[1].close()
                input_name, outputs = model.input_name, list(names)
                entry = _BATCHERS[key] = (session, MicroBatcher(
                    lambda rows: session.run(outputs, {input_name: rows}),
                    max_batch=model.settings.predict_batch_max, wait_s=model.settings.predict_batch_wait_ms / 1000.0))
    return entry[1]


def get_model(settings: Settings) -> TriageModel:
    """The process's one TriageModel for `settings.model_uri` (created on first call, loaded by ensure_loaded)."""
    key = (settings.model_uri, settings.model_variant, str(settings.model_cache_dir))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            threads = max(1, settings.ort_intra_op_threads)
            model = _MODELS[key] = TriageModel(settings, intra_op_threads=threads)
        return model
