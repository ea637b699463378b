"""DICOM: decode pixels for display/model input, and de-identify (PS3.15 basic profile) before storing.

Hostile files are refused with an ImageError (HTTP 400) naming what is wrong: sequences nested deeper than
MAX_SEQUENCE_DEPTH (pydicom walks them recursively), a window or VOI LUT pydicom cannot apply, any attribute its
parser or pixel handlers choke on. Large images are brought to a working size band by band right after the pixels
are decoded, so no full-size float copy of a 7000 x 7000 image is ever made.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import math
import secrets
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.config import DEFAULT_MAX_PIXELS
from shared.deid_profile import BASIC_PROFILE
from shared.dicom_jpeg12 import register as register_jpeg12
from shared.errors import ImageError, PayloadTooLarge, TriageError
from shared.log_redaction import redact_library_logs
from shared.working_size import reduce_in_bands, working_factor

__all__ = [
    "BASIC_PROFILE",
    "EPHEMERAL_SECRET",
    "MAX_INFLATED_BYTES",
    "MAX_SEQUENCE_DEPTH",
    "NOT_CHEST_BODY_PARTS",
    "NOT_CHEST_MODALITIES",
    "NOT_CHEST_VIEWS",
    "BurnedInAnnotation",
    "DeidentificationNotConfigured",
    "DicomHeader",
    "burned_in_annotation",
    "decode_dataset",
    "decode_dicom",
    "deidentify",
    "deidentify_bytes",
    "effective_bits",
    "is_dicom",
    "quiet_pydicom",
    "read_dataset",
    "read_header",
]

# Real images nest a few levels (a code sequence inside a request attributes item); 2,000 levels made pydicom
# recurse past Python's stack while reading, walking or writing the file.
MAX_SEQUENCE_DEPTH = 16
# What a deflated data set may inflate to: the largest image allowed at 16 bits in 2 samples, plus headers. pydicom
# inflates the whole data set in one call, so a 20 MB body of deflated zeros became 20 GB in memory.
MAX_INFLATED_BYTES = 4 * DEFAULT_MAX_PIXELS + (16 << 20)
# The transfer syntaxes whose pixel data numpy reads (pydicom, no native codec): decoded in this process.
_NATIVE_PIXEL_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                                    "1.2.840.10008.1.2.2"})
# A random secret for one process: for batch jobs whose replaced UIDs need not match those of another run (the
# training data set); the serving functions use the installation's DEID_SECRET.
EPHEMERAL_SECRET = secrets.token_hex(32)

_ACTIONS = {tag: action for tag, _, action in BASIC_PROFILE}
# Overlays (60xx) can carry burned-in text and curves (50xx) free text: removed whole.
_REPEATING_GROUPS = ((0x5000, 0x50FF), (0x6000, 0x60FF))
_UID_ROOT = "2.25."
# PS3.15 "D": a dummy value of the element's VR (any VR not named here gets an empty value).
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
    **{vr: _DUMMY_TEXT for vr in ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT")},
    **{vr: 0 for vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD")},
    **{vr: b"" for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "UN")},
}


class BurnedInAnnotation(ImageError):
    """An image whose pixels carry burned-in text (BurnedInAnnotation YES), refused by the operator's policy."""

    code = "burned_in_annotation"


class DeidentificationNotConfigured(TriageError):
    """No per-installation secret: UIDs would be replaced with a public salt, so nothing is de-identified (503)."""

    status = 503
    code = "deidentification_not_configured"


def is_dicom(data: bytes) -> bool:
    """True for a DICOM file with its 128-byte preamble and the `DICM` magic (PS3.10); bare data sets say False."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (pydicom's plugins answer in several)."""
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


@functools.cache
def quiet_pydicom() -> None:
    """pydicom's warnings quote the values they find ("Invalid value for VR UI: '<a SOP Instance UID>'", a patient
    name it cannot decode) into the log and stderr: values are not validated on reading (they are read all the
    same), and its other records come redacted (`shared.log_redaction`). Once per process, on first use."""
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    redact_library_logs("pydicom")


def read_dataset(data: bytes, *, force: bool = False, header_only: bool = False) -> Any:
    """Parse DICOM bytes into a pydicom Dataset; ImageError naming what is wrong (nesting depth included)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    quiet_pydicom()

    if not data:
        raise ImageError("empty DICOM: no bytes")
    _check_inflated_size(data, force=force)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on harmless non-conformance; errors still raise
            ds = pydicom.dcmread(io.BytesIO(data), force=force, stop_before_pixels=header_only)
            # With force, any bytes "parse"; a real data set has elements of the standard groups.
            tags = ds.keys()  # tags only: iterating the Dataset itself would convert every element
            groups = {int(tag) >> 16 for tag in tags}
            if groups & {0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0}:
                _check_nesting(ds)
    except InvalidDicomError as exc:
        raise ImageError(f"not a DICOM file ({exc})") from exc
    except RecursionError as exc:
        raise ImageError(f"DICOM sequences are nested deeper than {MAX_SEQUENCE_DEPTH} levels") from exc
    except (TriageError, MemoryError):
        raise
    except Exception as exc:  # pydicom's parser raises many types on broken bytes (struct.error, KeyError, ...)
        raise ImageError(f"unreadable DICOM: {_one_line(exc)}") from exc
    if not groups & {0x0008, 0x0010, 0x0020, 0x0028, 0x7FE0}:
        raise ImageError("not a DICOM file (no standard DICOM elements)")
    return ds


def _check_inflated_size(data: bytes, *, force: bool) -> None:
    """PayloadTooLarge when the data set is deflated (1.2.840.10008.1.2.1.99) and inflates to over
    MAX_INFLATED_BYTES; counted a megabyte at a time, before pydicom inflates it whole. Other inputs pass."""
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stream = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_preamble(stream, force)
            meta = _read_file_meta_info(stream)
        syntax = meta.get("TransferSyntaxUID")
    except Exception:  # no readable file meta: not deflated as pydicom reads it; its parse reports what is wrong
        return
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[stream.tell():], 0
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 20))
            if total > MAX_INFLATED_BYTES:
                raise PayloadTooLarge(f"the deflated DICOM data set inflates to over {MAX_INFLATED_BYTES} bytes, "
                                      f"more than any image allowed here needs")  # fmt: skip
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageError(f"deflated DICOM data set cannot be inflated: {exc}") from exc


def _is_sequence(dataset: Any, tag: Any) -> bool:
    from pydicom.datadict import dictionary_VR

    vr = getattr(dataset.get_item(tag), "VR", None)
    if vr in (None, "UN"):
        try:
            return "SQ" in dictionary_VR(tag)
        except KeyError:  # a private or unknown tag: pydicom keeps its value as bytes
            return False
    return vr == "SQ"


def _check_nesting(ds: Any) -> None:
    """ImageError when sequence items nest deeper than MAX_SEQUENCE_DEPTH; iterative, so no input can exhaust
    the stack here (each sequence is parsed one level at a time as it is reached)."""
    from pydicom.datadict import keyword_for_tag

    pending = [(ds, 0)]
    while pending:
        dataset, depth = pending.pop()
        for tag in list(dataset.keys()):
            if not _is_sequence(dataset, tag):
                continue
            element = dataset[tag]
            if element.VR != "SQ" or not element.value:
                continue
            if depth + 1 > MAX_SEQUENCE_DEPTH:
                name = keyword_for_tag(tag) or str(element.tag)
                raise ImageError(
                    f"DICOM sequence {name} {element.tag} is nested deeper than {MAX_SEQUENCE_DEPTH} levels"
                )
            pending.extend((item, depth + 1) for item in element.value)


def burned_in_annotation(data: bytes) -> bool:
    """True when a DICOM file says its pixels carry burned-in text (0028,0301 BurnedInAnnotation = YES)."""
    return read_header(data).burned_in


@dataclass(frozen=True)
class DicomHeader:
    """What the header says before any pixel is read: burned-in text, and whether it names something other than a
    frontal chest radiograph (another modality, body part or a lateral view: `NOT_CHEST_*`)."""

    burned_in: bool
    not_chest: bool


# What the header may name and still be a frontal chest radiograph is open-ended (sites write "CHEST PA", "THORAX",
# "TORAX", or nothing), so only what is certainly something else refuses: modalities that make no projection
# radiograph (PS3.3 C.7.3.1.1.1; CR, DX, RG, OT and an empty or unknown value pass), body parts of CID 4031 away from
# the chest (spaces, "_" and "-" ignored), and lateral views (CID 4010: the default model saw frontal films only).
NOT_CHEST_MODALITIES = frozenset({
    "CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "IO", "PX", "OP", "OPT", "OCT", "OPM", "OAM", "SM", "ES", "XC",
    "GM", "ECG", "EPS", "HD", "IVUS", "IVOCT", "BMD", "DG", "TG", "SEG", "RTIMAGE", "RTDOSE", "RTSTRUCT", "RTPLAN",
    "SR", "KO", "PR", "DOC", "REG", "RWV", "LS", "AR", "SRF", "VA", "OSS", "BDUS", "ASMT", "AU",
})
NOT_CHEST_BODY_PARTS = frozenset({
    "HEAD", "SKULL", "BRAIN", "FACE", "JAW", "TMJ", "SINUS", "ORBIT", "EYE", "EAR", "NOSE", "MOUTH", "NECK", "CSPINE",
    "LSPINE", "SSPINE", "SACRUM", "COCCYX", "TSPINE", "SPINE", "WHOLESPINE", "ABDOMEN", "PELVIS", "HIP", "KNEE",
    "FOOT", "ANKLE", "HEEL", "TOE", "HAND", "FINGER", "THUMB", "WRIST", "ELBOW", "ARM", "FOREARM", "UPPERARM",
    "HUMERUS", "LEG", "LOWERLEG", "UPPERLEG", "THIGH", "FEMUR", "TIBIA", "FIBULA", "PATELLA", "SHOULDER",
    "SCAPULA", "CLAVICLE", "EXTREMITY", "UPREXM", "LOWREXM", "BREAST", "TESTIS", "KIDNEY", "BLADDER", "LIVER",
})
NOT_CHEST_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})


def read_header(data: bytes) -> DicomHeader:
    """The header facts of DICOM bytes (pixels not read); ImageError for a value pydicom cannot convert."""
    ds = read_dataset(data, force=not is_dicom(data), header_only=True)
    try:
        burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    except Exception as exc:  # a value pydicom cannot convert
        raise ImageError(f"DICOM BurnedInAnnotation (0028,0301) is unreadable: {_one_line(exc)}") from exc
    modality, body_part, view = (_code(ds, name) for name in ("Modality", "BodyPartExamined", "ViewPosition"))
    not_chest = modality in NOT_CHEST_MODALITIES or body_part in NOT_CHEST_BODY_PARTS or view in NOT_CHEST_VIEWS
    return DicomHeader(burned_in, not_chest)


def _code(ds: Any, keyword: str) -> str:
    """A code string attribute, upper case without spaces, "_" or "-"; "" when absent or unreadable (not judged)."""
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - an unreadable code says nothing, and the pixels are judged as usual
        return ""
    if not isinstance(value, str):  # a multi-valued code (pydicom's MultiValue): its first value
        value = str(value[0]) if isinstance(value, Sequence) and not isinstance(value, bytes) and value else ""
    return "".join(ch for ch in value.upper() if ch not in " _-")


# Without a VOI window or LUT the stored range is what maps onto [0, 1]. Detectors deliver 10-14 bits and many
# writers still declare BitsStored 16: a 12-bit radiograph declared as 16 bits came out at 1/16 of its brightness
# (the default model's gate called it flat; a 14-bit one, at 1/4, drifted 0.01-0.08 from its PNG's probability).
# When the stored values leave at least this many of the declared top bits unused, the range is that of the bits
# they use (at least 8); a film using a quarter or more of its declared range is mapped as declared, so a PNG and a
# well-declared DICOM of the same pixels still give the same answer.
UNUSED_BITS_MIN = 2


def effective_bits(used: int, declared: int) -> int:
    """The depth stored values map from: `used` (at least 8) when it leaves `UNUSED_BITS_MIN` or more of the
    `declared` bits unused, else `declared` (a 16-bit PNG's values are mapped by the same rule: `shared.imaging`)."""
    used = max(used, 8)
    return used if used <= declared - UNUSED_BITS_MIN else declared


def _stored_bits(ds: Any, arr: np.ndarray) -> int:
    """The bit depth the stored values map from when no VOI applies: BitsStored, or the depth the values actually
    use when that leaves `UNUSED_BITS_MIN` or more of the declared bits unused (PixelPaddingValue not counted)."""
    declared = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if ds.get("VOILUTSequence") or ds.get("WindowCenter") is not None or ds.get("ModalityLUTSequence"):
        return declared
    padding = ds.get("PixelPaddingValue")
    lows, highs = [], []
    for top in range(0, arr.shape[0], 256):  # in row bands: a padding mask of a 7000 x 7000 film is never made
        band = arr[top:top + 256]
        if isinstance(padding, int):
            band = band[band != padding]
        if band.size:
            lows.append(int(band.min()))
            highs.append(int(band.max()))
    if not highs:
        return declared
    low, high = min(lows), max(highs)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        used = max(high, 0).bit_length()
    else:  # two's complement: k bits hold -2**(k-1) .. 2**(k-1) - 1
        used = max(max(high, 0).bit_length(), (-low - 1).bit_length() if low < 0 else 0) + 1
    return effective_bits(used, declared)


def _output_range(ds: Any, bits: int) -> tuple[float, float]:
    """Range of the modality-LUT output for `bits` stored bits (what pydicom's windowing maps onto)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = _rescale(ds)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def _rescale(ds: Any) -> tuple[float, float]:
    """(slope, intercept) of the modality rescale, applied as pydicom applies it: only when both are present."""
    if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
        return 1.0, 0.0
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
        raise ImageError(f"DICOM Rescale Slope (0028,1053) {slope!r} / Rescale Intercept (0028,1052) {intercept!r}: "
                         "the slope must be a finite non-zero number and the intercept finite")
    return slope, intercept


def decode_dicom(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None,
                 chroma: Any = None) -> np.ndarray:
    """DICOM bytes → 2-D float32 in [0, 1], 0 = black: modality LUT (rescale), VOI LUT or window, MONOCHROME1 flip.

    The first frame of a multi-frame image is used (only it is decoded); colour images become luminance. With
    `max_side`, an image whose longer side exceeds it is box-averaged by a whole factor to at most that side,
    row band by row band after the LUTs, so the float copy is never made at full size. A colour image's channel
    spread is added to `chroma` (an `imaging.Chroma`) on the way.
    """
    ds = read_dataset(data, force=not is_dicom(data))
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    # A codec decodes it (or nothing does: a value that names no syntax): in a child, shared.dicom_decoder.
    if syntax is not None and str(syntax) not in _NATIVE_PIXEL_SYNTAXES:
        from shared import dicom_decoder

        return dicom_decoder.decode(data, max_pixels=max_pixels, max_side=max_side, chroma=chroma)
    return decode_dataset(ds, max_pixels=max_pixels, max_side=max_side, chroma=chroma)


def decode_dataset(ds: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None,
                   chroma: Any = None) -> np.ndarray:
    """`decode_dicom` of a parsed data set, in this process (compressed pixel data included)."""
    try:
        return _decode(ds, max_pixels, max_side, chroma)
    except (TriageError, MemoryError):
        raise
    except Exception as exc:  # an attribute pydicom's LUT / colour code cannot use: the caller's file, not us
        raise ImageError(f"DICOM image cannot be decoded: {_one_line(exc)}") from exc


def _decode(ds: Any, max_pixels: int, max_side: int | None, chroma: Any = None) -> np.ndarray:
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
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageError(f"DICOM declares an empty image ({cols}x{rows}, {frames} frames)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    expected_samples = _SAMPLES_PER_PHOTOMETRIC.get(photometric)
    if expected_samples is None:
        raise ImageError(f"DICOM photometric interpretation {photometric!r} is not supported")
    if samples != expected_samples:
        raise ImageError(f"DICOM photometric interpretation {photometric!r} needs {expected_samples} sample(s) "
                         f"per pixel; the file declares (0028,0002) Samples per Pixel {samples}")
    palette = photometric == "PALETTE COLOR"
    if palette:
        _check_palette(ds)
    arr = _first_frame(ds, frames)
    colour = palette or samples == 3 or arr.ndim == 3
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"DICOM pixel data has an unusable shape {arr.shape}")

    bits = 0 if colour else _stored_bits(ds, arr)  # from the whole frame: every band maps the same way

    def to_unit(band: np.ndarray) -> np.ndarray:
        if palette:
            return _palette_to_unit(band, ds, chroma)
        return _colour_to_unit(band, ds, chroma) if colour else _gray_to_unit(band, ds, photometric, bits)

    height, width = int(arr.shape[0]), int(arr.shape[1])
    factor = working_factor(width, height, max_side)
    if factor == 1:
        return to_unit(arr)
    return reduce_in_bands(height, lambda top, bottom: to_unit(arr[top:bottom]), factor)


def _first_frame(ds: Any, frames: int) -> np.ndarray:
    """The stored values of the first frame (only that frame is decoded); ImageError naming the transfer syntax."""
    register_jpeg12()  # 12-bit lossy JPEG through GDCM (pydicom's own plugins decline it)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if frames > 1:
                from pydicom.pixels import pixel_array

                return pixel_array(ds, index=0)
            return ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types for broken pixel data (ValueError, KeyError, ...)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        named = f"{syntax.name} ({syntax})" if syntax is not None else "unknown transfer syntax"
        raise ImageError(f"DICOM pixel data in {named} cannot be decoded: {_one_line(exc)}") from exc


# What each supported (0028,0004) Photometric Interpretation needs in (0028,0002) Samples per Pixel (PS3.3 C.7.6.3.1.2).
_SAMPLES_PER_PHOTOMETRIC = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR_FULL": 3,
                            "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3}
def _check_palette(ds: Any) -> None:
    """ImageError unless a PALETTE COLOR image carries its colour table (plain or segmented)."""
    has_data = "RedPaletteColorLookupTableData" in ds or "SegmentedRedPaletteColorLookupTableData" in ds
    if "RedPaletteColorLookupTableDescriptor" not in ds or not has_data:
        raise ImageError("DICOM PALETTE COLOR image without its colour table: (0028,1101) and (0028,1201) "
                         "Red / Green / Blue Palette Color Lookup Table Descriptor and Data are needed")


def _palette_to_unit(indices: np.ndarray, ds: Any, chroma: Any = None) -> np.ndarray:
    """Stored palette indices → RGB through the file's colour table (pydicom), then luminance as any colour image."""
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(indices, ds)[..., :3]  # RGBA when an alpha table is present
    return _colour_to_unit(rgb, ds, chroma, bits=8 * rgb.dtype.itemsize)


def _colour_to_unit(arr: np.ndarray, ds: Any, chroma: Any = None, *, bits: int | None = None) -> np.ndarray:
    """RGB values → luminance in [0, 1]. pydicom hands YBR_FULL / YBR_FULL_422 pixels over as RGB already (its
    `as_rgb` default) and the JPEG 2000 decoders undo YBR_RCT / YBR_ICT themselves: nothing is converted here
    (converting again turned a grey film stored as YBR into a colour image)."""
    full_scale = float(2 ** (bits or int(ds.get("BitsStored", 8))) - 1)
    if chroma is not None and arr.ndim == 3 and arr.shape[2] >= 3:
        chroma.add(arr, full_scale)
    rgb = arr.astype(np.float64) / full_scale
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.nan_to_num(gray, nan=0.0), 0.0, 1.0).astype(np.float32)


def _gray_to_unit(arr: np.ndarray, ds: Any, photometric: str, bits: int) -> np.ndarray:
    """Stored values (of `bits` bits: `_stored_bits`) → [0, 1]: modality LUT, then the VOI LUT or window;
    ImageError naming a bad attribute."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = apply_modality_lut(arr, ds)
            lo, hi = _output_range(ds, bits)
            if ds.get("VOILUTSequence"):
                descriptor = ds.VOILUTSequence[0].LUTDescriptor
                if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
                    values = values.astype(np.int64)  # the LUT indexes integers
                values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
                lo, hi = 0.0, float(2 ** int(descriptor[2]) - 1)
            elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
                values = apply_voi_lut(values, ds, index=0, prefer_lut=False)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as exc:
        # e.g. "The (0028,1051) Window Width must be greater than or equal to 1 ...", "Unsupported (0028,1056)
        # VOI LUT Function value ...": pydicom's message names the attribute.
        raise ImageError(f"DICOM modality / VOI LUT or window cannot be applied: {_one_line(exc)}") from exc
    image = (np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12)
    image = np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0)  # an infinite rescale slope gives NaN
    if photometric == "MONOCHROME1":
        image = 1.0 - image  # MONOCHROME1: the lowest value is white
    return image.astype(np.float32)


def _new_uid(old: str, secret: str) -> str:
    """A UID derived from the old one by HMAC-SHA256 with the installation's secret: consistent within a set of
    files, and nobody without the secret can re-link it to the original by hashing candidate UIDs."""
    digest = hmac.new(secret.encode("utf-8"), f"uid:{old}".encode(), hashlib.sha256).digest()
    return _UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def _require_secret(secret: str | None) -> str:
    if not secret:
        raise DeidentificationNotConfigured(
            "de-identification needs this installation's secret (DEID_SECRET): without it replaced UIDs could be "
            "re-linked to the originals, so nothing is de-identified or stored"
        )
    return secret


def deidentify(ds: Any, *, secret: str | None) -> Any:
    """Apply the basic profile to `ds` in place (nested sequences too), drop private tags; return `ds`.

    UIDs are replaced consistently (same secret → same mapping), so series and studies stay linked.
    `secret` is the installation's DEID_SECRET; without one DeidentificationNotConfigured (503) is raised.
    """
    secret = _require_secret(secret)

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
        elif action == "D":
            element.value = [] if element.VR == "SQ" else _DUMMIES.get(str(element.VR), "")
        elif action == "U" and element.value:
            if element.VM > 1:
                element.value = [_new_uid(str(v), secret) for v in element.value]
            else:
                element.value = _new_uid(str(element.value), secret)

    ds.remove_private_tags()
    ds.walk(scrub, recursive=True)
    if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
        sop = ds.get("SOPInstanceUID")
        ds.file_meta.MediaStorageSOPInstanceUID = sop or _new_uid(str(ds.file_meta.MediaStorageSOPInstanceUID), secret)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "xray-triage: DICOM PS3.15 basic profile, private tags removed"
    return ds


def deidentify_bytes(data: bytes, *, secret: str | None) -> bytes:
    """De-identify DICOM bytes with the installation's secret; returns a DICOM file (with preamble when the input
    had file meta). DeidentificationNotConfigured (503) without a secret, before anything is parsed."""
    secret = _require_secret(secret)
    has_preamble = is_dicom(data)
    ds = read_dataset(data, force=not has_preamble)
    try:
        deidentify(ds, secret=secret)
    except (TriageError, MemoryError):
        raise
    except Exception as exc:  # values are parsed lazily: a broken element shows only now
        raise ImageError(f"unreadable DICOM element while de-identifying: {_one_line(exc)}") from exc
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=has_preamble)
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageError(f"de-identified DICOM cannot be written: {_one_line(exc)}") from exc
    return buf.getvalue()
