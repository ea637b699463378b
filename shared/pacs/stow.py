"""DICOMweb STOW-RS (PS3.18 §10.5): a `multipart/related; type="application/dicom"` body → stored instances and
the Store Instances Response.

- `multipart_boundary` checks the request's media type (415 unless `multipart/related` with `type`
  application/dicom, quoted or not; 400 without a valid boundary) before the body is read; `split_parts` slices
  the parts out of the body (RFC 2046; 400 for a malformed body: no parts, a missing boundary, a truncated one).
- `store_parts` checks each part as the C-STORE receiver does (`shared.pacs.instances.check_instance`), stores
  the accepted ones in inference-inputs under `shared.names.dicom_instance_key` (the upload path then starts
  ingest) and refuses the others with a PS3.4 / PS3.18 failure reason; nothing is stored for a refused part.
- `StoreResult.to_dicom_json` is the response body (`application/dicom+json`): ReferencedSOPSequence
  (0008,1199) with each stored instance's RetrieveURL, FailedSOPSequence (0008,1198) with its FailureReason
  (0008,1197); `StoreResult.status` is 200 all stored, 202 some, 409 none (503 when none because storage
  failed: ours, the sender retries).

Logs count instances and name stored objects only by `shared.names.key_ref`; no UID reaches them.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import logging
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from shared.config import DEFAULT_MAX_PIXELS
from shared.dicom import read_dataset
from shared.errors import ImageError, PayloadTooLarge, UnsupportedMediaType, UserError
from shared.names import INPUT_BUCKET, key_ref
from shared.pacs.instances import CheckedInstance, RefusedInstance, check_instance, store_instance
from shared.pacs.sop_classes import CHEST_RADIOGRAPH_SOP_CLASSES
from shared.storage import Storage

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "DICOM_JSON",
    "MAX_PARTS",
    "OUT_OF_RESOURCES",
    "SOP_CLASS_NOT_SUPPORTED",
    "Failure",
    "Part",
    "StoreResult",
    "Stored",
    "multipart_boundary",
    "split_parts",
    "store_parts",
    "study_uid",
]

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_DICOM = "application/dicom"
MAX_PARTS = 1000  # instances in one request; each part costs a parsed message object
# FailureReason (0008,1197) values of PS3.18 Table 10.5.3-1 / PS3.4 Annex B.
OUT_OF_RESOURCES = 0xA700  # storage failed: ours, the sender may resend it
DATASET_MISMATCH = 0xA900  # the data set contradicts its SOP class, lacks its UIDs, or is of another study
CANNOT_UNDERSTAND = 0xC000  # not DICOM, unparseable, or pixels that do not decode
SOP_CLASS_NOT_SUPPORTED = 0x0122  # not a chest radiograph (CR, DX)
# RFC 2046 §5.1.1: 1 to 70 characters of bchars, not ending in a space.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass(frozen=True)
class Part:
    """One body part: its bytes (None for a nested multipart) and its own media type, when it names one."""

    data: bytes | None
    media_type: str | None = None


@dataclass(frozen=True)
class Stored:
    """An instance now in inference-inputs."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    key: str


@dataclass(frozen=True)
class Failure:
    """A part that was not stored: the UIDs it carries (empty when unreadable) and why (`reason`)."""

    sop_class_uid: str
    sop_instance_uid: str
    reason: int


@dataclass
class StoreResult:
    """What one request stored and refused, in the order of its parts."""

    stored: list[Stored] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def status(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        return 503 if any(f.reason == OUT_OF_RESOURCES for f in self.failed) else 409

    def to_dicom_json(self, base_url: str, study: str | None = None) -> dict[str, Any]:
        """The Store Instances Response (PS3.18 §10.5.3) as DICOM JSON; RetrieveURLs under `base_url`."""
        from pydicom.dataset import Dataset

        response = Dataset()
        if study is not None:
            response.RetrieveURL = f"{base_url}/studies/{study}"
        if self.stored:
            response.ReferencedSOPSequence = [_referenced(item, base_url) for item in self.stored]
        if self.failed:
            response.FailedSOPSequence = [_failed(item) for item in self.failed]
        return response.to_json_dict()


def _referenced(item: Stored, base_url: str) -> Any:
    from pydicom.dataset import Dataset

    reference = Dataset()
    reference.ReferencedSOPClassUID = item.sop_class_uid
    reference.ReferencedSOPInstanceUID = item.sop_instance_uid
    series = f"/series/{item.series_uid}" if item.series_uid else ""
    reference.RetrieveURL = f"{base_url}/studies/{item.study_uid}{series}/instances/{item.sop_instance_uid}"
    return reference


def _failed(item: Failure) -> Any:
    from pydicom.dataset import Dataset

    failure = Dataset()
    failure.ReferencedSOPClassUID = item.sop_class_uid
    failure.ReferencedSOPInstanceUID = item.sop_instance_uid
    failure.FailureReason = item.reason
    return failure


def study_uid(value: str) -> str:
    """The StudyInstanceUID of `/studies/{study}`; 400 when it is not a UID."""
    if len(value) > 64 or not _UID.match(value):
        raise UserError("study: the path's StudyInstanceUID is not a DICOM UID")
    return value


def multipart_boundary(content_type: str | None) -> str:
    """The boundary of a STOW-RS request's Content-Type; 415 for another media type, 400 for a bad boundary."""
    header = Message()
    header["Content-Type"] = (content_type or "").replace("\r", " ").replace("\n", " ")
    media = header.get_content_type()
    part_type = str(header.get_param("type") or _DICOM).strip().strip('"').strip().lower()
    if media != "multipart/related" or part_type != _DICOM:
        raise UnsupportedMediaType(
            f'content-type: {media} (type {part_type}) is not accepted; send multipart/related; '
            'type="application/dicom" (PS3.18 STOW-RS)'
        )
    boundary = header.get_boundary()
    if not boundary or not _BOUNDARY.match(boundary):
        raise UserError("content-type: multipart/related needs a boundary parameter (RFC 2046)")
    return boundary


def split_parts(body: bytes, boundary: str) -> list[Part]:
    """The parts of a STOW-RS body (`boundary` from `multipart_boundary`); UserError (400), PayloadTooLarge (413).

    RFC 2046 §5.1.1 on the bytes: each part is sliced out once (the standard library's MIME parser held ~10 times
    the body, 540 MB for a 36 MB instance). Lines may end in CRLF or a bare LF. Content-Transfer-Encoding base64 and
    quoted-printable are decoded; a part in any other encoding, or itself multipart, is one the store refuses."""
    delimiter = b"--" + boundary.encode("ascii")
    if body.count(delimiter) > MAX_PARTS + 1:
        raise PayloadTooLarge(f"body: more than {MAX_PARTS} parts; send the instances in several requests")
    at = _next_delimiter(body, delimiter, 0, first=True)
    if at < 0:
        raise UserError("body: malformed multipart/related (no boundary line opens it)")
    view, parts = memoryview(body), []
    while True:
        after = at + len(delimiter)
        if body.startswith(b"--", after):  # the close delimiter
            break
        start = body.index(b"\n", after) + 1  # _next_delimiter saw the line end
        end = _next_delimiter(body, delimiter, start)
        if end < 0:
            raise UserError("body: malformed multipart/related (the body is cut short: no closing boundary)")
        parts.append(_part(view[start:end - 2 if body.startswith(b"\r\n", end - 2) else end - 1]))
        at = end
    if not parts:
        raise UserError("body: the multipart/related body has no parts")
    return parts


def _next_delimiter(body: bytes, delimiter: bytes, start: int, *, first: bool = False) -> int:
    """Where the next boundary line's delimiter starts (at a line start; followed by "--" or by optional spaces and
    the line end), from `start`; -1 if there is none. The first may open the body without a line break before it."""
    if first and _opens_a_boundary_line(body, delimiter, 0):
        return 0
    search = max(0, start - 1)  # the line end just before `start` counts
    while (found := body.find(b"\n" + delimiter, search)) >= 0:
        if _opens_a_boundary_line(body, delimiter, found + 1):
            return found + 1
        search = found + 1
    return -1


def _opens_a_boundary_line(body: bytes, delimiter: bytes, at: int) -> bool:
    if not body.startswith(delimiter, at):
        return False
    rest = at + len(delimiter)
    if body.startswith(b"--", rest):
        return True
    line_end = body.find(b"\n", rest)
    return line_end >= 0 and not body[rest:line_end].rstrip(b"\r").strip(b" \t")


def _part(raw: memoryview) -> Part:
    """One body part: its headers (the standard library's header parser) and its content, decoded."""
    if raw[:1] == b"\n" or raw[:2] == b"\r\n":  # no headers: the content starts after the empty line
        headers, content = Message(), raw[1 if raw[:1] == b"\n" else 2:]
    else:
        blank = re.search(rb"\r?\n\r?\n", raw)
        if blank is None:
            return Part(None, None)  # headers without an end: nothing to read as content
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(bytes(raw[:blank.start()]))
        content = raw[blank.end():]
    media = headers.get_content_type() if headers.get("Content-Type") else None
    encoding = str(headers.get("Content-Transfer-Encoding", "") or "").strip().lower()
    if media is not None and media.startswith("multipart/"):
        return Part(None, media)
    try:
        if encoding in ("", "binary", "7bit", "8bit"):
            return Part(bytes(content), media)
        if encoding == "base64":
            return Part(binascii.a2b_base64(content), media)
        if encoding == "quoted-printable":
            return Part(quopri.decodestring(bytes(content)), media)
    except (binascii.Error, ValueError):
        pass
    return Part(None, media)  # an encoding HTTP does not use, or a broken one: the store refuses the part


def _read_uid(ds: Any, keyword: str) -> str:
    """A UID element's value when it is a well-formed UID, else "" (never echoed back malformed)."""
    try:
        value = str(ds.get(keyword, "") or "").strip()
    except Exception:  # a value pydicom cannot convert
        return ""
    return value if len(value) <= 64 and _UID.match(value) else ""


def _check(part: Part, study: str | None, max_pixels: int) -> tuple[CheckedInstance, Stored] | Failure:
    """The part as a storable instance (and how the response names it), or the failure that refuses it."""
    if part.data is None or (part.media_type is not None and part.media_type != _DICOM):
        return Failure("", "", CANNOT_UNDERSTAND)
    try:
        ds = read_dataset(part.data, header_only=True)
    except ImageError:
        return Failure("", "", CANNOT_UNDERSTAND)
    sop_class, sop_instance = _read_uid(ds, "SOPClassUID"), _read_uid(ds, "SOPInstanceUID")
    if sop_class and sop_class not in CHEST_RADIOGRAPH_SOP_CLASSES:
        return Failure(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED)
    instance_study = _read_uid(ds, "StudyInstanceUID")
    if study is not None and instance_study != study:
        return Failure(sop_class, sop_instance, DATASET_MISMATCH)
    try:
        checked = check_instance(part.data, max_pixels=max_pixels)
    except RefusedInstance as exc:
        return Failure(sop_class, sop_instance, DATASET_MISMATCH if exc.mismatch else CANNOT_UNDERSTAND)
    return checked, Stored(sop_class, sop_instance, instance_study, _read_uid(ds, "SeriesInstanceUID"), checked.key)


def store_parts(storage: Storage, parts: list[Part], *, study: str | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> StoreResult:
    """Check every part, store the accepted ones (as received), refuse the rest; `study`: /studies/{study}."""
    result = StoreResult()
    for part in parts:
        outcome = _check(part, study, max_pixels)
        if isinstance(outcome, Failure):
            result.failed.append(outcome)
            continue
        checked, stored = outcome
        if any(f.reason == OUT_OF_RESOURCES for f in result.failed):  # storage is down: not tried again
            result.failed.append(Failure(stored.sop_class_uid, stored.sop_instance_uid, OUT_OF_RESOURCES))
            continue
        try:
            store_instance(storage, checked)
        except Exception as exc:  # S3 down or refusing: ours, so the sender resends it
            log.error("stow: could not store %s (%s)", key_ref(INPUT_BUCKET, stored.key), type(exc).__name__)
            result.failed.append(Failure(stored.sop_class_uid, stored.sop_instance_uid, OUT_OF_RESOURCES))
            continue
        result.stored.append(stored)
    reasons = ", ".join(sorted({f"{f.reason:04X}" for f in result.failed}))
    log.info("stow: stored %d instance(s) %s, refused %d%s", len(result.stored),
             " ".join(key_ref(INPUT_BUCKET, s.key) for s in result.stored), len(result.failed),
             f" (reasons {reasons})" if reasons else "")
    return result
