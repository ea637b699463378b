"""The receiver's bounds followed on the byte stream (`shared.pacs.pdu_limits.BoundedReads`), however it is cut.

PDUs are framed here by PS3.8 9.3 (type, reserved, 4-byte length; a P-DATA-TF's value is PDV items of a 4-byte
length, the context ID and the message control header); DCMTK's storescu against the running receiver is in
test_receiver.py.
"""

from __future__ import annotations

import struct

import pytest

from shared.pacs.pdu_limits import MAX_OTHER_PDU_BYTES, BoundedReads

COMMAND_LAST, DATASET, DATASET_LAST = 0b11, 0b00, 0b10
ABORT_BY_USER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])
ABORT_BY_PROVIDER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


def pdu(pdu_type: int, value: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(value)) + value


def pdv(control: int, value: bytes, context_id: int = 1) -> bytes:
    return struct.pack(">LBB", len(value) + 2, context_id, control) + value


def p_data(*items: bytes) -> bytes:
    return pdu(0x04, b"".join(items))


class Peer:
    """A socket whose peer sends `stream` in chunks of `chunk` bytes; what we send back is kept."""

    def __init__(self, stream: bytes, chunk: int) -> None:
        self.stream, self.chunk, self.sent, self.shut = stream, chunk, b"", False

    def recv(self, bufsize: int) -> bytes:
        data, self.stream = self.stream[:min(bufsize, self.chunk)], self.stream[min(bufsize, self.chunk):]
        return data

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def shutdown(self, how: int) -> None:
        self.shut = True

    def fileno(self) -> int:
        return 42


def read_all(reads: BoundedReads) -> bytes:
    out = bytearray()
    while data := reads.recv(4096):
        out += data
    return bytes(out)


def store_message(dataset_size: int, fragment: int) -> bytes:
    """A C-STORE as a sender frames it: the command in one PDU, the data set in PDUs of `fragment` bytes."""
    out = p_data(pdv(COMMAND_LAST, b"c" * 150))
    sizes = [fragment] * (dataset_size // fragment) + ([dataset_size % fragment] if dataset_size % fragment else [])
    for i, size in enumerate(sizes):
        out += p_data(pdv(DATASET_LAST if i == len(sizes) - 1 else DATASET, b"d" * size))
    return out


ASSOCIATE_RQ = pdu(0x01, b"a" * 2000)
RELEASE_RQ = pdu(0x05, b"\0" * 4)


@pytest.mark.parametrize("chunk", [1, 5, 6, 7, 4096])
def test_traffic_within_the_bounds_passes_unchanged_however_it_is_cut(chunk):
    """Two data sets of exactly the bound in one association (each counts from zero), several items in one PDU."""
    stream = (ASSOCIATE_RQ + store_message(1000, 300) + store_message(1000, 1000)
              + p_data(pdv(COMMAND_LAST, b"c" * 50), pdv(DATASET, b"d" * 400), pdv(DATASET_LAST, b"d" * 600))
              + pdu(0x04, b"") + RELEASE_RQ)
    reads = BoundedReads(Peer(stream, chunk), max_pdata_bytes=1068, max_dataset_bytes=1000)
    assert read_all(reads) == stream
    assert reads.fileno() == 42  # everything else is the socket's


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_a_data_set_over_the_bound_is_refused_at_the_fragment_that_crosses_it_before_its_value(chunk):
    stream = ASSOCIATE_RQ + store_message(5000, 999)  # 999 + 999 + 999 + 999 fit; the fifth crosses
    command = p_data(pdv(COMMAND_LAST, b"c" * 150))
    crossing = len(ASSOCIATE_RQ) + len(command) + 4 * len(p_data(pdv(DATASET, b"d" * 999)))
    peer, told = Peer(stream, chunk), []
    reads = BoundedReads(peer, max_pdata_bytes=1006, max_dataset_bytes=4000, on_over_limit=told.append)

    passed = read_all(reads)

    assert len(passed) <= crossing + 6 + 6  # at most the crossing PDU's header and its item's header
    assert [(e.dataset, str(e)) for e in told] == [(True, "a data set of over 4000 bytes (MAX_INPUT_BYTES)")]
    assert peer.sent == ABORT_BY_USER and peer.shut
    assert reads.recv(4096) == b""  # it stays closed: the rest is never read
    assert len(peer.stream) > 0 or chunk > len(stream) - crossing


@pytest.mark.parametrize(("stream", "limit"), [
    (p_data(pdv(DATASET_LAST, b"d" * 1001)), 1006),  # 1007 bytes: over the Maximum Length offered
    (struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF), 1006),  # 4 GiB declared, nothing sent yet
    (pdu(0x01, b"a" * (MAX_OTHER_PDU_BYTES + 1)), MAX_OTHER_PDU_BYTES),  # an association request
])
def test_a_pdu_over_its_length_is_refused_at_its_header(stream, limit):
    peer, told = Peer(stream, 4096), []
    reads = BoundedReads(peer, max_pdata_bytes=1006, max_dataset_bytes=10**9, on_over_limit=told.append)
    assert reads.recv(6) == b""
    assert len(told) == 1 and not told[0].dataset
    assert str(told[0]) == f"a PDU declares more bytes than its limit of {limit}"
    assert peer.sent == ABORT_BY_PROVIDER

