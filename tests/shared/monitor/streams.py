"""Prediction events and labels as ingest and feedback write them, for the monitor's tests."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.config import MonitorConfig
from shared.events import NullPublisher, prediction_created_event
from shared.feedback import FeedbackRequest, record_request, submit_feedback
from shared.modelcard import ModelCard
from shared.monitor.predictions import record_prediction
from shared.storage import Storage

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONFIG = MonitorConfig(reference_size=20, min_predictions=20)


def prediction(n: int, probability: float, *, version: str = "3", urgent: bool = False, when: datetime = NOW,
               intensity: float | None = None) -> dict:
    """An ingest result as `triage.prediction.created` carries it (`intensity`: its input's mean intensity)."""
    return {
        **({"input": {"mean_intensity": intensity}} if intensity is not None else {}),
        "request_id": f"req{n}",
        "bucket": "inference-inputs",
        "key": f"scan{n}.png",
        "etag": f"etag{n}",
        "status": "ok",
        "label": "pneumonia" if probability >= 0.5 else "normal",
        "probability": probability,
        "threshold": 0.5,
        "urgent": urgent,
        "model": {"name": "xray-vit", "version": version},
        "completed_at": when.isoformat().replace("+00:00", "Z"),
    }


def send_predictions(storage: Storage, probabilities: list[float], *, start: int = 0, version: str = "3",
                     intensities: list[float] | None = None) -> list[str]:
    outcomes = []
    for offset, p in enumerate(probabilities):
        intensity = intensities[offset] if intensities else None
        event = prediction_created_event(prediction(start + offset, p, version=version, intensity=intensity))
        outcomes.append(record_prediction(storage, CONFIG, event["id"], event.get_data(), now=NOW))
    return outcomes


def label(storage: Storage, request_id: str, predicted: str, truth: str, *, version: str = "3") -> None:
    """A prediction indexed as ingest does it, then a radiologist's label stored as the feedback function does."""
    record_request(
        storage,
        {
            "request_id": request_id,
            "label": predicted,
            "probability": 0.7,
            "model": {"name": "xray-vit", "version": version},
        },
        source="ingest",
    )
    submit_feedback(storage, FeedbackRequest(request_id, truth, "ann", "ann"), NullPublisher())


def spread(n: int, low: float, high: float) -> list[float]:
    """n probabilities evenly over [low, high], every other one first (so any first half spans the range)."""
    return [low + (high - low) * (i + 0.5) / n for i in sorted(range(n), key=lambda i: (i % 2, i))]


def card_with_val(**val: float) -> ModelCard:
    return ModelCard(
        version="3",
        input={"name": "image", "shape": [1, 1, 28, 28], "image_size": 28, "mean": 0.5, "std": 0.5},
        grid=4,
        temperature=1.0,
        threshold=0.5,
        config={},
        sha256={},
        metrics={"val": dict(val)},
    )
