"""The DICOM libraries' log records without the values they quote.

pydicom warns with the value it found ("Invalid value for VR UI: '<the SOP Instance UID>'"), and pynetdicom quotes the
bytes it could not decode (a UID, an AE title) in its messages and exception texts; once a stream is out of step it
logs each following byte as an unknown PDU type, so a corrupt C-STORE spelled its data set into the log a byte a
line. `QuotedValuesRedacted` turns every quoted value into '...' and a traceback into its exception's type, and can
cap what one thread logs. `redact_library_logs("pydicom")` installs it on a library's loggers (a filter on a logger
does not reach its children) and keeps the library's Python warnings, which print the same values to stderr, out.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings

__all__ = ["QuotedValuesRedacted", "redact_library_logs"]

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class QuotedValuesRedacted(logging.Filter):
    """Quoted values → '...', exceptions → their type; past `max_per_thread` records of a thread (None: no cap),
    one saying the rest is dropped, then nothing."""

    def __init__(self, max_per_thread: int | None = None) -> None:
        super().__init__()
        self.max_per_thread = max_per_thread
        self._counts = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg) if isinstance(record.msg, BaseException) else record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            text = f"{text} ({record.exc_info[0].__name__})"
        if self.max_per_thread is not None:
            count = self._counts.n = getattr(self._counts, "n", 0) + 1
            if count > self.max_per_thread + 1:
                return False
            if count > self.max_per_thread:
                text = f"further {record.name.split('.')[0]} messages of this thread dropped"
        record.msg, record.args = _QUOTED.sub("'...'", text), ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


@functools.cache
def redact_library_logs(library: str, *, max_per_thread: int | None = None) -> None:
    """`QuotedValuesRedacted` on `library`'s logger and each of its module loggers created so far (import the
    library first); its warnings ignored. Once per process and arguments: the senders and the SR builder call it on
    every use."""
    warnings.filterwarnings("ignore", module=rf"{re.escape(library)}(\.|$)")
    names = [library, *(name for name in logging.root.manager.loggerDict if name.startswith(f"{library}."))]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, QuotedValuesRedacted) for existing in logger.filters):
            logger.addFilter(QuotedValuesRedacted(max_per_thread))
