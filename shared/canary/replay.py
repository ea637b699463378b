"""The replay canary: before any live traffic, the challenger scores stored uploads offline beside the champion.

`Replayer(storage, settings, model_uri)(state)` loads both model versions (`model_uri` with `{version}`, as the
canary's revisions serve them), picks the cases (`replay_cases`: every labelled upload and the latest N), scores
each with both models through the one scoring path (`score`: the serving model's screen → decode → preprocess →
predict → not-assessable gate → label at its card's threshold, as ingest answers), and returns a `ReplayReport`
that `policy.decide_replay` judges. The champion is re-scored rather than read from the stored results, so both
models are measured by the same code on the same bytes (the stack test checks that the re-scored champion gives
exactly its stored answers). A label is joined to its upload through its request record; labels of synchronous
predict / explain requests have no stored input and are counted, not replayed.

No patient sees a replayed answer: nothing is written anywhere (results, request records, feedback, events);
the report holds counts only, never a key. Inputs are read as ingest reads them; a DICOM is scored as received
(its identifiers never leave this process, and nothing derived from it is kept).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from shared import imaging
from shared.canary.policy import CanaryState, ReplayReport
from shared.config import Settings
from shared.dicom import is_dicom
from shared.errors import NotFound
from shared.modelcard import calibrated_probability
from shared.names import (
    CLASS_NAMES,
    FEEDBACK_BUCKET,
    INPUT_BUCKET,
    POSITIVE,
    RESULT_BUCKET,
    feedback_request_id,
)
from shared.request_records import load_request_record
from shared.storage import Storage, unavailable_on_s3_failure

if TYPE_CHECKING:
    from shared.model import TriageModel

__all__ = ["MAX_LABELS", "NOT_ASSESSABLE", "ReplayCase", "Replayer", "load_model", "replay_cases", "score"]

log = logging.getLogger("triage.canary")

# Labels replayed at most: ~2 reads and 2 scorings each, so a replay stays well inside the canary's request
# timeout (120 s; measured: 200 uploads x 2 models in ~5 s of scoring on a loaded 2-core machine).
MAX_LABELS = 1000
NOT_ASSESSABLE = "not_assessable"  # the answer of a model whose gate refuses the input (no label)
_DICOM_SUFFIXES = (".dcm", ".dicom")  # as ingest: DICOM written without the preamble has no magic to sniff


@dataclass(frozen=True)
class ReplayCase:
    """One stored upload to replay: its INPUT_BUCKET key (never logged) and the radiologist's label, if any."""

    key: str
    truth: str | None = None


def _input_key(record: dict | None) -> str | None:
    """The INPUT_BUCKET key of a request record's result (`inference-results/<key>.json`); None without one."""
    result = (record or {}).get("result")
    prefix = f"s3://{RESULT_BUCKET}/"
    if not isinstance(result, str) or not result.startswith(prefix) or not result.endswith(".json"):
        return None  # predict / explain answered it synchronously: no input was stored
    return result[len(prefix):-len(".json")]


def replay_cases(storage: Storage, uploads: int, *, max_labels: int = MAX_LABELS) -> tuple[list[ReplayCase], int]:
    """(every labelled upload (at most `max_labels` labels) and the latest `uploads` ones, labels whose request
    stored no input).

    A label is joined to its input through the request record (`triage-state/requests/<id>.json`) and its
    result URI: a result for `inference-inputs/<key>` is `inference-results/<key>.json` (docs/contracts.md).
    """
    labelled: dict[str, str] = {}
    without_input = 0
    for key in storage.list_keys(FEEDBACK_BUCKET)[-max_labels:]:
        request_id = feedback_request_id(key)
        if request_id is None:
            continue  # not a label
        label = storage.get_json_object(FEEDBACK_BUCKET, key) or {}
        if label.get("label") not in CLASS_NAMES:
            continue
        input_key = _input_key(load_request_record(storage, request_id))
        if input_key is None:
            without_input += 1
        else:
            labelled[input_key] = str(label["label"])
    recent = sorted(storage.iter_objects(INPUT_BUCKET), key=lambda o: (o.last_modified, o.key), reverse=True)
    unlabelled = [o.key for o in recent[:uploads] if o.key not in labelled]
    cases = [ReplayCase(key, truth) for key, truth in sorted(labelled.items())]
    return cases + [ReplayCase(key) for key in unlabelled], without_input


def score(model: TriageModel, data: bytes, key: str) -> str:
    """The answer `model` gives these stored bytes, as ingest would (the serving model's own steps, without its
    metrics or a request record): a class name, or NOT_ASSESSABLE when its gate refuses the input."""
    content_type = "application/dicom" if is_dicom(data) or key.lower().endswith(_DICOM_SUFFIXES) else None
    header = model.screened_header(data, content_type)  # a burned-in DICOM is refused as ingest refuses it
    chroma = imaging.Chroma()
    image = model.decode(data, content_type, chroma=chroma)
    model_input = model.preprocess(image)
    logits, _, embedding = model.predict(model_input, with_embedding=model.gate is not None)
    verdict = model.assess(chroma.mean, model_input, embedding, source_side=min(image.shape),
                           header_not_chest=header is not None and header.not_chest)
    if not verdict.assessable:
        return NOT_ASSESSABLE  # no label: not flagged, so not a detected pneumonia either
    probability = float(calibrated_probability(logits, model.temperature)[0])
    return CLASS_NAMES[int(probability >= model.threshold)]


def load_model(settings: Settings, model_uri: str, storage: Storage | None = None) -> TriageModel:
    """The serving model class on `model_uri`, loaded now (downloaded into the cache and sha256-verified)."""
    from shared.model import TriageModel

    model = TriageModel(replace(settings, model_uri=model_uri, revision="replay"), storage=storage)
    model.load()
    return model


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {message.splitlines()[0][:300] if message else ''}"


class Replayer:
    """Scores a canary's challenger beside its champion on stored uploads; called once per replay attempt."""

    def __init__(self, storage: Storage, settings: Settings, model_uri: str, *, uploads: int = 200,
                 load: Callable[[str], TriageModel] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if "{version}" not in model_uri:
            raise ValueError(f"replay model URI {model_uri!r} has no {{version}} to fill in")
        self.storage = storage
        self.model_uri = model_uri
        self.uploads = uploads
        self.load = load or (lambda uri: load_model(settings, uri, storage))
        self.clock = clock

    def __call__(self, state: CanaryState) -> ReplayReport:
        started = self.clock()
        champion_version = state.champion_version
        if not champion_version:
            return ReplayReport()  # nothing to compare with: decide_replay holds
        try:
            champion = self.load(self.model_uri.format(version=champion_version))
        except Exception as exc:  # the registry or the champion's files: not the challenger's fault, so hold
            return ReplayReport(champion_version=champion_version, champion_error=_describe(exc))
        try:
            challenger = self.load(self.model_uri.format(version=state.version))
        except Exception as exc:  # the champion loaded from the same place: the challenger's own files are bad
            return ReplayReport(champion_version=champion_version, challenger_error=_describe(exc))
        with unavailable_on_s3_failure("while replaying the canary"):
            cases, without_input = replay_cases(self.storage, self.uploads)
            report = self._score(cases, champion, challenger)
        report = replace(report, champion_version=champion_version, labels_without_input=without_input,
                         seconds=self.clock() - started)
        log.info("canary version=%s replay labelled=%d positives=%d unlabelled=%d errors=%d skipped=%d in %.1f s",
                 state.version, report.labelled, report.positives, report.unlabelled, report.errors,
                 report.skipped, report.seconds)
        return report

    def _score(self, cases: list[ReplayCase], champion: TriageModel, challenger: TriageModel) -> ReplayReport:
        labelled = positives = champion_detected = challenger_detected = unlabelled = agreed = skipped = 0
        correct = {"champion": 0, "challenger": 0}
        errors: Counter[str] = Counter()
        for case in cases:
            try:
                data = self.storage.get_bytes(INPUT_BUCKET, case.key)
            except NotFound:
                skipped += 1  # deleted since it was listed
                continue
            try:
                ours = score(champion, data, case.key)
            except Exception:  # the champion cannot score it either: a bad input, not evidence about the challenger
                ours = None
            try:
                theirs = score(challenger, data, case.key)
            except Exception as exc:
                if ours is not None:
                    errors[type(exc).__name__] += 1
                else:
                    skipped += 1
                continue
            if ours is None:
                skipped += 1
            elif case.truth is None:
                unlabelled += 1
                agreed += int(ours == theirs)
            else:
                labelled += 1
                correct["champion"] += int(ours == case.truth)
                correct["challenger"] += int(theirs == case.truth)
                if case.truth == POSITIVE:
                    positives += 1
                    champion_detected += int(ours == POSITIVE)
                    challenger_detected += int(theirs == POSITIVE)
        return ReplayReport(labelled=labelled, labelled_correct=correct, positives=positives,
                            champion_detected=champion_detected, challenger_detected=challenger_detected,
                            unlabelled=unlabelled, agreed=agreed, errors=sum(errors.values()),
                            error_kinds=dict(errors), skipped=skipped)
