"""DICOM decoding (rescale, window, VOI LUT, MONOCHROME1, 8/12/16-bit) and PS3.15 de-identification."""

from __future__ import annotations

import io
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.dicom import (
    BASIC_PROFILE,
    MAX_SEQUENCE_DEPTH,
    DeidentificationNotConfigured,
    DicomHeader,
    burned_in_annotation,
    decode_dicom,
    deidentify,
    deidentify_bytes,
    read_dataset,
    read_header,
)
from shared.errors import ImageError, PayloadTooLarge
from shared.imaging import Chroma, decode_image
from training_jobs.phantom import FAKE_PATIENT, PhantomDicomSpec, make_phantom, write_phantom_dicom

SECRET = "this-installation's-secret"


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return make_phantom(np.random.default_rng(3), 32, pneumonia=True)


def _save(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_with(tmp_path: Path, stored: np.ndarray, bits: int = 12, **attrs: object) -> bytes:
    """A DICOM whose stored pixel values are exactly `stored`, plus the given attributes."""
    path = write_phantom_dicom(tmp_path / "base.dcm", np.zeros(stored.shape), PhantomDicomSpec(bits=bits))
    ds = pydicom.dcmread(path)
    ds.PixelData = stored.astype(np.uint16 if bits > 8 else np.uint8).tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return _save(ds)


SPECS = {
    "8bit": PhantomDicomSpec(bits=8),
    "12bit": PhantomDicomSpec(bits=12),
    "16bit": PhantomDicomSpec(bits=16),
    "monochrome1": PhantomDicomSpec(bits=12, photometric="MONOCHROME1"),
    "rescale": PhantomDicomSpec(bits=12, rescale=(2.0, -1024.0)),
    "signed-rescale": PhantomDicomSpec(bits=16, signed=True, rescale=(1.0, -1000.0)),
    "window": PhantomDicomSpec(bits=12, window=(2000.0, 1500.0)),
    "rescale-window": PhantomDicomSpec(bits=12, rescale=(1.0, -1024.0), window=(500.0, 1000.0)),
    "voi-lut-12bit": PhantomDicomSpec(bits=12, voi_lut=True),
    "voi-lut-16bit-monochrome1": PhantomDicomSpec(bits=16, voi_lut=True, photometric="MONOCHROME1"),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_every_pixel_pipeline_gives_back_the_image(tmp_path: Path, phantom: np.ndarray, name: str) -> None:
    data = write_phantom_dicom(tmp_path / f"{name}.dcm", phantom, SPECS[name]).read_bytes()
    out = decode_image(data)  # sniffed by the DICM magic, no content type needed
    assert out.dtype == np.float32 and out.shape == phantom.shape
    # 8-bit quantization, and the square-root LUT is steep near black where 12 bits are coarse.
    tolerance = 0.01 if SPECS[name].bits == 8 else 0.015 if name == "voi-lut-12bit" else 0.002
    np.testing.assert_allclose(out, phantom, atol=tolerance)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.array([[0, 4095], [1000, 3000]])
    mono2 = decode_dicom(_dicom_with(tmp_path, stored))
    mono1 = decode_dicom(_dicom_with(tmp_path, stored, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(mono2, stored / 4095, atol=1e-6)
    np.testing.assert_allclose(mono1, 1 - stored / 4095, atol=1e-6)
    assert mono1[0, 0] == 1.0  # stored 0 is white in MONOCHROME1


def test_window_center_width_maps_the_window_to_full_range(tmp_path: Path) -> None:
    stored = np.array([[0, 400, 1000, 1600, 4095]])
    out = decode_dicom(_dicom_with(tmp_path, stored, WindowCenter="1000", WindowWidth="1000"))
    assert out[0, 0] == 0.0 and out[0, 1] == 0.0  # below the window: black
    assert out[0, 2] == pytest.approx(0.5, abs=0.002)  # the center: mid-gray
    assert out[0, 3] == 1.0 and out[0, 4] == 1.0  # above the window: white


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3]])
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 16])
    item.add_new(0x00283006, "OW", np.array([65535, 0, 32768, 0], "<u2").tobytes())  # a non-monotone LUT
    out = decode_dicom(_dicom_with(tmp_path, stored, VOILUTSequence=Sequence([item])))
    np.testing.assert_allclose(out, [[1.0, 0.0, 32768 / 65535, 0.0]], atol=1e-6)


def test_rescale_slope_intercept_is_applied_before_the_window(tmp_path: Path) -> None:
    # HU = 2 * stored - 1000; a window centered at 0 HU puts stored 500 at mid-gray.
    stored = np.array([[0, 500, 4095]])
    out = decode_dicom(
        _dicom_with(tmp_path, stored, RescaleSlope="2", RescaleIntercept="-1000", WindowCenter="0", WindowWidth="400")
    )
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]], atol=0.003)


@pytest.mark.parametrize("used_bits", [10, 12, 14])
def test_a_film_declared_wider_than_its_values_maps_from_the_bits_it_uses(
    tmp_path: Path, phantom: np.ndarray, used_bits: int
) -> None:
    # A 12-bit detector's film written with BitsStored 16 and no window: mapped as the 12 bits it uses, so it
    # decodes as the same film declared 12-bit does (before: at 1/16 of its brightness).
    stored = np.round(phantom * (2**used_bits - 1))
    declared_as_used = decode_dicom(_dicom_with(tmp_path, stored, bits=16, BitsStored=used_bits,
                                                HighBit=used_bits - 1))  # fmt: skip
    declared_16 = decode_dicom(_dicom_with(tmp_path, stored, bits=16))
    np.testing.assert_allclose(declared_16, declared_as_used, atol=1e-6)
    np.testing.assert_allclose(declared_16, stored / (2**used_bits - 1), atol=1e-6)


def test_the_declared_depth_stays_for_a_film_using_its_range_a_window_or_padding(tmp_path: Path) -> None:
    # Values reaching a quarter of the declared range: mapped as declared (a PNG of the same pixels agrees).
    quarter = np.array([[0, 100], [1024, 2000]])
    np.testing.assert_allclose(decode_dicom(_dicom_with(tmp_path, quarter)), quarter / 4095, atol=1e-6)
    # A window decides the mapping: nothing inferred.
    dark = np.array([[0, 100], [1000, 4000]])
    windowed = decode_dicom(_dicom_with(tmp_path, dark, bits=16, WindowCenter="2000", WindowWidth="4000"))
    assert windowed[1, 1] == pytest.approx(1.0, abs=0.001) and windowed[0, 0] == 0.0
    # A padding value at the type's top does not count as a used bit; it stays white, clipped.
    ds = pydicom.dcmread(io.BytesIO(_dicom_with(tmp_path, np.array([[0, 2000], [4095, 65535]]), bits=16)))
    ds.add_new(0x00280120, "US", 65535)  # Pixel Padding Value
    padded = decode_dicom(_save(ds))
    np.testing.assert_allclose(padded, [[0.0, 2000 / 4095], [1.0, 1.0]], atol=1e-6)


def test_a_signed_film_declared_wider_maps_from_the_bits_it_uses(tmp_path: Path) -> None:
    stored = np.array([[-2048, -1000], [0, 2047]])
    path = write_phantom_dicom(tmp_path / "signed.dcm", np.zeros(stored.shape), PhantomDicomSpec(bits=16, signed=True))
    ds = pydicom.dcmread(path)
    ds.PixelData = stored.astype(np.int16).tobytes()
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    np.testing.assert_allclose(decode_dicom(_save(ds)), (stored + 2048) / 4095, atol=1e-6)


def test_the_rescale_is_applied_to_the_range_as_to_the_pixels(tmp_path: Path) -> None:
    stored = np.array([[0, 1000], [2000, 4095]])
    plain = decode_dicom(_dicom_with(tmp_path, stored))
    # A slope without its intercept: pydicom does not apply it to the pixels, nor do we to their range.
    np.testing.assert_allclose(decode_dicom(_dicom_with(tmp_path, stored, RescaleSlope="2")), plain, atol=1e-6)
    np.testing.assert_allclose(
        decode_dicom(_dicom_with(tmp_path, stored, RescaleSlope="2", RescaleIntercept="-100")), plain, atol=1e-6)
    for slope in ("0", "NaN", "inf"):
        with pytest.raises(ImageError, match="Rescale Slope"):
            decode_dicom(_dicom_with(tmp_path, stored, RescaleSlope=slope, RescaleIntercept="0"))


def test_dicom_without_preamble_needs_the_content_type(tmp_path: Path, phantom: np.ndarray) -> None:
    data = write_phantom_dicom(tmp_path / "raw.dcm", phantom, PhantomDicomSpec(preamble=False)).read_bytes()
    assert data[128:132] != b"DICM"
    np.testing.assert_allclose(decode_image(data, "application/dicom"), phantom, atol=0.002)
    with pytest.raises(ImageError, match="without its 128-byte preamble: send it as application/dicom"):
        decode_image(data, "application/octet-stream")  # without the type, headerless bytes are just bytes
    with pytest.raises(ImageError) as refused:
        decode_image(b"\x08\x00\x05\x00" + b"\xff" * 200)  # no VR, no sane length: no hint
    assert "preamble" not in refused.value.message


# What PACS and modalities send besides uncompressed pixels, each re-encoded here by GDCM (lossless).
LOSSLESS_SYNTAXES = {
    "jpeg-lossless-sv1": "JPEGLosslessProcess14_1",
    "jpeg-lossless": "JPEGLosslessProcess14",
    "jpeg-ls-lossless": "JPEGLSLossless",
    "jpeg2000-lossless": "JPEG2000Lossless",
    "rle": "RLELossless",
}


def _compressed(source: Path, syntax: str) -> bytes:
    """The DICOM file at `source` re-encoded by GDCM in `syntax` (a gdcm.TransferSyntax name)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), source
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax
    target = source.with_suffix(f".{syntax}.dcm")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(target))
    assert writer.Write(), target
    return target.read_bytes()


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("name", list(LOSSLESS_SYNTAXES))
def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(
    tmp_path: Path, phantom: np.ndarray, name: str, bits: int
) -> None:
    spec = PhantomDicomSpec(bits=bits, photometric="MONOCHROME1" if bits == 16 else "MONOCHROME2")
    source = write_phantom_dicom(tmp_path / "plain.dcm", phantom, spec)
    data = _compressed(source, LOSSLESS_SYNTAXES[name])
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(decode_image(data), decode_image(source.read_bytes()))


def test_a_compressed_dicom_is_deidentified_without_touching_its_pixels(tmp_path: Path, phantom: np.ndarray) -> None:
    source = write_phantom_dicom(tmp_path / "plain.dcm", phantom, PhantomDicomSpec(bits=12))
    original = _compressed(source, "JPEGLosslessProcess14_1")
    cleaned = deidentify_bytes(original, secret=SECRET)
    assert FAKE_PATIENT["PatientName"].encode() not in cleaned and FAKE_PATIENT["PatientID"].encode() not in cleaned
    assert read_dataset(cleaned).file_meta.TransferSyntaxUID == read_dataset(original).file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(decode_image(cleaned), decode_image(original))


# 12-bit lossy JPEG (JPEG Extended, process 4), as computed radiography archives hold chest films: encoded by DCMTK
# (`+sr`: the stored values as they are, no rescaling of the pixel range) and decoded through GDCM.
JPEG12_SPECS = {
    "12-bit MONOCHROME2": PhantomDicomSpec(bits=12),
    "12-bit MONOCHROME1, rescale and window": PhantomDicomSpec(bits=12, photometric="MONOCHROME1",
                                                               rescale=(2.0, -1024.0), window=(1024.0, 4096.0)),
    "10-bit MONOCHROME2": PhantomDicomSpec(bits=10),
}


def _dcmtk_jpeg12(source: Path) -> tuple[bytes, bytes]:
    """(`source` as 12-bit lossy JPEG by DCMTK's dcmcjpeg, the same decoded back by DCMTK's dcmdjpeg)."""
    from tests.shared.pacs.dcmtk import dcmtk_tool

    lossy, decoded = source.with_suffix(".jpeg12.dcm"), source.with_suffix(".dcmtk.dcm")
    for argv in ([dcmtk_tool("dcmcjpeg"), "+ee", "+sr", "+q", "90", str(source), str(lossy)],
                 [dcmtk_tool("dcmdjpeg"), str(lossy), str(decoded)]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return lossy.read_bytes(), decoded.read_bytes()


@pytest.mark.parametrize("name", list(JPEG12_SPECS))
def test_twelve_bit_lossy_jpeg_decodes_as_dcmtk_decodes_it(
    tmp_path: Path, phantom: np.ndarray, name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    source = write_phantom_dicom(tmp_path / "plain.dcm", phantom, JPEG12_SPECS[name])
    lossy, by_dcmtk = _dcmtk_jpeg12(source)
    ds = pydicom.dcmread(io.BytesIO(lossy))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit and ds.BitsStored > 8
    capfd.readouterr()
    image = decode_image(lossy)
    assert "precision" not in capfd.readouterr().err  # GDCM's 16-bit-first attempt would say so on stderr
    np.testing.assert_array_equal(image, decode_image(by_dcmtk))  # the same samples as an independent decoder
    np.testing.assert_allclose(image, decode_image(source.read_bytes()), atol=0.02)  # lossy, quality 90


def test_eight_bit_jpeg_extended_still_decodes(tmp_path: Path, phantom: np.ndarray) -> None:
    from tests.shared.pacs.dcmtk import dcmtk_tool

    source = write_phantom_dicom(tmp_path / "plain.dcm", phantom, PhantomDicomSpec(bits=8))
    lossy = tmp_path / "jpeg8.dcm"
    done = subprocess.run([dcmtk_tool("dcmcjpeg"), "+ee", "+sr", str(source), str(lossy)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pydicom.dcmread(lossy).file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit
    error = np.abs(decode_image(lossy.read_bytes()) - decode_image(source.read_bytes()))
    assert error.mean() < 0.01 and error.max() < 0.06  # lossy, default quality, on a small noisy phantom


def test_an_undecodable_compression_is_one_clear_line_naming_the_transfer_syntax(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGExtended12Bit

    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "plain.dcm", phantom, PhantomDicomSpec(bits=12)))
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    named = re.escape(f"{JPEGExtended12Bit.name} ({JPEGExtended12Bit})")
    with pytest.raises(ImageError, match=named) as error:
        decode_image(_save(ds))
    assert "\n" not in str(error.value)


def _deflated(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    return _save(ds)


def test_a_deflated_dicom_decodes_and_deidentifies_as_its_uncompressed_self(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    plain = write_phantom_dicom(tmp_path / "plain.dcm", phantom, PhantomDicomSpec(bits=12)).read_bytes()
    deflated = _deflated(pydicom.dcmread(io.BytesIO(plain)))
    assert len(deflated) < len(plain)
    np.testing.assert_array_equal(decode_image(deflated), decode_image(plain))
    cleaned = read_dataset(deidentify_bytes(deflated, secret=SECRET))
    assert cleaned.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert cleaned.PatientID != FAKE_PATIENT["PatientID"]
    cleaned = _save(cleaned)
    np.testing.assert_array_equal(decode_image(cleaned), decode_image(plain))


def test_a_deflate_bomb_is_a_413_before_it_is_inflated(tmp_path: Path, phantom: np.ndarray) -> None:
    from shared.dicom import MAX_INFLATED_BYTES

    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "plain.dcm", phantom, PhantomDicomSpec(bits=12)))
    ds.add_new(0x00091010, "LO", "BOMB")
    ds.add_new(0x00091011, "OB", bytes(MAX_INFLATED_BYTES + 1))  # zeros: deflated to a few hundred KB
    bomb = _deflated(ds)
    del ds
    assert len(bomb) < 1_000_000
    for call in (decode_image, read_header, lambda data: deidentify_bytes(data, secret=SECRET)):
        with pytest.raises(PayloadTooLarge, match="inflates to over"):
            call(bomb)


def test_a_broken_deflate_stream_is_a_400(tmp_path: Path, phantom: np.ndarray) -> None:
    deflated = _deflated(pydicom.dcmread(write_phantom_dicom(tmp_path / "plain.dcm", phantom)))
    start = deflated.index(b"1.2.840.10008.1.2.1.99") + 40
    broken = deflated[:start] + bytes(b ^ 0x5A for b in deflated[start:start + 64]) + deflated[start + 64:]
    with pytest.raises(ImageError, match="DICOM"):
        decode_image(broken)


def test_bad_dicoms_give_clear_errors(tmp_path: Path, phantom: np.ndarray) -> None:
    with pytest.raises(ImageError, match="DICOM"):
        decode_image(b"this is not dicom at all" * 10, "application/dicom")
    good = write_phantom_dicom(tmp_path / "g.dcm", phantom).read_bytes()
    with pytest.raises(ImageError, match="DICOM"):
        decode_image(good[:-200])  # pixel data cut short
    ds = pydicom.dcmread(io.BytesIO(good))
    del ds.PixelData
    with pytest.raises(ImageError, match="no pixel data"):
        decode_image(_save(ds))
    ds = pydicom.dcmread(io.BytesIO(good))
    ds.Rows, ds.Columns = 60000, 60000  # a bomb: declared size checked before pixels are touched
    with pytest.raises(PayloadTooLarge):
        decode_image(_save(ds))


def test_basic_profile_tags_match_the_dicom_dictionary() -> None:
    assert len(BASIC_PROFILE) > 150
    for tag, keyword, action in BASIC_PROFILE:
        assert tag_for_keyword(keyword) == tag, keyword
        assert action in ("X", "Z", "D", "U")


def _dummy(vr: str) -> object:
    values = {
        "SQ": Sequence([Dataset()]),
        "UI": "1.2.826.0.1.3680043.99.1",
        "DA": "19700101",
        "TM": "101010",
        "DT": "19700101101010",
        "PN": "DOE^JANE",
        "AS": "045Y",
        "DS": "1.5",
        "IS": "3",
        "CS": "IDENT",
        "AT": 0x00100010,
    }
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 1
    if vr in ("FL", "FD"):
        return 1.5
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b"\x01\x02"
    return values.get(vr, "IDENTIFYING TEXT")


def test_deidentify_handles_every_attribute_of_the_profile() -> None:
    ds = Dataset()
    for tag, _, _ in BASIC_PROFILE:
        vr = dictionary_VR(tag).split(" ")[0]
        ds.add_new(tag, vr, _dummy(vr))
    ds.add_new(0x00091010, "LO", "private vendor data")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 4)  # overlay data (burned-in annotations)
    originals = {tag: ds[tag].value for tag, _, action in BASIC_PROFILE if action in ("D", "U")}
    deidentify(ds, secret=SECRET)
    for tag, keyword, action in BASIC_PROFILE:
        if action == "X":
            assert tag not in ds, keyword
        elif action == "Z":
            assert tag in ds and not ds[tag].value, keyword
        elif action == "D":  # a dummy of the same VR (an empty sequence), never the original
            assert tag in ds and ds[tag].value != originals[tag] and "IDENTIFYING" not in str(ds[tag].value), keyword
        else:
            assert ds[tag].value and ds[tag].value != originals[tag], keyword
    assert 0x00091010 not in ds and 0x60003000 not in ds
    assert ds.PatientIdentityRemoved == "YES"


def test_deidentified_file_keeps_pixels_and_leaks_no_identifier(tmp_path: Path, phantom: np.ndarray) -> None:
    path = write_phantom_dicom(tmp_path / "p.dcm", phantom, PhantomDicomSpec(bits=16, window=(30000.0, 60000.0)))
    ds = pydicom.dcmread(path)
    nested = Dataset()
    nested.PatientName = FAKE_PATIENT["PatientName"]  # identifiers inside a sequence item are scrubbed too
    ds.ProcedureCodeSequence = Sequence([nested])
    original = _save(ds)
    cleaned = deidentify_bytes(original, secret=SECRET)
    for value in FAKE_PATIENT.values():
        if len(value) > 2:  # one-letter values (sex "O") occur in any byte string
            assert value.encode() not in cleaned, value
    assert b"private vendor" not in cleaned
    out = read_dataset(cleaned)
    assert out.PatientName == "" and out.PatientID == "" and out.PatientBirthDate == ""
    assert out.StudyInstanceUID != ds.StudyInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    np.testing.assert_array_equal(decode_image(cleaned), decode_image(original))


def test_uids_are_replaced_consistently_across_files(tmp_path: Path, phantom: np.ndarray) -> None:
    first = pydicom.dcmread(write_phantom_dicom(tmp_path / "a.dcm", phantom))
    second = pydicom.dcmread(write_phantom_dicom(tmp_path / "b.dcm", phantom))
    second.StudyInstanceUID = first.StudyInstanceUID  # two images of one study
    a, b = deidentify(first, secret=SECRET), deidentify(second, secret=SECRET)
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    other_site = deidentify(pydicom.dcmread(tmp_path / "a.dcm"), secret="another-secret")
    assert other_site.StudyInstanceUID != a.StudyInstanceUID


def test_deidentify_bytes_rejects_non_dicom() -> None:
    with pytest.raises(ImageError):
        deidentify_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, secret=SECRET)


# --- hostile attributes: a 400 naming the attribute, never a 500 (issue 8) ---------------------------------------
def _nested(depth: int, *, undefined_length: bool) -> bytes:
    """A DICOM whose ProcedureCodeSequence holds ConceptCodeSequences nested `depth` deep, encoded by hand (explicit
    VR little endian): pydicom itself takes seconds to write such a file."""
    import struct

    undefined = 0xFFFFFFFF
    content = b"\x08\x00\x00\x01SH" + struct.pack("<H", 2) + b"X "  # CodeValue "X"
    for _ in range(depth):
        if undefined_length:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", undefined) + content + b"\xfe\xff\x0d\xe0" + b"\0" * 4
            content = b"\x40\x00\x68\xa1SQ\0\0" + struct.pack("<I", undefined) + item + b"\xfe\xff\xdd\xe0" + b"\0" * 4
        else:
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(content)) + content
            content = b"\x40\x00\x68\xa1SQ\0\0" + struct.pack("<I", len(item)) + item
    ds = pydicom.dcmread(io.BytesIO(_phantom_bytes()))
    holder = Dataset()
    holder.CodeValue = "PLACEHOLDER"
    holder.is_undefined_length_sequence_item = True
    ds.ProcedureCodeSequence = Sequence([holder])
    ds["ProcedureCodeSequence"].is_undefined_length = True
    placeholder = b"\x08\x00\x00\x01SH" + struct.pack("<H", 12) + b"PLACEHOLDER "
    data = _save(ds)
    assert data.count(placeholder) == 1
    return data.replace(placeholder, content)


def _phantom_bytes() -> bytes:
    from tests.functions.tiny_model import dicom_bytes

    return dicom_bytes(16)


@pytest.mark.parametrize(
    ("attrs", "named"),
    [
        ({"WindowCenter": "100", "WindowWidth": "0"}, "(0028,1051)"),
        ({"WindowCenter": "100", "WindowWidth": "50", "VOILUTFunction": "WEIRD"}, "(0028,1056)"),
    ],
)
def test_a_window_pydicom_cannot_apply_is_a_400_naming_the_attribute(tmp_path: Path, attrs: dict, named: str) -> None:
    data = _dicom_with(tmp_path, np.array([[0, 400], [1000, 4095]]), **attrs)
    with pytest.raises(ImageError) as caught:
        decode_image(data)
    assert caught.value.status == 400 and named in caught.value.message


@pytest.mark.parametrize("undefined_length", [False, True])
def test_sequences_nested_2000_deep_are_a_400(undefined_length: bool) -> None:
    data = _nested(2000, undefined_length=undefined_length)
    for call in (decode_image, lambda d: deidentify_bytes(d, secret=SECRET)):
        with pytest.raises(ImageError) as caught:
            call(data)
        assert caught.value.status == 400 and "nested deeper than" in caught.value.message


def test_sequences_nested_a_few_levels_still_decode() -> None:
    assert decode_image(_nested(MAX_SEQUENCE_DEPTH - 2, undefined_length=True)).shape == (16, 16)


# --- de-identification: the whole of PS3.15 E.1-1, a keyed hash for UIDs, no public salt (issue 8) ----------------
def test_content_creator_and_clinical_trial_subject_are_not_kept(tmp_path: Path, phantom: np.ndarray) -> None:
    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "p.dcm", phantom))
    ds.ContentCreatorName = "CREATOR^CAROL"
    ds.ClinicalTrialSubjectID = "SUBJ-4711"
    ds.ClinicalTrialSponsorName = "ACME TRIALS"
    cleaned = deidentify_bytes(_save(ds), secret=SECRET)
    for value in (b"CREATOR^CAROL", b"SUBJ-4711", b"ACME TRIALS"):
        assert value not in cleaned
    out = read_dataset(cleaned)
    assert out.ContentCreatorName == ""  # Z: type 2 stays present
    assert out.ClinicalTrialSubjectID == "ANONYMIZED"  # D: a dummy of the VR


def test_replaced_uids_are_a_keyed_hash_not_the_public_salted_sha256(tmp_path: Path, phantom: np.ndarray) -> None:
    import hashlib

    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "p.dcm", phantom))
    original = str(ds.StudyInstanceUID)
    public = "2.25." + str(int.from_bytes(hashlib.sha256(f"xray-triage:{original}".encode()).digest()[:16], "big"))
    ours = deidentify(pydicom.dcmread(tmp_path / "p.dcm"), secret=SECRET).StudyInstanceUID
    theirs = deidentify(pydicom.dcmread(tmp_path / "p.dcm"), secret="another-installation").StudyInstanceUID
    assert ours != public and ours != theirs and ours.startswith("2.25.") and len(ours) <= 64


@pytest.mark.parametrize("secret", [None, ""])
def test_without_a_secret_nothing_is_deidentified(tmp_path: Path, phantom: np.ndarray, secret: str | None) -> None:
    data = write_phantom_dicom(tmp_path / "p.dcm", phantom).read_bytes()
    with pytest.raises(DeidentificationNotConfigured) as caught:
        deidentify_bytes(data, secret=secret)
    assert caught.value.status == 503 and "DEID_SECRET" in caught.value.message
    with pytest.raises(DeidentificationNotConfigured):
        deidentify(pydicom.dcmread(tmp_path / "p.dcm"), secret=secret)


def test_burned_in_annotation_is_read_from_the_header(tmp_path: Path, phantom: np.ndarray) -> None:
    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "p.dcm", phantom))
    assert not burned_in_annotation(_save(ds))
    ds.BurnedInAnnotation = "YES"
    assert burned_in_annotation(_save(ds))


def _palette_dicom(tmp_path: Path, indices: np.ndarray, table: np.ndarray | None) -> bytes:
    """A PALETTE COLOR DICOM of 8-bit `indices`; `table` is (256, 3) uint16 RGB entries, or None for no table."""
    path = write_phantom_dicom(tmp_path / "base.dcm", np.zeros(indices.shape), PhantomDicomSpec(bits=8))
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.PixelData = indices.astype(np.uint8).tobytes()
    if table is not None:
        for channel, colour in enumerate(("Red", "Green", "Blue")):
            ds.add_new(tag_for_keyword(f"{colour}PaletteColorLookupTableDescriptor"), "US", [256, 0, 16])
            data = table[:, channel].astype("<u2").tobytes()
            ds.add_new(tag_for_keyword(f"{colour}PaletteColorLookupTableData"), "OW", data)
    return _save(ds)


def test_a_palette_colour_image_is_read_through_its_colour_table(tmp_path: Path, phantom: np.ndarray) -> None:
    indices = np.round(phantom * 255).astype(np.uint8)
    grey_table = np.repeat((np.arange(256) * 257)[:, None], 3, axis=1)
    grey = decode_image(_palette_dicom(tmp_path, indices, grey_table))
    np.testing.assert_allclose(grey, indices / 255.0, atol=1e-6)  # a grey ramp gives the indices back
    inverted = decode_image(_palette_dicom(tmp_path, indices, grey_table[::-1]))
    np.testing.assert_allclose(inverted, 1.0 - indices / 255.0, atol=1e-6)  # the table is applied, not skipped
    red_only = np.zeros_like(grey_table)
    red_only[:, 0] = grey_table[:, 0]
    np.testing.assert_allclose(decode_image(_palette_dicom(tmp_path, indices, red_only)), 0.299 * indices / 255.0,
                               atol=1e-6)  # luminance of the looked-up colour


def test_a_palette_image_without_its_table_or_a_colour_model_with_one_sample_is_a_clear_error(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    indices = np.round(phantom * 255).astype(np.uint8)
    with pytest.raises(ImageError, match="PALETTE COLOR image without its colour table"):
        decode_image(_palette_dicom(tmp_path, indices, None))
    ybr = pydicom.dcmread(io.BytesIO(_dicom_with(tmp_path, indices, bits=8)))
    ybr.PhotometricInterpretation = "YBR_FULL"
    with pytest.raises(ImageError, match=r"'YBR_FULL' needs 3 sample\(s\) per pixel.*Samples per Pixel 1"):
        decode_image(_save(ybr))


def _ybr_dicom(tmp_path: Path, ycbcr: np.ndarray) -> bytes:
    """An uncompressed YBR_FULL DICOM of `ycbcr` [H, W, 3] uint8 (interleaved)."""
    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "base.dcm", np.zeros(ycbcr.shape[:2]),
                                             PhantomDicomSpec(bits=8)))
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "YBR_FULL"
    ds.PixelData = ycbcr.astype(np.uint8).tobytes()
    return _save(ds)


def test_a_grey_film_stored_as_ybr_full_stays_grey(tmp_path: Path, phantom: np.ndarray) -> None:
    grey = np.round(phantom * 255)
    ycbcr = np.stack([grey, np.full_like(grey, 128), np.full_like(grey, 128)], axis=-1)  # no chroma at all
    chroma = Chroma()
    decoded = decode_image(_ybr_dicom(tmp_path, ycbcr), chroma=chroma)
    np.testing.assert_allclose(decoded, grey / 255.0, atol=1 / 255)  # converted once, by pydicom
    assert chroma.mean < 0.01
    red = np.stack([np.full_like(grey, 76), np.full_like(grey, 85), np.full_like(grey, 255)], axis=-1)  # Y Cb Cr
    chroma = Chroma()
    decode_image(_ybr_dicom(tmp_path, red), chroma=chroma)
    assert chroma.mean > 0.5  # a red image is colour


@pytest.mark.parametrize(("attrs", "not_chest"), [
    ({}, False),  # nothing said: the pixels are judged
    ({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}, False),
    ({"Modality": "CR", "BodyPartExamined": "CHEST_PA", "ViewPosition": "AP"}, False),  # a site's own wording
    ({"Modality": "OT", "BodyPartExamined": "Thorax"}, False),  # a secondary capture of a film
    ({"Modality": "XYZ"}, False),  # unknown codes do not refuse
    ({"Modality": "CT"}, True),
    ({"Modality": "mr"}, True),
    ({"Modality": "US"}, True),
    ({"Modality": "DX", "BodyPartExamined": "HAND"}, True),
    ({"Modality": "CR", "BodyPartExamined": "L-SPINE"}, True),
    ({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "LL"}, True),  # a lateral view
])
def test_the_header_says_when_it_is_no_frontal_chest_radiograph(tmp_path: Path, phantom: np.ndarray, attrs: dict,
                                                                not_chest: bool) -> None:
    ds = pydicom.dcmread(write_phantom_dicom(tmp_path / "x.dcm", phantom))
    for keyword in ("Modality", "BodyPartExamined", "ViewPosition"):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    header = read_header(_save(ds))
    assert header == DicomHeader(burned_in=False, not_chest=not_chest)


def test_values_pydicom_would_warn_about_never_reach_the_log_or_stderr(tmp_path, caplog, capfd) -> None:
    """pydicom logged and warned "Invalid value for VR UI: '<the SOP Instance UID>'" while de-identifying."""
    import warnings

    from pydicom import config

    path = write_phantom_dicom(tmp_path / "bad-values.dcm", np.zeros((32, 32)), PhantomDicomSpec(bits=12))
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mode, config.settings.writing_validation_mode = config.settings.writing_validation_mode, config.IGNORE
        try:
            ds.SOPInstanceUID = "1.2.3.UIDOFPATIENT77"
            ds.StudyInstanceUID = "9.8.NOTAUID.PATIENT77"
            data = _save(ds)
        finally:
            config.settings.writing_validation_mode = mode
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        deidentify_bytes(data, secret=SECRET)
        decode_dicom(data)
        read_header(data)
    text = caplog.text + capfd.readouterr().err + " ".join(str(w.message) for w in caught)
    assert "PATIENT77" not in text
