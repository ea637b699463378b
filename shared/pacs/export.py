"""Results back to the PACS: `triage.prediction.created` for a DICOM input → an SR and a Secondary Capture in the
original study, sent by STOW-RS or C-STORE (`shared.pacs.send`). The radiologist sees in the PACS either the
pneumonia / normal prediction or that the AI could not assess the image.

Per event, in this order:
1. only a stored (`status` ok) prediction of an object in `inference-inputs` is exported: assessable (with its
   label, probability and threshold; one without them is `skipped` as `incomplete_prediction`) or not assessable
   (`assessable: false`); anything else is `skipped` (200, final), and so is every event where no PACS is
   configured (counted, and logged);
2. the ORIGINAL instance is read from `inference-inputs` (exactly the version the prediction was made from:
   If-Match on the etag; replaced → `skipped`, the newer version has its own prediction; gone → `skipped`);
   not DICOM (a PNG upload) → `skipped`. Its patient and study attributes go only into the two instances sent
   to the hospital's PACS: never into a result, a log line or a metric;
3. the SR (`shared.pacs.sr.measurement_report`) and, when the heatmap is stored, the Secondary Capture, with
   UIDs derived from the input's SOPInstanceUID and the model version: a redelivery replaces, never duplicates.
   Not assessable: the SR alone (pneumonia Indeterminate and the gate's reason; no heatmap exists, none is read);
4. sent, up to `attempts` times with doubling backoff; then PacsUnavailable (503) / PacsRejected (502) and the
   broker delivers the event again, then dead-letters it. S3 failures are 503 too.
Counters: `triage_export_total{method,outcome}` (exported and each skip reason),
`triage_export_failures_total` (deliveries that failed: 5xx) and `triage_export_attempt_failures_total{method,reason}`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from shared import metrics
from shared.dicom import DeidentificationNotConfigured, is_dicom, read_dataset
from shared.errors import ImageError, NotFound, TriageError
from shared.events import CloudEvent, event_data
from shared.names import INPUT_BUCKET, PREDICTION_CREATED, RESULT_BUCKET, heatmap_key, key_ref
from shared.pacs.send import Sender
from shared.pacs.sr import Finding, heatmap_secondary_capture, measurement_report
from shared.storage import Stale, Storage, unavailable_on_s3_failure

__all__ = ["ATTEMPT_FAILURES", "EXPORTS", "ExportOutcome", "export_prediction"]

log = logging.getLogger(__name__)

EXPORTS = Counter("triage_export_total", "Prediction events handled by export, by method and outcome "
                  "(exported, or the reason it was skipped).", ["method", "outcome"])
# Each failed try, by method and reason; `shared.metrics.EXPORT_FAILURES` (triage_export_failures_total, alerted
# on) counts each delivery that failed after all its tries (the broker delivers it again, then dead-letters it).
ATTEMPT_FAILURES = Counter("triage_export_attempt_failures_total", "Tries to send results to the PACS that "
                           "failed, by method and reason.", ["method", "reason"])
_DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class ExportOutcome:
    """`exported` (with the SOP Instance UIDs sent) or `skipped` (with the reason); never an identifier."""

    status: str
    reason: str | None = None
    instances: tuple[str, ...] = ()
    study_instance_uid: str | None = None  # a UID, not an identifier of the patient; the PACS needs it to find it

    def to_json(self) -> dict[str, Any]:
        body = {"status": self.status, "reason": self.reason, "instances": list(self.instances) or None,
                "study_instance_uid": self.study_instance_uid}
        return {k: v for k, v in body.items() if v is not None}


def _skip(method: str, reason: str) -> ExportOutcome:
    EXPORTS.labels(method=method, outcome=reason).inc()
    metrics.EVENTS_PROCESSED.labels(function="export", type=PREDICTION_CREATED, outcome="skipped").inc()
    return ExportOutcome("skipped", reason)


def export_prediction(
    storage: Storage,
    event: CloudEvent,
    *,
    sender: Sender | None,
    secret: str | None,
    attempts: int = 1,
    backoff_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ExportOutcome:
    """Export one `triage.prediction.created` event (see the module docstring for the order and the guarantees)."""
    data = event_data(event, "bucket", "key", "etag")
    method = sender.method if sender is not None else "none"
    if data.get("status") != "ok" or data.get("bucket") != INPUT_BUCKET:
        return _skip(method, "not_a_stored_prediction")
    assessable = data.get("assessable") is not False
    if assessable and (data.get("label") is None or data.get("probability") is None or data.get("threshold") is None):
        return _skip(method, "incomplete_prediction")
    if not secret:
        raise DeidentificationNotConfigured("DEID_SECRET is not set: result UIDs cannot be derived")
    if sender is None:  # an installation without a PACS (the worklist only): nothing to retry, nothing lost
        log.warning("no PACS configured (PACS_STOW_URL, or PACS_HOST with EXPORT_METHOD=cstore): not exported")
        return _skip(method, "no_pacs_configured")
    with unavailable_on_s3_failure("while exporting"):
        source, heatmap = _read_inputs(storage, data, heatmap=assessable)
    if isinstance(source, str):
        return _skip(method, source)
    finding = Finding.from_result(data)
    datasets = [measurement_report(source, finding, secret=secret)]
    if heatmap is not None:
        datasets.append(heatmap_secondary_capture(source, heatmap, finding, secret=secret))
    _send(sender, datasets, attempts=attempts, backoff_s=backoff_s, sleep=sleep)
    EXPORTS.labels(method=method, outcome="exported").inc()
    metrics.EVENTS_PROCESSED.labels(function="export", type=PREDICTION_CREATED, outcome="exported").inc()
    log.info("exported %d instances for %s (model v%s%s) by %s", len(datasets),
             key_ref(INPUT_BUCKET, str(data["key"])), finding.model_version,
             "" if finding.assessable else f", not assessable: {finding.reason_code}", method)
    return ExportOutcome("exported", instances=tuple(str(ds.SOPInstanceUID) for ds in datasets),
                         study_instance_uid=str(source.StudyInstanceUID))


def _read_inputs(storage: Storage, data: Mapping[str, Any], *, heatmap: bool) -> tuple[Any, bytes | None]:
    """(the original Dataset, the heatmap PNG or None; not read unless `heatmap`), or (a skip reason, None)."""
    key = str(data["key"])
    try:
        stored = storage.get_object(INPUT_BUCKET, key, if_match=str(data["etag"]))
    except Stale:
        return "replaced", None
    except NotFound:
        return "gone", None
    if not (is_dicom(stored.data) or key.lower().endswith(_DICOM_SUFFIXES)):
        return "not_dicom", None
    try:
        source = read_dataset(stored.data, force=not is_dicom(stored.data))
    except ImageError:
        return "not_dicom", None
    if not source.get("SOPInstanceUID") or not source.get("StudyInstanceUID"):
        return "no_uids", None
    if not heatmap:
        return source, None
    try:
        return source, storage.get_bytes(RESULT_BUCKET, heatmap_key(key))
    except NotFound:
        return source, None  # the SR alone: the finding matters more than its picture


def _send(sender: Sender, datasets: list[Any], *, attempts: int, backoff_s: float,
          sleep: Callable[[float], None]) -> None:
    for attempt in range(1, attempts + 1):
        try:
            sender.send(datasets)
            return
        except TriageError as exc:
            ATTEMPT_FAILURES.labels(method=sender.method, reason=exc.code).inc()
            if attempt == attempts:
                metrics.EXPORT_FAILURES.inc()
                log.warning("export by %s failed after %d attempts: %s", sender.method, attempts, exc.code)
                raise
            sleep(backoff_s * 2 ** (attempt - 1))
