"""The result as the PACS shows it: a TID 1500 measurement report (Comprehensive SR) and the heatmap as a
Secondary Capture, both in the original study, built with highdicom's typed template objects.

The SR says: pneumonia (SNOMED CT 233604007) present or absent, the calibrated probability, the operating
threshold, the algorithm (the model's name and version), VerificationFlag UNVERIFIED (no radiologist has signed
it), contributing equipment xray-triage with the model version, and a series description saying it is AI
output for decision support. For an input the gate found not assessable (`assessable: false`) the same report
says pneumonia Indeterminate (SNOMED CT 82334004), has no probability or threshold, and carries the gate's reason
as a TEXT Comment (DCM 121106) "Not assessable by AI: <message> (reason <code>)"; there is no Secondary Capture.
The Secondary Capture carries the same notice burned into its pixels (BurnedInAnnotation YES). Patient and
study attributes are copied by highdicom from the ORIGINAL instance (`source`), read at export time; nothing here
stores them elsewhere.

UIDs are deterministic (`result_uid`): a keyed hash of the input's SOPInstanceUID and the model version under
the 2.25 root, so a redelivered event replaces the same instances in the PACS, never adds new ones.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.gate import REASONS
from shared.log_redaction import redact_library_logs
from shared.names import POSITIVE

__all__ = [
    "DEVICE_NAME",
    "PNEUMONIA",
    "SC_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTION",
    "Finding",
    "heatmap_secondary_capture",
    "measurement_report",
    "result_uid",
]

DEVICE_NAME = "xray-triage"
SR_SERIES_DESCRIPTION = "AI output xray-triage - decision support only, not a diagnosis"
SC_SERIES_DESCRIPTION = "AI heatmap xray-triage - decision support only, not a diagnosis"
NOTICE = "AI OUTPUT - DECISION SUPPORT ONLY - NOT FOR DIAGNOSIS"
SR_SERIES_NUMBER = 9901  # high numbers: after the modality's own series in the viewer
SC_SERIES_NUMBER = 9902
MIN_SC_SIDE = 512  # the heatmap is at the model's working size: enlarged so the burned-in notice is legible


def _highdicom() -> Any:
    """highdicom, imported on use, its INFO records off (they name the source's SOP Instance UID and each patient
    attribute copied) and its warnings without the values they quote (`shared.log_redaction`)."""
    import highdicom

    logging.getLogger("highdicom").setLevel(logging.WARNING)
    redact_library_logs("highdicom")
    return highdicom


def _codes() -> dict[str, Any]:
    """The coded concepts of the report (imported on use: highdicom is heavy for a module import)."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return {
        "pneumonia": CodedConcept("233604007", "SCT", "Pneumonia"),
        "chest_xray": CodedConcept("168731009", "SCT", "Standard chest X-ray"),
        "present": codes.SCT.Present,
        "absent": codes.SCT.Absent,
        "indeterminate": codes.SCT.Indeterminate,  # 82334004: the AI could not assess the image
        "comment": codes.DCM.Comment,
        "probability": codes.DCM.Probability,
        "threshold": codes.DCM.ThresholdValue,
        "unity": CodedConcept("1", "UCUM", "no units"),
    }


PNEUMONIA = ("233604007", "SCT")


@dataclass(frozen=True)
class Finding:
    """What the model said about one input: the ingest result's fields the report needs (no identifiers).

    Not assessable (`assessable` False): `present` False, no probability or threshold, and the gate's reason.
    """

    present: bool  # label == pneumonia
    probability: float | None  # calibrated, in [0, 1]; None when not assessable
    threshold: float | None  # the operating threshold the label was decided with; None when not assessable
    model_name: str
    model_version: str
    assessable: bool = True
    reason_code: str | None = None  # shared.gate.REASONS: header_not_chest, not_grayscale, ...
    reason_message: str | None = None

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> Finding:
        """From an ingest result (or the prediction event carrying it)."""
        model = result.get("model") or {}
        name, version = str(model.get("name") or "xray-vit"), str(model.get("version") or "unversioned")
        if result.get("assessable") is False:
            reason = result.get("reason") if isinstance(result.get("reason"), Mapping) else {}
            code = str(reason.get("code") or "unknown")
            message = str(reason.get("message") or REASONS.get(code) or "the gate gave no reason")
            return cls(present=False, probability=None, threshold=None, model_name=name, model_version=version,
                       assessable=False, reason_code=code, reason_message=message)
        return cls(present=result["label"] == POSITIVE, probability=float(result["probability"]),
                   threshold=float(result["threshold"]), model_name=name, model_version=version)

    @property
    def reason_text(self) -> str | None:
        """The SR's Comment for a not-assessable input, None otherwise."""
        return None if self.assessable else f"Not assessable by AI: {self.reason_message} (reason {self.reason_code})"


def result_uid(secret: str, source_sop_instance_uid: str, model_version: str, kind: str) -> str:
    """`2.25.<int>` from HMAC-SHA256(secret, input SOPInstanceUID / model version / kind), 128 bits: the same
    input and model always give the same UID (kind: sr, sr-series, sc, sc-series)."""
    message = f"xray-triage-export/{source_sop_instance_uid}/{model_version}/{kind}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _equipment(finding: Finding) -> Any:
    from highdicom import ContributingEquipment
    from pydicom.sr.codedict import codes

    return ContributingEquipment(
        manufacturer=DEVICE_NAME, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=finding.model_name, software_versions=finding.model_version,
        contribution_description=f"AI triage by {DEVICE_NAME}, model {finding.model_name} v{finding.model_version}")


def measurement_report(source: Any, finding: Finding, *, secret: str) -> Any:
    """A Comprehensive SR (TID 1500) in `source`'s study, new series; `source` is the original pydicom Dataset."""
    hd = _highdicom()

    c = _codes()
    algorithm = hd.sr.AlgorithmIdentification(name=finding.model_name, version=finding.model_version)
    uid = lambda kind: result_uid(secret, str(source.SOPInstanceUID), finding.model_version, kind)  # noqa: E731
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid(secret, DEVICE_NAME, finding.model_version, "device"), name=DEVICE_NAME,
        manufacturer_name=DEVICE_NAME, model_name=f"{finding.model_name} v{finding.model_version}")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))
    if finding.assessable:
        verdict = c["present"] if finding.present else c["absent"]
        measurements = [
            hd.sr.Measurement(name=c["probability"], value=round(float(finding.probability), 6), unit=c["unity"],
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=c["threshold"], value=round(float(finding.threshold), 6), unit=c["unity"],
                              algorithm_id=algorithm),
        ]
    else:
        verdict, measurements = c["indeterminate"], None
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid("tracking"), identifier="AI pneumonia triage"),
        finding_type=c["pneumonia"],
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=c["pneumonia"], value=verdict)],
        measurements=measurements,
    )
    if finding.reason_text is not None:  # TID 1501 has no typed slot for it: a TEXT item in the group
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=c["comment"], value=finding.reason_text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=c["chest_xray"],
                                      imaging_measurements=[group])
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=uid("sr-series"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid("sr"), instance_number=1, manufacturer=DEVICE_NAME, is_complete=True,
        is_final=False, is_verified=False, series_description=SR_SERIES_DESCRIPTION,
        contributing_equipment=[_equipment(finding)])


def _with_notice(overlay_png: bytes, finding: Finding) -> np.ndarray:
    """The overlay as RGB uint8, enlarged to at least MIN_SC_SIDE, with the notice burned into a band at the top."""
    image = Image.open(io.BytesIO(overlay_png)).convert("RGB")
    scale = max(1, -(-MIN_SC_SIDE // min(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    band = max(40, image.height // 12)
    canvas = Image.new("RGB", (image.width, image.height + band), "black")
    canvas.paste(image, (0, band))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, band // 3))
    verdict = "pneumonia" if finding.present else "no pneumonia"
    draw.text((4, 2), NOTICE, fill="yellow", font=font)
    draw.text((4, 2 + band // 2), f"{DEVICE_NAME} {finding.model_name} v{finding.model_version}: {verdict} "
              f"p={finding.probability:.3f} (threshold {finding.threshold:.3f})", fill="yellow", font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _orientation(source: Any) -> tuple[str, str]:
    """The input's PatientOrientation (the overlay keeps its geometry); a PA chest's L\\F when it has none."""
    value = list(source.get("PatientOrientation") or [])
    return (str(value[0]), str(value[1])) if len(value) == 2 else ("L", "F")


def heatmap_secondary_capture(source: Any, overlay_png: bytes, finding: Finding, *, secret: str) -> Any:
    """The heatmap overlay as a Secondary Capture in `source`'s study, new series, notice burned in (an assessable
    finding only: a not-assessable input has no heatmap)."""
    hd = _highdicom()

    if not finding.assessable:
        raise ValueError("a not-assessable finding has no heatmap to export")

    uid = lambda kind: result_uid(secret, str(source.SOPInstanceUID), finding.model_version, kind)  # noqa: E731
    pixels = _with_notice(overlay_png, finding)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=_orientation(source),
        series_instance_uid=uid("sc-series"), series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uid("sc"), instance_number=1, manufacturer=DEVICE_NAME,
        transfer_syntax_uid="1.2.840.10008.1.2.1", contributing_equipment=[_equipment(finding)],
        series_description=SC_SERIES_DESCRIPTION)
    image.BurnedInAnnotation = "YES"
    return image
