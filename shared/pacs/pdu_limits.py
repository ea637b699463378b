"""What one association may make the DICOM receiver hold in memory, enforced as the bytes arrive.

pynetdicom reads a whole PDU at the length its header declares (up to 4 GiB) and gathers a C-STORE data set of any
size in memory before the handler sees it. `BoundedReads` wraps an association's socket and follows the stream
(PS3.8 9.3): a P-DATA-TF PDU may be no longer than the Maximum Length we offered (PS3.8 D.1: the peer must not send
more), any other PDU (an association request, ...) no longer than `MAX_OTHER_PDU_BYTES`, and the fragments of one
data set may add up to at most `max_dataset_bytes` (MAX_INPUT_BYTES). Past a bound it sends an A-ABORT, closes the
connection and from then on reads as a closed one, so pynetdicom's reader ends the association and drops what it
gathered; `on_over_limit` is told why (`OverLimit`). `BoundedRequestHandler` installs it on every accepted
association.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import RequestHandler

__all__ = ["MAX_OTHER_PDU_BYTES", "BoundedReads", "BoundedRequestHandler", "OverLimit"]

MAX_OTHER_PDU_BYTES = 1 << 20  # an A-ASSOCIATE-RQ offering every context there is stays far below
_P_DATA_TF = 0x04
_HEADER = 6  # PDU: type, reserved, 4-byte length; PDV item: 4-byte length, context ID, message control header
# A-ABORT (PS3.8 9.3.8): source 0 (the service user: we refuse the data set) or 2 (the service provider: the PDU
# breaks the protocol), reason 6 "invalid PDU parameter value" (0 for the service user, which gives none).
_ABORT_BY_USER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])
_ABORT_BY_PROVIDER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


class OverLimit(Exception):
    """The peer sent past a bound; `dataset` tells a data set over MAX_INPUT_BYTES from a PDU over its length."""

    def __init__(self, message: str, *, dataset: bool) -> None:
        super().__init__(message)
        self.dataset = dataset


class BoundedReads:
    """`sock` as pynetdicom uses it (every attribute passed through), its reads counted against the bounds. For plain
    TCP, as the receiver serves: pynetdicom asks `isinstance(sock, ssl.SSLSocket)` before it looks for TLS-buffered
    bytes, which a wrapper would fail."""

    def __init__(self, sock: Any, *, max_pdata_bytes: int, max_dataset_bytes: int,
                 on_over_limit: Callable[[OverLimit], None] | None = None) -> None:
        self._sock = sock
        self._on_over_limit = on_over_limit
        self._max_pdata = max_pdata_bytes
        self._max_dataset = max_dataset_bytes
        self._header = bytearray()  # the header being read: a PDU's, or a PDV item's inside a P-DATA-TF
        self._pdu_left = 0  # bytes of the current PDU's body still to come
        self._pdu_is_data = False
        self._item_left = 0  # bytes of the current PDV item's value still to come
        self._dataset = 0  # data set bytes of the message being received
        self._refused = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, bufsize: int, *flags: int) -> bytes:
        if self._refused:
            return b""
        data = self._sock.recv(bufsize, *flags)
        try:
            self._follow(memoryview(data))
        except OverLimit as exc:
            self._refused = True
            self._abort(_ABORT_BY_USER if exc.dataset else _ABORT_BY_PROVIDER)
            if self._on_over_limit is not None:
                self._on_over_limit(exc)
            return b""  # the connection's end, as pynetdicom's reader sees it
        return data

    def _follow(self, data: memoryview) -> None:
        at = 0
        while at < len(data):
            if self._pdu_left == 0:  # a PDU header
                at = self._take_header(data, at, _HEADER)
                if len(self._header) == _HEADER:
                    pdu_type, _, length = struct.unpack(">BBL", self._header)
                    self._header.clear()
                    self._start_pdu(pdu_type, length)
            elif self._pdu_is_data and self._item_left == 0:  # a PDV item header inside a P-DATA-TF
                before = at
                at = self._take_header(data, at, self._pdu_left)
                self._body_read(at - before)
                if len(self._header) == _HEADER:
                    length, _, control = struct.unpack(">LBB", self._header)
                    self._header.clear()
                    self._start_item(length - 2, control)
            else:  # a body we do not look into, or a PDV value
                step = min(len(data) - at, self._pdu_left)
                if self._pdu_is_data:
                    step = min(step, self._item_left)
                    self._item_left -= step
                at += step
                self._body_read(step)

    def _body_read(self, size: int) -> None:
        self._pdu_left -= size
        if self._pdu_left == 0:  # the PDU ends: so does any item in it (an item header cut off is pynetdicom's)
            self._item_left = 0
            self._header.clear()

    def _take_header(self, data: memoryview, at: int, limit: int) -> int:
        step = min(_HEADER - len(self._header), len(data) - at, limit)
        self._header += data[at:at + step]
        return at + step

    def _start_pdu(self, pdu_type: int, length: int) -> None:
        self._pdu_is_data = pdu_type == _P_DATA_TF
        limit = self._max_pdata if self._pdu_is_data else MAX_OTHER_PDU_BYTES
        if length > limit:
            # Neither its type nor its length named: out of step, they are bytes of the data set.
            raise OverLimit(f"a PDU declares more bytes than its limit of {limit}", dataset=False)
        self._pdu_left = length

    def _start_item(self, value_bytes: int, control: int) -> None:
        self._item_left = max(0, min(value_bytes, self._pdu_left))
        if control & 1:  # a command fragment: small, and bounded by the PDU length
            return
        self._dataset += self._item_left
        if self._dataset > self._max_dataset:
            raise OverLimit(f"a data set of over {self._max_dataset} bytes (MAX_INPUT_BYTES)", dataset=True)
        if control & 2:  # the last fragment of this data set: the next message counts from zero
            self._dataset = 0

    def _abort(self, pdu: bytes) -> None:
        try:
            self._sock.sendall(pdu)
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class BoundedRequestHandler(RequestHandler):
    """pynetdicom's handler of an accepted connection, its association's socket wrapped in `BoundedReads` (P-DATA-TF
    PDUs at most the AE's maximum PDU size, 0 meaning only the data set bound; `on_over_limit(association, error)`
    told of each refusal). Give the server `functools.partial(BoundedRequestHandler, max_dataset_bytes=N, ...)`."""

    def __init__(self, request: Any, client_address: Any, server: Any, *, max_dataset_bytes: int,
                 on_over_limit: Callable[[Any, OverLimit], None] | None = None) -> None:
        # Before the base class: its constructor handles the whole request.
        self.max_dataset_bytes, self.on_over_limit = max_dataset_bytes, on_over_limit
        super().__init__(request, client_address, server)

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        transport = assoc.dul.socket
        transport.socket = BoundedReads(transport.socket,
                                        max_pdata_bytes=self.ae.maximum_pdu_size or self.max_dataset_bytes,
                                        max_dataset_bytes=self.max_dataset_bytes, on_over_limit=(
                                            None if self.on_over_limit is None else
                                            functools.partial(self.on_over_limit, assoc)))
        return assoc
