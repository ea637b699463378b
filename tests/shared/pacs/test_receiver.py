"""The DICOM receiver against real DCMTK clients (echoscu, storescu): what is stored, what is refused, and how.

The receiver runs in this process on the local S3 server of the suite; DCMTK's tools are the modality.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import struct
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import uid

from shared.config import Settings
from shared.names import INPUT_BUCKET, dicom_instance_key
from shared.pacs.receiver import Receiver
from tests.functions.tiny_model import jpeg_dicom_bytes
from tests.shared.pacs.dcmtk import dcmtk_send, dcmtk_tool
from tests.shared.pacs.generated_dx import BIRTH_DATE, PATIENT_ID, PATIENT_NAME, generated_dx

MODALITY = "CHESTROOM1"


@pytest.fixture
def storescu() -> str:
    return dcmtk_tool("storescu")


@pytest.fixture
def receiver(storage):
    with Receiver(Settings(dicom_allowed_aes=(MODALITY,)), storage, host="127.0.0.1", port=0) as running:
        yield running


def send(tool: str, receiver: Receiver, *files: Path, calling: str = MODALITY, called: str = "XRAYTRIAGE",
         options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return dcmtk_send(Path(tool).name, receiver.port, *files, calling=calling, called=called, options=options)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def edited_dx(path: Path, **attributes) -> Path:
    """The generated DX with `attributes` changed (a CT's SOP class, short pixel data, ...)."""
    ds = pydicom.dcmread(io.BytesIO(generated_dx()))
    for name, value in attributes.items():
        setattr(ds, name, value)
    if "SOPClassUID" in attributes:
        ds.file_meta.MediaStorageSOPClassUID = attributes["SOPClassUID"]
    ds.save_as(path)
    return path


def stored_keys(storage) -> list[str]:
    return storage.list_keys(INPUT_BUCKET, "")


def instances(outcome: str) -> float:
    """`triage_dicom_instances_total{outcome}` of this process (the receiver runs in it)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("triage_dicom_instances_total", {"outcome": outcome}) or 0.0


def test_echoscu_is_answered(receiver):
    echoscu = dcmtk_tool("echoscu")
    done = send(echoscu, receiver)
    assert done.returncode == 0, done.stderr
    assert "Received Echo Response (Success)" in done.stderr + done.stdout


def test_a_dx_from_storescu_is_stored_as_received_under_a_key_without_identifiers(receiver, storage, storescu,
                                                                                   tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    original = generated_dx(rows=96, columns=80)
    sent = pydicom.dcmread(io.BytesIO(original))
    before = instances("stored")
    done = send(storescu, receiver, write(tmp_path / "chest.dcm", original))
    assert done.returncode == 0, done.stderr
    assert instances("stored") == before + 1

    key = dicom_instance_key(sent.StudyInstanceUID, sent.SOPInstanceUID)
    assert stored_keys(storage) == [key] and re.fullmatch(r"dicom/[0-9a-f]{64}\.dcm", key)
    stored_object = storage.get_object(INPUT_BUCKET, key)
    assert stored_object.content_type == "application/dicom"
    stored = pydicom.dcmread(io.BytesIO(stored_object.data))
    # The hospital's own storage: the instance as the modality sent it, identifiers and pixels included.
    assert (str(stored.PatientName), stored.PatientID, stored.PatientBirthDate) == (PATIENT_NAME, PATIENT_ID,
                                                                                    BIRTH_DATE)
    assert stored.SOPInstanceUID == sent.SOPInstanceUID and stored.PixelData == sent.PixelData
    assert stored.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian

    # Sent again (a modality retrying): the same key, still one object.
    assert send(storescu, receiver, tmp_path / "chest.dcm").returncode == 0
    assert stored_keys(storage) == [key]
    # Our logs and pynetdicom's (the S3 client's debug lines name keys; it logs at WARNING in production).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("shared", "pynetdicom")))
    assert "stored obj:" in logged
    for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "EXPORTTEST", sent.StudyInstanceUID, sent.SOPInstanceUID,
                   key):
        assert secret not in logged


def test_a_compressed_dx_is_accepted_in_its_transfer_syntax(receiver, storage, storescu, tmp_path):
    ds = pydicom.dcmread(io.BytesIO(generated_dx()))
    ds.compress(uid.RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path)
    done = send(storescu, receiver, path, options=("--propose-rle",))  # RLE first, then uncompressed
    assert done.returncode == 0, done.stderr
    (key,) = stored_keys(storage)
    assert pydicom.dcmread(io.BytesIO(storage.get_bytes(INPUT_BUCKET, key))).file_meta.TransferSyntaxUID == \
        uid.RLELossless


def test_an_unknown_calling_ae_is_rejected_and_nothing_is_stored(receiver, storage, storescu, tmp_path, caplog):
    done = send(storescu, receiver, write(tmp_path / "chest.dcm", generated_dx()), calling="UNKNOWNAE")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr + done.stdout
    assert stored_keys(storage) == []
    assert "rejected an association from UNKNOWNAE" in caplog.text


def test_any_calling_ae_is_accepted_when_the_allow_list_is_empty(storage, storescu, tmp_path):
    with Receiver(Settings(), storage, host="127.0.0.1", port=0) as open_receiver:
        done = send(storescu, open_receiver, write(tmp_path / "chest.dcm", generated_dx()), calling="ANYONE")
    assert done.returncode == 0, done.stderr
    assert len(stored_keys(storage)) == 1


def test_a_wrong_called_ae_is_rejected(receiver, storage, storescu, tmp_path):
    done = send(storescu, receiver, write(tmp_path / "chest.dcm", generated_dx()), called="ANY-SCP")
    assert done.returncode != 0 and "Called AE Title Not Recognized" in done.stderr + done.stdout
    assert stored_keys(storage) == []


def test_a_ct_image_is_refused_at_negotiation(receiver, storage, storescu, tmp_path):
    done = send(storescu, receiver, edited_dx(tmp_path / "ct.dcm", SOPClassUID=uid.CTImageStorage, Modality="CT"))
    assert done.returncode != 0
    assert "No presentation context" in done.stderr + done.stdout
    assert stored_keys(storage) == []


def test_a_corrupt_dataset_gets_a_failure_status_and_nothing_is_stored(receiver, storage, storescu, tmp_path,
                                                                       caplog):
    # A well-formed file (storescu sends it) whose pixel data is far shorter than its rows x columns declare.
    sent = pydicom.dcmread(io.BytesIO(generated_dx()))
    path = edited_dx(tmp_path / "corrupt.dcm", PixelData=sent.PixelData[:1000])
    done = send(storescu, receiver, path)
    assert done.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in done.stderr, done.stderr
    assert stored_keys(storage) == []
    assert "refused an instance from CHESTROOM1: the image cannot be decoded" in caplog.text


def test_a_twelve_bit_lossy_jpeg_dx_is_stored(receiver, storage, storescu, tmp_path):
    # A computed radiography archive's usual export: JPEG Extended, 12 bits (DCMTK encodes it, GDCM decodes it).
    path = tmp_path / "jpeg12.dcm"
    done = subprocess.run([dcmtk_tool("dcmcjpeg"), "+ee", "+sr", str(write(tmp_path / "dx.dcm", generated_dx())),
                           str(path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = send(storescu, receiver, path, options=("--propose-jpeg12",))
    assert done.returncode == 0, done.stderr
    (key,) = stored_keys(storage)
    assert pydicom.dcmread(io.BytesIO(storage.get_bytes(INPUT_BUCKET, key))).file_meta.TransferSyntaxUID == \
        uid.JPEGExtended12Bit


def test_pixel_data_that_aborts_the_decoder_is_refused_and_the_receiver_goes_on(receiver, storage, storescu,
                                                                                 tmp_path):
    # JPEG baseline pixel data on which GDCM asserts (tests.functions.tiny_model.jpeg_dicom_bytes): decoded in the
    # receiver's own process, it would abort it and every association with it.
    hostile = pydicom.dcmread(io.BytesIO(jpeg_dicom_bytes(hostile=True)))
    ds = pydicom.dcmread(io.BytesIO(generated_dx()))
    ds.file_meta.TransferSyntaxUID = hostile.file_meta.TransferSyntaxUID
    for name in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PhotometricInterpretation"):
        setattr(ds, name, getattr(hostile, name))
    ds.PixelData = hostile.PixelData
    ds["PixelData"].VR = "OB"
    for name in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if name in ds:
            delattr(ds, name)
    path = tmp_path / "hostile.dcm"
    ds.save_as(path, enforce_file_format=True)
    done = send(storescu, receiver, path, options=("--propose-jpeg8",))
    assert "Received Store Response (Error: CannotUnderstand)" in done.stderr, done.stderr
    assert stored_keys(storage) == []
    done = send(storescu, receiver, write(tmp_path / "chest.dcm", generated_dx()))
    assert done.returncode == 0, done.stderr
    assert len(stored_keys(storage)) == 1


def test_a_dx_without_its_study_uid_gets_0xa900(receiver, storage, storescu, tmp_path):
    ds = pydicom.dcmread(io.BytesIO(generated_dx()))
    del ds.StudyInstanceUID  # a type 1 attribute of every image IOD
    path = tmp_path / "no-study.dcm"
    ds.save_as(path)
    before = instances("mismatch")
    done = send(storescu, receiver, path)
    assert done.returncode != 0
    assert instances("mismatch") == before + 1
    assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass" in done.stderr, done.stderr
    assert stored_keys(storage) == []


def test_a_storage_failure_answers_out_of_resources_so_the_modality_retries(receiver, storage, storescu, tmp_path):
    storage.client.delete_bucket(Bucket=INPUT_BUCKET)  # S3 refuses every write into it
    before = instances("storage_failed")
    done = send(storescu, receiver, write(tmp_path / "chest.dcm", generated_dx()))
    assert done.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in done.stderr, done.stderr
    assert instances("storage_failed") == before + 1  # what TriageDicomStoreFailing alerts on


def test_a_pixel_decoder_killed_from_outside_answers_out_of_resources(receiver, storage, storescu, tmp_path,
                                                                     monkeypatch):
    from shared.errors import NotReady
    from shared.pacs import instances as checked

    def killed(*args, **kwargs):
        raise NotReady("the image decoder was stopped from outside (SIGKILL) while it decoded: send it again")

    monkeypatch.setattr(checked, "decode_dicom", killed)
    done = send(storescu, receiver, write(tmp_path / "chest.dcm", generated_dx()))
    assert "Received Store Response (Refused: OutOfResources)" in done.stderr, done.stderr
    assert stored_keys(storage) == []


def test_a_deflate_bomb_is_refused(receiver, storage, storescu, tmp_path):
    from shared.dicom import MAX_INFLATED_BYTES

    ds = pydicom.dcmread(io.BytesIO(generated_dx()))
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    ds.add_new(0x00091010, "LO", "BOMB")
    ds.add_new(0x00091011, "OB", bytes(MAX_INFLATED_BYTES + 1))
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    done = send(storescu, receiver, path, options=("--propose-deflated",))
    assert "Received Store Response (Error: CannotUnderstand)" in done.stderr, done.stderr
    assert stored_keys(storage) == []


def test_a_data_set_over_max_input_bytes_is_aborted_while_it_arrives_and_the_next_one_is_stored(storage, storescu,
                                                                                                 tmp_path, caplog):
    """The bound holds on the wire: pynetdicom would gather the whole data set in memory before any handler ran."""
    small = write(tmp_path / "small.dcm", generated_dx())
    big = tmp_path / "big.dcm"
    ds = pydicom.dcmread(small)
    ds.add_new(0x00091010, "LO", "PADDING")
    ds.add_new(0x00091011, "OB", bytes(200_000))
    ds.save_as(big, enforce_file_format=True)
    settings = Settings(dicom_allowed_aes=(MODALITY,), max_input_bytes=len(generated_dx()) + 10_000,
                        dicom_max_pdu_bytes=16_384)  # the small one arrives in several PDUs
    before = instances("too_large")
    with Receiver(settings, storage, host="127.0.0.1", port=0) as limited:
        refused = send(storescu, limited, big)
        assert refused.returncode != 0 and "Peer Aborted Association" in refused.stderr, refused.stderr
        assert stored_keys(storage) == []
        assert instances("too_large") == before + 1
        assert "a data set of over" in caplog.text and PATIENT_ID not in caplog.text

        assert send(storescu, limited, small).returncode == 0
        assert len(stored_keys(storage)) == 1


def test_a_pdu_longer_than_offered_is_aborted_at_its_header_and_the_receiver_goes_on(receiver):
    """A peer declaring a 1 GiB P-DATA-TF (no association needed): pynetdicom alone would read all of it."""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as peer:
        peer.sendall(struct.pack(">BBL", 0x04, 0, 1 << 30))  # the header alone: the answer comes before the body
        answer = peer.recv(10)
        assert peer.recv(10) == b""  # and the connection is closed
    assert answer == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])  # A-ABORT by the provider: invalid PDU parameter value
    assert send(dcmtk_tool("echoscu"), receiver).returncode == 0


@pytest.mark.parametrize("garbage", [
    b"\x04\x00\x00\x00\x00\x04abcd",  # a P-DATA-TF before any association: A-ABORT, then the peer closes
    b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 50,  # an association request cut short, then closed
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # a port scan / a browser
])
def test_connections_that_end_before_an_association_request_free_their_slot_at_once(storage, garbage):
    """pynetdicom's thread waited ACSE_TIMEOUT_S (30 s) for the request, holding one of DICOM_MAX_ASSOCIATIONS:
    two such connections every 30 s kept every modality out of this receiver."""
    echoscu = dcmtk_tool("echoscu")
    with Receiver(Settings(dicom_max_associations=2), storage, host="127.0.0.1", port=0) as limited:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", limited.port), timeout=5) as peer:
                peer.sendall(garbage)
                peer.settimeout(0.3)
                with contextlib.suppress(OSError):
                    peer.recv(100)
        answered = send(echoscu, limited)
        assert answered.returncode == 0, answered.stderr + answered.stdout


def test_a_stream_out_of_step_does_not_spell_its_bytes_into_the_log(receiver, caplog):
    """After a broken PDU pynetdicom read each following byte as a PDU type and logged it: 'Unknown PDU type
    received 0x44', '0x4F', '0x45'... the data set, a byte a line, with each exception's traceback."""
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as peer:
        peer.sendall(b"\x04\x00\x00\x00\x00\x04abcd" + (b"\x00" + PATIENT_NAME.encode()) * 40)
        peer.settimeout(0.5)
        with contextlib.suppress(OSError):
            while peer.recv(4096):
                pass
    time.sleep(0.5)
    library = [r for r in caplog.records if r.name.startswith("pynetdicom")]
    assert 0 < len(library) <= 6, [r.getMessage() for r in library]
    assert not any("0x" in r.getMessage() for r in library)
    assert PATIENT_NAME not in caplog.text and "Traceback" not in caplog.text


def test_associations_over_the_limit_are_rejected(storage, tmp_path):
    """One association held open: with DICOM_MAX_ASSOCIATIONS=1 the next is refused, and served once it is gone."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    echoscu = dcmtk_tool("echoscu")
    with Receiver(Settings(dicom_max_associations=1), storage, host="127.0.0.1", port=0) as limited:
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(Verification)
        held = holder.associate("127.0.0.1", limited.port, ae_title="XRAYTRIAGE")
        assert held.is_established
        try:
            refused = send(echoscu, limited)
            assert refused.returncode != 0 and "Local Limit Exceeded" in refused.stderr + refused.stdout
        finally:
            held.release()
        assert send(echoscu, limited).returncode == 0


def test_the_receiver_offers_the_configured_pdu_size(storage):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with Receiver(Settings(dicom_max_pdu_bytes=32_768), storage, host="127.0.0.1", port=0) as running:
        scu = AE(ae_title="PROBE")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", running.port, ae_title="XRAYTRIAGE")
        try:
            assert assoc.is_established and assoc.acceptor.maximum_length == 32_768
        finally:
            assoc.release()
