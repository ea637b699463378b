"""DICOM: decode pixels for display/model input, and de-identify (PS3.15 basic profile) before storing."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from typing import Any

import numpy as np

from shared.config import DEFAULT_MAX_PIXELS
from shared.errors import ImageError, PayloadTooLarge

__all__ = ["BASIC_PROFILE", "decode_dicom", "deidentify", "deidentify_bytes", "is_dicom", "read_dataset"]


# DICOM PS3.15 Annex E basic application level confidentiality profile, the attributes a chest radiograph
# can carry: (tag, keyword, action). X = remove, Z = keep empty (type 2 attributes stay present, so the file
# stays valid), U = replace the UID with a new one that is consistent within a set of files.
BASIC_PROFILE: tuple[tuple[int, str, str], ...] = (
    (0x00080050, "AccessionNumber", "Z"),
    (0x00184000, "AcquisitionComments", "X"),
    (0x00400555, "AcquisitionContextSequence", "X"),
    (0x00080022, "AcquisitionDate", "X"),
    (0x0008002A, "AcquisitionDateTime", "X"),
    (0x00181400, "AcquisitionDeviceProcessingDescription", "X"),
    (0x00189424, "AcquisitionProtocolDescription", "X"),
    (0x00080032, "AcquisitionTime", "X"),
    (0x00404035, "ActualHumanPerformersSequence", "X"),
    (0x001021B0, "AdditionalPatientHistory", "X"),
    (0x00380010, "AdmissionID", "X"),
    (0x00380020, "AdmittingDate", "X"),
    (0x00081084, "AdmittingDiagnosesCodeSequence", "X"),
    (0x00081080, "AdmittingDiagnosesDescription", "X"),
    (0x00380021, "AdmittingTime", "X"),
    (0x00102110, "Allergies", "X"),
    (0x0040A078, "AuthorObserverSequence", "X"),
    (0x00101081, "BranchOfService", "X"),
    (0x00181007, "CassetteID", "X"),
    (0x00400280, "CommentsOnThePerformedProcedureStep", "X"),
    (0x00209161, "ConcatenationUID", "U"),
    (0x00403001, "ConfidentialityConstraintOnPatientDataDescription", "X"),
    (0x00080023, "ContentDate", "Z"),
    (0x0040A730, "ContentSequence", "X"),
    (0x00080033, "ContentTime", "Z"),
    (0x0018A003, "ContributionDescription", "X"),
    (0x00102150, "CountryOfResidence", "X"),
    (0x00089123, "CreatorVersionUID", "U"),
    (0x00380300, "CurrentPatientLocation", "X"),
    (0x0040A07C, "CustodialOrganizationSequence", "X"),
    (0x0018700A, "DetectorID", "X"),
    (0x00181000, "DeviceSerialNumber", "X"),
    (0x00181002, "DeviceUID", "U"),
    (0x04000100, "DigitalSignatureUID", "X"),
    (0xFFFAFFFA, "DigitalSignaturesSequence", "X"),
    (0x00209164, "DimensionOrganizationUID", "U"),
    (0x00380040, "DischargeDiagnosisDescription", "X"),
    (0x4008011A, "DistributionAddress", "X"),
    (0x40080119, "DistributionName", "X"),
    (0x00102160, "EthnicGroup", "X"),
    (0x00080058, "FailedSOPInstanceUIDList", "U"),
    (0x00402017, "FillerOrderNumberImagingServiceRequest", "Z"),
    (0x00209158, "FrameComments", "X"),
    (0x00200052, "FrameOfReferenceUID", "U"),
    (0x00181008, "GantryID", "X"),
    (0x00181005, "GeneratorID", "X"),
    (0x00404037, "HumanPerformerName", "X"),
    (0x00404036, "HumanPerformerOrganization", "X"),
    (0x00880200, "IconImageSequence", "X"),
    (0x00084000, "IdentifyingComments", "X"),
    (0x00204000, "ImageComments", "X"),
    (0x00284000, "ImagePresentationComments", "X"),
    (0x00402400, "ImagingServiceRequestComments", "X"),
    (0x40080300, "Impressions", "X"),
    (0x00080014, "InstanceCreatorUID", "U"),
    (0x00080012, "InstanceCreationDate", "X"),
    (0x00080013, "InstanceCreationTime", "X"),
    (0x00080081, "InstitutionAddress", "X"),
    (0x00080082, "InstitutionCodeSequence", "X"),
    (0x00080080, "InstitutionName", "X"),
    (0x00081040, "InstitutionalDepartmentName", "X"),
    (0x00101050, "InsurancePlanIdentification", "X"),
    (0x00401011, "IntendedRecipientsOfResultsIdentificationSequence", "X"),
    (0x00083010, "IrradiationEventUID", "U"),
    (0x00380011, "IssuerOfAdmissionID", "X"),
    (0x00100021, "IssuerOfPatientID", "X"),
    (0x00380061, "IssuerOfServiceEpisodeID", "X"),
    (0x001021D0, "LastMenstrualDate", "X"),
    (0x04000404, "MAC", "X"),
    (0x00102000, "MedicalAlerts", "X"),
    (0x00101090, "MedicalRecordLocator", "X"),
    (0x00101080, "MilitaryRank", "X"),
    (0x04000550, "ModifiedAttributesSequence", "X"),
    (0x00203406, "ModifiedImageDescription", "X"),
    (0x00203401, "ModifyingDeviceID", "X"),
    (0x00081060, "NameOfPhysiciansReadingStudy", "X"),
    (0x00401010, "NamesOfIntendedRecipientsOfResults", "X"),
    (0x00102180, "Occupation", "X"),
    (0x00081072, "OperatorIdentificationSequence", "X"),
    (0x00081070, "OperatorsName", "X"),
    (0x04000561, "OriginalAttributesSequence", "X"),
    (0x00402010, "OrderCallbackPhoneNumber", "X"),
    (0x00402008, "OrderEnteredBy", "X"),
    (0x00402009, "OrderEntererLocation", "X"),
    (0x00101000, "OtherPatientIDs", "X"),
    (0x00101002, "OtherPatientIDsSequence", "X"),
    (0x00101001, "OtherPatientNames", "X"),
    (0x0040A07A, "ParticipantSequence", "X"),
    (0x00101040, "PatientAddress", "X"),
    (0x00101010, "PatientAge", "X"),
    (0x00100030, "PatientBirthDate", "Z"),
    (0x00101005, "PatientBirthName", "X"),
    (0x00100032, "PatientBirthTime", "X"),
    (0x00104000, "PatientComments", "X"),
    (0x00100020, "PatientID", "Z"),
    (0x00380400, "PatientInstitutionResidence", "X"),
    (0x00100050, "PatientInsurancePlanCodeSequence", "X"),
    (0x00101060, "PatientMotherBirthName", "X"),
    (0x00100010, "PatientName", "Z"),
    (0x00100101, "PatientPrimaryLanguageCodeSequence", "X"),
    (0x00100102, "PatientPrimaryLanguageModifierCodeSequence", "X"),
    (0x001021F0, "PatientReligiousPreference", "X"),
    (0x00100040, "PatientSex", "Z"),
    (0x00102203, "PatientSexNeutered", "X"),
    (0x00101020, "PatientSize", "X"),
    (0x00380500, "PatientState", "X"),
    (0x00102154, "PatientTelephoneNumbers", "X"),
    (0x00102155, "PatientTelecomInformation", "X"),
    (0x00401004, "PatientTransportArrangements", "X"),
    (0x00101030, "PatientWeight", "X"),
    (0x00400243, "PerformedLocation", "X"),
    (0x00400254, "PerformedProcedureStepDescription", "X"),
    (0x00400253, "PerformedProcedureStepID", "X"),
    (0x00400244, "PerformedProcedureStepStartDate", "X"),
    (0x00400245, "PerformedProcedureStepStartTime", "X"),
    (0x00400241, "PerformedStationAETitle", "X"),
    (0x00404030, "PerformedStationGeographicLocationCodeSequence", "X"),
    (0x00400242, "PerformedStationName", "X"),
    (0x00404028, "PerformedStationNameCodeSequence", "X"),
    (0x00081052, "PerformingPhysicianIdentificationSequence", "X"),
    (0x00081050, "PerformingPhysicianName", "X"),
    (0x00401102, "PersonAddress", "X"),
    (0x00401103, "PersonTelephoneNumbers", "X"),
    (0x40080114, "PhysicianApprovingInterpretation", "X"),
    (0x00081062, "PhysiciansReadingStudyIdentificationSequence", "X"),
    (0x00081048, "PhysiciansOfRecord", "X"),
    (0x00081049, "PhysiciansOfRecordIdentificationSequence", "X"),
    (0x00402016, "PlacerOrderNumberImagingServiceRequest", "Z"),
    (0x00181004, "PlateID", "X"),
    (0x00400012, "PreMedication", "X"),
    (0x001021C0, "PregnancyStatus", "X"),
    (0x00181030, "ProtocolName", "X"),
    (0x00402001, "ReasonForTheImagingServiceRequest", "X"),
    (0x00321030, "ReasonForStudy", "X"),
    (0x04000402, "ReferencedDigitalSignatureSequence", "X"),
    (0x30060024, "ReferencedFrameOfReferenceUID", "U"),
    (0x00081140, "ReferencedImageSequence", "X"),
    (0x00081120, "ReferencedPatientSequence", "X"),
    (0x00081111, "ReferencedPerformedProcedureStepSequence", "X"),
    (0x04000403, "ReferencedSOPInstanceMACSequence", "X"),
    (0x00081155, "ReferencedSOPInstanceUID", "U"),
    (0x00041511, "ReferencedSOPInstanceUIDInFile", "U"),
    (0x00081110, "ReferencedStudySequence", "X"),
    (0x00080092, "ReferringPhysicianAddress", "X"),
    (0x00080096, "ReferringPhysicianIdentificationSequence", "X"),
    (0x00080090, "ReferringPhysicianName", "Z"),
    (0x00080094, "ReferringPhysicianTelephoneNumbers", "X"),
    (0x00102152, "RegionOfResidence", "X"),
    (0x300600C2, "RelatedFrameOfReferenceUID", "U"),
    (0x00400275, "RequestAttributesSequence", "X"),
    (0x00321070, "RequestedContrastAgent", "X"),
    (0x00401400, "RequestedProcedureComments", "X"),
    (0x00321060, "RequestedProcedureDescription", "X"),
    (0x00401001, "RequestedProcedureID", "X"),
    (0x00401005, "RequestedProcedureLocation", "X"),
    (0x00321032, "RequestingPhysician", "X"),
    (0x00321033, "RequestingService", "X"),
    (0x00102299, "ResponsibleOrganization", "X"),
    (0x00102297, "ResponsiblePerson", "X"),
    (0x40084000, "ResultsComments", "X"),
    (0x40080118, "ResultsDistributionListSequence", "X"),
    (0x40080042, "ResultsIDIssuer", "X"),
    (0x300E0008, "ReviewerName", "X"),
    (0x00404034, "ScheduledHumanPerformersSequence", "X"),
    (0x0038001E, "ScheduledPatientInstitutionResidence", "X"),
    (0x0040000B, "ScheduledPerformingPhysicianIdentificationSequence", "X"),
    (0x00400006, "ScheduledPerformingPhysicianName", "X"),
    (0x00400004, "ScheduledProcedureStepEndDate", "X"),
    (0x00400005, "ScheduledProcedureStepEndTime", "X"),
    (0x00400007, "ScheduledProcedureStepDescription", "X"),
    (0x00400011, "ScheduledProcedureStepLocation", "X"),
    (0x00400002, "ScheduledProcedureStepStartDate", "X"),
    (0x00400003, "ScheduledProcedureStepStartTime", "X"),
    (0x00400001, "ScheduledStationAETitle", "X"),
    (0x00404027, "ScheduledStationGeographicLocationCodeSequence", "X"),
    (0x00400010, "ScheduledStationName", "X"),
    (0x00404025, "ScheduledStationNameCodeSequence", "X"),
    (0x00321020, "ScheduledStudyLocation", "X"),
    (0x00321021, "ScheduledStudyLocationAETitle", "X"),
    (0x00080021, "SeriesDate", "X"),
    (0x0008103E, "SeriesDescription", "X"),
    (0x0020000E, "SeriesInstanceUID", "U"),
    (0x00080031, "SeriesTime", "X"),
    (0x00380062, "ServiceEpisodeDescription", "X"),
    (0x00380060, "ServiceEpisodeID", "X"),
    (0x001021A0, "SmokingStatus", "X"),
    (0x00080018, "SOPInstanceUID", "U"),
    (0x00082112, "SourceImageSequence", "X"),
    (0x00380050, "SpecialNeeds", "X"),
    (0x00081010, "StationName", "X"),
    (0x00880140, "StorageMediaFileSetUID", "U"),
    (0x00324000, "StudyComments", "X"),
    (0x00080020, "StudyDate", "Z"),
    (0x00081030, "StudyDescription", "X"),
    (0x00200010, "StudyID", "Z"),
    (0x00320012, "StudyIDIssuer", "X"),
    (0x0020000D, "StudyInstanceUID", "U"),
    (0x00080030, "StudyTime", "Z"),
    (0x00200200, "SynchronizationFrameOfReferenceUID", "U"),
    (0x40004000, "TextComments", "X"),
    (0x20300020, "TextString", "X"),
    (0x00080201, "TimezoneOffsetFromUTC", "X"),
    (0x00880910, "TopicAuthor", "X"),
    (0x00880912, "TopicKeywords", "X"),
    (0x00880906, "TopicSubject", "X"),
    (0x00880904, "TopicTitle", "X"),
    (0x00081195, "TransactionUID", "U"),
    (0x0040A124, "UID", "U"),
    (0x0040A088, "VerifyingObserverIdentificationCodeSequence", "X"),
    (0x0040A075, "VerifyingObserverName", "X"),
    (0x0040A073, "VerifyingObserverSequence", "X"),
    (0x0040A027, "VerifyingOrganization", "X"),
    (0x00384000, "VisitComments", "X"),
)
_ACTIONS = {tag: action for tag, _, action in BASIC_PROFILE}
# Overlays (60xx) can carry burned-in text and curves (50xx) free text: removed whole.
_REPEATING_GROUPS = ((0x5000, 0x50FF), (0x6000, 0x60FF))
_UID_ROOT = "2.25."


def is_dicom(data: bytes) -> bool:
    """True for a DICOM file with its 128-byte preamble and the `DICM` magic (PS3.10); bare data sets say False."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dataset(data: bytes, *, force: bool = False) -> Any:
    """Parse DICOM bytes into a pydicom Dataset; ImageError naming what is wrong."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not data:
        raise ImageError("empty DICOM: no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on harmless non-conformance; errors still raise
            ds = pydicom.dcmread(io.BytesIO(data), force=force)
            # With force, any bytes "parse"; a real data set has elements of the standard groups.
            tags = ds.keys()  # tags only: iterating the Dataset itself would convert every element
            groups = {int(tag) >> 16 for tag in tags}
    except InvalidDicomError as exc:
        raise ImageError(f"not a DICOM file ({exc})") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ImageError(f"unreadable DICOM: {exc or type(exc).__name__}") from exc
    if not groups & {0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0}:
        raise ImageError("not a DICOM file (no standard DICOM elements)")
    return ds


def _output_range(ds: Any) -> tuple[float, float]:
    """Range of the modality-LUT output for the stored bit depth (what pydicom's windowing maps onto)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def decode_dicom(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """DICOM bytes → 2-D float32 in [0, 1], 0 = black: modality LUT (rescale), VOI LUT or window, MONOCHROME1 flip.

    The first frame of a multi-frame image is used; colour images become luminance.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    has_preamble = is_dicom(data)
    ds = read_dataset(data, force=not has_preamble)
    if "PixelData" not in ds:
        raise ImageError("DICOM has no pixel data (PixelData element missing)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, ValueError, TypeError) as exc:
        raise ImageError(f"DICOM image attributes missing or invalid: {exc}") from exc
    if rows * cols * frames > max_pixels:
        raise PayloadTooLarge(
            f"DICOM declares {cols}x{rows}x{frames} = {rows * cols * frames} pixels, over the limit of {max_pixels}"
        )
    if rows == 0 or cols == 0:
        raise ImageError(f"DICOM declares an empty image ({cols}x{rows})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken pixel data (ValueError, KeyError, ...)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        named = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__  # one line: plugins answer in several
        raise ImageError(f"DICOM pixel data in {named} cannot be decoded: {reason}") from exc
    if frames > 1:
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples == 3 or arr.ndim == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        rgb = arr.astype(np.float64) / float(2 ** int(ds.get("BitsStored", 8)) - 1)
        gray = rgb @ np.array([0.299, 0.587, 0.114])
        return np.clip(gray, 0.0, 1.0).astype(np.float32)
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"):
        raise ImageError(f"DICOM photometric interpretation {photometric!r} is not supported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = apply_modality_lut(arr, ds)
        lo, hi = _output_range(ds)
        if ds.get("VOILUTSequence"):
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
                values = values.astype(np.int64)  # the LUT indexes integers
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            lo, hi = 0.0, float(2 ** int(descriptor[2]) - 1)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            values = apply_voi_lut(values, ds, index=0, prefer_lut=False)
    image = (np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    image = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        image = 1.0 - image  # MONOCHROME1: the lowest value is white
    return image.astype(np.float32)


def _new_uid(old: str, salt: str) -> str:
    """A UID derived from the old one and a salt: the same input UID maps to the same output within a set."""
    digest = hashlib.sha256(f"{salt}:{old}".encode()).digest()
    return _UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def deidentify(ds: Any, *, salt: str = "xray-triage") -> Any:
    """Apply the basic profile to `ds` in place (nested sequences too), drop private tags; return `ds`.

    UIDs are replaced consistently (same salt → same mapping), so series and studies stay linked.
    Pass a secret `salt` per deployment so UIDs cannot be re-linked by hashing known originals.
    """

    def scrub(dataset: Any, element: Any) -> None:
        tag = int(element.tag)
        group = tag >> 16
        if any(lo <= group <= hi for lo, hi in _REPEATING_GROUPS):
            del dataset[element.tag]
            return
        action = _ACTIONS.get(tag)
        if action is None:
            return
        if action == "X":
            del dataset[element.tag]
        elif action == "Z":
            element.value = [] if element.VR == "SQ" else ""
        elif action == "U" and element.value:
            if element.VM > 1:
                element.value = [_new_uid(str(v), salt) for v in element.value]
            else:
                element.value = _new_uid(str(element.value), salt)

    ds.remove_private_tags()
    ds.walk(scrub, recursive=True)
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        sop = ds.get("SOPInstanceUID")
        ds.file_meta.MediaStorageSOPInstanceUID = sop or _new_uid(str(ds.file_meta.MediaStorageSOPInstanceUID), salt)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "xray-triage: DICOM PS3.15 basic profile, private tags removed"
    return ds


def deidentify_bytes(data: bytes, *, salt: str = "xray-triage") -> bytes:
    """De-identify DICOM bytes; returns a DICOM file (with preamble when the input had file meta)."""
    has_preamble = is_dicom(data)
    ds = read_dataset(data, force=not has_preamble)
    try:
        deidentify(ds, salt=salt)
    except (ValueError, KeyError, TypeError, EOFError, struct.error) as exc:  # values are parsed lazily
        raise ImageError(f"unreadable DICOM element while de-identifying: {exc}") from exc
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=has_preamble)
    except (ValueError, AttributeError) as exc:
        raise ImageError(f"de-identified DICOM cannot be written: {exc}") from exc
    return buf.getvalue()
