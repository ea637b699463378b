"""Prometheus metrics of every function, in one registry per process, and their text exposition for /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

__all__ = [
    "COLD_START",
    "DEAD_LETTERS",
    "DICOM_ASSOCIATIONS_REJECTED",
    "DICOM_INSTANCES",
    "DICOM_STORE_SECONDS",
    "EVENTS_PROCESSED",
    "EXPORT_FAILURES",
    "MODEL_INFO",
    "NOT_ASSESSABLE",
    "PREDICTIONS",
    "REQUEST_LATENCY",
    "STEP_SECONDS",
    "UPLOAD_TO_RESULT",
    "URGENT_FLAGGED",
    "dead_letter_exposition",
    "metrics_response",
    "record_model_loaded",
    "record_urgent_flagged",
]

# Buckets around the design's targets: warm predict <= 5 ms p50, < 500 ms end to end.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Upload-to-result: the business metric is "urgent flagged within 60 s", the target p95 <= 2 s.
UPLOAD_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
URGENT_DEADLINE_S = 60.0  # the design's "urgent case flagged within 1 minute of upload"

REQUEST_LATENCY = Histogram(
    "triage_request_duration_seconds",
    "HTTP request latency of a function, by route and status.",
    ["function", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
STEP_SECONDS = Histogram(
    "triage_step_seconds",
    "Seconds of one inference step of the served model (decode, preprocess, predict, explain, postprocess).",
    ["step"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter("triage_predictions_total", "Predictions made, by predicted label.", ["label"])
NOT_ASSESSABLE = Counter(
    "triage_not_assessable_total",
    "Answers with `assessable: false` (the input is no chest radiograph the model can judge; not in predictions).",
)
MODEL_INFO = Gauge("triage_model_info", "The model this process serves (value 1).", ["name", "version", "revision"])
COLD_START = Gauge(
    "triage_cold_start_seconds",
    "Seconds to resolve, download, verify, open and warm up the model in this process.",
)
UPLOAD_TO_RESULT = Histogram(
    "triage_upload_to_result_seconds",
    "Seconds from an object's upload to inference-inputs until its result is written.",
    buckets=UPLOAD_BUCKETS,
)
URGENT_FLAGGED = Counter(
    "triage_urgent_flagged_total",
    "Urgent results written, by whether they were written within 60 s of the upload (the business metric).",
    ["within_60s"],
)
DEAD_LETTERS = Counter(
    "triage_dead_letters_total",
    "Events stored in the dead-letter bucket after every delivery attempt failed, by subscriber.",
    ["subscriber"],
)
EXPORT_FAILURES = Counter(
    "triage_export_failures_total",
    "Results that failed to reach the hospital's PACS (export gave up on them).",
)
# The DICOM receiver (`shared.pacs.receiver`, the one long-running Deployment): its own /metrics port.
DICOM_INSTANCES = Counter(
    "triage_dicom_instances_total",
    "C-STORE requests answered (or aborted) by the DICOM receiver, by outcome: stored, mismatch (0xA900), "
    "unreadable (0xC000), storage_failed (0xA700: the modality resends), too_large (a data set over MAX_INPUT_BYTES: "
    "the association aborted).",
    ["outcome"],
)
DICOM_STORE_SECONDS = Histogram(
    "triage_dicom_store_seconds",
    "Seconds from a C-STORE's data set received to its status (check, decode, store in inference-inputs).",
    buckets=LATENCY_BUCKETS,
)
DICOM_ASSOCIATIONS_REJECTED = Counter(
    "triage_dicom_associations_rejected_total",
    "Associations the DICOM receiver rejected (a calling AE title not allowed, another called AE title, the limit).",
)
EVENTS_PROCESSED = Counter(
    "triage_events_processed_total",
    "CloudEvents handled, by function, type and outcome.",
    ["function", "type", "outcome"],
)

# Series exported at 0 from the start, so the first increment is an increase Prometheus sees (rate / increase
# need two samples of a series; a series born at 1 would hide its first event).
for _label in ("pneumonia", "normal"):
    PREDICTIONS.labels(label=_label)
for _within in ("true", "false"):
    URGENT_FLAGGED.labels(within_60s=_within)


def record_urgent_flagged(upload_to_result_s: float) -> None:
    """Count one urgent result by whether it came within the 60 s of the business metric."""
    within = "true" if upload_to_result_s <= URGENT_DEADLINE_S else "false"
    URGENT_FLAGGED.labels(within_60s=within).inc()


def record_model_loaded(name: str, version: str | None, revision: str, seconds: float) -> None:
    """Export the served model's identity and its cold-start duration."""
    MODEL_INFO.clear()  # one model per process: a reload replaces the old series
    MODEL_INFO.labels(name=name, version=version or "unversioned", revision=revision).set(1)
    COLD_START.set(seconds)


def metrics_response() -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text exposition of this process's metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def dead_letter_exposition() -> bytes:
    """Only `triage_dead_letters_total`, for a process whose /metrics is not this registry's (the local broker)."""
    return generate_latest(REGISTRY.restricted_registry(["triage_dead_letters_total"]))
