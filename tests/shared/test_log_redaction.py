"""The DICOM libraries' log records without the values they quote (shared.log_redaction)."""

from __future__ import annotations

import logging
import sys
import threading

from shared.log_redaction import QuotedValuesRedacted, redact_library_logs


def record(msg, *args, exc_info=None, name="pynetdicom.dul") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def shown(record_: logging.LogRecord) -> str:
    return logging.Formatter("%(message)s").format(record_)


def test_quoted_values_and_exception_texts_are_redacted_to_their_shape() -> None:
    redacting = QuotedValuesRedacted()
    plain = record("Invalid value for VR UI: '%s' (%s)", "1.2.3.PATIENTSECRET", 'x "DOE^JANE"')
    assert redacting.filter(plain) and shown(plain) == "Invalid value for VR UI: '...' (x '...')"
    try:
        raise ValueError("Unable to decode '31 2E 32 2E 38' using the ascii codec(s)")
    except ValueError as exc:
        failed = record(exc, exc_info=sys.exc_info())
    assert redacting.filter(failed)
    assert shown(failed) == "Unable to decode '...' using the ascii codec(s) (ValueError)"  # no traceback


def test_a_thread_logs_at_most_its_cap_then_one_line_saying_so() -> None:
    redacting = QuotedValuesRedacted(max_per_thread=3)
    records = [record("Unknown PDU type received '0x%02X'", byte) for byte in b"PATIENT"]
    kept = [shown(r) for r in records if redacting.filter(r)]
    assert kept == ["Unknown PDU type received '...'"] * 3 + ["further pynetdicom messages of this thread dropped"]
    other: list[bool] = []
    thread = threading.Thread(target=lambda: other.append(redacting.filter(record("x"))))
    thread.start()
    thread.join()
    assert other == [True]  # another thread (another association) has a count of its own


def test_installed_on_a_library_s_module_loggers_once(caplog) -> None:
    child = logging.getLogger("fakelib.reader")
    redact_library_logs("fakelib")
    redact_library_logs("fakelib")
    assert sum(isinstance(f, QuotedValuesRedacted) for f in child.filters) == 1
    with caplog.at_level(logging.WARNING, logger="fakelib"):
        child.warning("bad value '%s'", "SECRET")
    assert "SECRET" not in caplog.text and "bad value '...'" in caplog.text
