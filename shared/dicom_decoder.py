"""Compressed DICOM pixel data decoded in a child process: a codec that aborts on hostile bytes takes only the child.

GDCM, pydicom's decoder for JPEG (baseline, extended, lossless), JPEG-LS and JPEG 2000 here, asserts on inputs it
does not expect (a corrupt JPEG header, a size that contradicts the DICOM's): a C++ exception nothing catches, so
the process aborts (SIGABRT). In the serving process that is every request in flight lost and a restart; in the DICOM
receiver, every association. So `shared.dicom.decode_dicom` hands a data set whose pixel data is encapsulated to
`decode`, which runs the same decode (`shared.dicom.decode_dataset`: LUTs, window, working size) in a child
(`python -m shared.dicom_decoder`, started on the first such image, kept for the next) and reads back the decoded
image (float32, at most the working size: a few MB). Uncompressed pixel data (numpy in pydicom, no native codec)
stays in-process.

What the caller sees is what the in-process decode gives: the image, or the same error type and message (ImageError
400, PayloadTooLarge 413). The child's memory is limited (`MAX_DATA_BYTES`, or half the container's): a codestream
that declares more pixels than its DICOM header fails there (a MemoryError is a 413, a codec's failed allocation an
ImageError), not in the container's OOM killer. A child that a codec ended while it decoded (SIGABRT, SIGSEGV,
SIGBUS, SIGFPE, SIGILL, SIGSYS) is an ImageError naming the signal, one killed from outside (the OOM killer's
SIGKILL) a NotReady (503: the broker or the modality sends it again), and a decode over `DECODE_TIMEOUT_S` kills the
child and is an ImageError. A child that left on its own (idle over `IDLE_EXIT_S`, which spares the function its ~70
MB while no compressed image comes) is replaced and the decode sent again. At most `MAX_CHILDREN` decode at once
(one each); further callers wait for one. A forked copy of the parent starts its own. The child ignores SIGTERM and
SIGINT (a stack stopping the function's process group must not fail a decode the function is finishing) and exits
when its input closes. It logs nothing itself (a codec may print a line of its own): errors go back to the parent
as their type and message only.

Protocol, per decode: in, one JSON line `{"size", "max_pixels", "max_side"}` then `size` bytes of DICOM; out, one
JSON line `{"shape": [h, w], "chroma": [total, count]}` then h * w float32 (little endian), or `{"error": <type>,
"message": ...}`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from shared.errors import ImageError, NotReady, PayloadTooLarge, UnsupportedMediaType

__all__ = ["DECODE_TIMEOUT_S", "IDLE_EXIT_S", "MAX_CHILDREN", "MAX_DATA_BYTES", "DecoderPool", "child_data_limit",
           "decode", "main"]

DECODE_TIMEOUT_S = 120.0  # a 7000 x 7000 JPEG 2000 decodes in seconds here; beyond this the input is hostile
IDLE_EXIT_S = 300.0
MAX_CHILDREN = 2  # the function's request threads (shared.topology.MODEL_THREADS); more would only share 2 cores
# The memory a child may take (RLIMIT_DATA: heap and private mappings): a codestream may declare far more pixels than
# the DICOM header the size check read (JPEG 2000 up to 2^32 a side), and the codec allocates what it declares. A
# 7000 x 7000 16-bit JPEG 2000, the largest image allowed, decodes within 800 MB here (not within 600 MB). At most
# half the container's memory limit (cgroup v2 `memory.max`) where that is lower: the child must fail, not the
# container.
MAX_DATA_BYTES = 1 << 30
_CGROUP_MEMORY_MAX = "/sys/fs/cgroup/memory.max"

_ERRORS: dict[str, type[Exception]] = {"ImageError": ImageError, "PayloadTooLarge": PayloadTooLarge,
                                       "UnsupportedMediaType": UnsupportedMediaType}


# How a codec ends on bytes it cannot take (an assert, a bad pointer, a bad division): the input's fault, a 400.
# Any other signal (SIGKILL of the OOM killer, a SIGTERM) came from outside: a 503, and the caller sends it again.
_INPUT_FAULTS = frozenset({signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGSYS})


def child_data_limit(cgroup_memory_max: str = _CGROUP_MEMORY_MAX) -> int:
    """MAX_DATA_BYTES, or half this container's memory limit where that is lower."""
    try:
        with open(cgroup_memory_max) as limit:
            container = int(limit.read().strip())  # "max" (no limit) is a ValueError
    except (OSError, ValueError):
        return MAX_DATA_BYTES
    return min(MAX_DATA_BYTES, container // 2)


class _Retry(Exception):
    """The child had left on its own before it took the decode: send it to a new one."""


class DecoderPool:
    """Up to `max_children` decoder children, each decoding one image at a time (module docstring)."""

    def __init__(self, argv: Sequence[str] | None = None, *, max_children: int = MAX_CHILDREN,
                 timeout_s: float = DECODE_TIMEOUT_S, idle_exit_s: float = IDLE_EXIT_S,
                 max_data_bytes: int | None = None) -> None:  # fmt: skip
        self.max_data_bytes = child_data_limit() if max_data_bytes is None else max_data_bytes
        self.argv = list(argv or (sys.executable, "-m", "shared.dicom_decoder", "--idle-exit-s", str(idle_exit_s),
                                  "--max-data-bytes", str(self.max_data_bytes)))
        self.max_children = max_children
        self.timeout_s = timeout_s
        self._lock = threading.Condition()
        self._idle: list[subprocess.Popen[bytes]] = []
        self._busy = 0
        self._pid = os.getpid()

    def decode(self, data: bytes, *, max_pixels: int, max_side: int | None, chroma: Any = None) -> np.ndarray:
        """DICOM bytes → the image `shared.dicom.decode_dataset` gives, decoded in a child; its errors as raised
        there, a child that died on the input an ImageError."""
        request = json.dumps({"size": len(data), "max_pixels": max_pixels, "max_side": max_side}).encode() + b"\n"
        for _ in range(2):
            child = self._acquire()
            try:
                header, pixels = self._exchange(child, request, data)
            except _Retry:
                self._discard(child)
                continue
            except BaseException:
                self._discard(child)
                raise
            self._release(child)
            if "error" in header:
                raise _ERRORS.get(header["error"], ImageError)(header.get("message", "the DICOM cannot be decoded"))
            if chroma is not None:
                chroma.total += float(header["chroma"][0])
                chroma.count += int(header["chroma"][1])
            return pixels
        raise NotReady("the DICOM pixel decoder left before it took the image, twice: send it again")

    def close(self) -> None:
        """Close every idle child's input (each exits) and wait for them."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            _stop(child)

    def _exchange(self, child: subprocess.Popen[bytes], request: bytes, data: bytes) -> tuple[dict, np.ndarray]:
        stdin, stdout = child.stdin, child.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(request)
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, OSError):
            self._gone(child)  # raises
        ready, _, _ = select.select([stdout], [], [], self.timeout_s)
        if not ready:
            child.kill()
            child.wait()
            raise ImageError(f"decoding the DICOM pixel data took over {self.timeout_s:.0f} s: refused")
        line = stdout.readline()
        if not line.endswith(b"\n"):
            self._gone(child)
        header = json.loads(line)
        if "error" in header:
            return header, np.empty((0, 0), np.float32)
        height, width = (int(side) for side in header["shape"])
        raw = stdout.read(height * width * 4)
        if len(raw) != height * width * 4:
            self._gone(child)
        return header, np.frombuffer(raw, dtype="<f4").reshape(height, width).astype(np.float32, copy=True)

    def _gone(self, child: subprocess.Popen[bytes]) -> None:
        """The child's pipe closed: _Retry when it had exited on its own, RuntimeError when it failed to run, an
        ImageError when a codec's signal ended it, NotReady when a signal from outside did."""
        code = child.wait()
        if code == 0:
            raise _Retry
        if code > 0:  # it could not run at all (an import failed): the deployment's fault, not the input's
            raise RuntimeError(f"the DICOM decoder process exited with status {code}")
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code in _INPUT_FAULTS:  # a failed allocation in a codec ends the same way (std::bad_alloc: SIGABRT)
            raise ImageError(f"the DICOM pixel data stopped the image decoder ({name}): refused as corrupt, hostile "
                             f"or needing over the decoder's {self.max_data_bytes >> 20} MB")
        raise NotReady(f"the image decoder was stopped from outside ({name}) while it decoded: send it again")

    def _acquire(self) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._pid != os.getpid():  # a forked copy: the children belong to the parent
                self._idle, self._busy, self._pid = [], 0, os.getpid()
            while True:
                while self._idle:
                    child = self._idle.pop()
                    if child.poll() is None:
                        self._busy += 1
                        return child
                    _stop(child)
                if self._busy < self.max_children:
                    self._busy += 1
                    break
                self._lock.wait()
        try:
            return subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except BaseException:
            with self._lock:
                self._busy -= 1
                self._lock.notify()
            raise

    def _release(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._busy -= 1
            if self._pid == os.getpid():
                self._idle.append(child)
            self._lock.notify()

    def _discard(self, child: subprocess.Popen[bytes]) -> None:
        _stop(child)
        with self._lock:
            self._busy -= 1
            self._lock.notify()


def _stop(child: subprocess.Popen[bytes]) -> None:
    for pipe in (child.stdin, child.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()
    try:
        child.wait(5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


_POOL = DecoderPool()


def decode(data: bytes, *, max_pixels: int, max_side: int | None, chroma: Any = None) -> np.ndarray:
    """`DecoderPool.decode` on this process's pool."""
    return _POOL.decode(data, max_pixels=max_pixels, max_side=max_side, chroma=chroma)


# --- the child -------------------------------------------------------------------------------------------------
def _serve(stdin: IO[bytes], stdout: IO[bytes], idle_exit_s: float, max_data_bytes: int | None = None) -> None:
    from shared.dicom import decode_dataset, is_dicom, read_dataset
    from shared.imaging import Chroma

    while True:
        ready, _, _ = select.select([stdin], [], [], idle_exit_s)
        if not ready:
            return  # idle: the parent starts another when it needs one
        line = stdin.readline()
        if not line:
            return
        request = json.loads(line)
        data = stdin.read(int(request["size"]))
        chroma = Chroma()
        try:
            ds = read_dataset(data, force=not is_dicom(data))
            image = np.ascontiguousarray(decode_dataset(ds, max_pixels=int(request["max_pixels"]),
                                                        max_side=request["max_side"], chroma=chroma),
                                         dtype="<f4")  # fmt: skip
        except (ImageError, PayloadTooLarge, UnsupportedMediaType) as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
            stdout.write(json.dumps(answer).encode() + b"\n")
        except MemoryError:  # over this child's limit, which the largest image allowed stays within
            limit = "its limit" if max_data_bytes is None else f"{max_data_bytes >> 20} MB"
            answer = {"error": "PayloadTooLarge", "message": f"decoding this DICOM's pixel data needs over {limit}"}
            stdout.write(json.dumps(answer).encode() + b"\n")
        except Exception as exc:  # an unexpected type: the input's fault, as decode_dicom treats it in-process
            stdout.write(json.dumps({"error": "ImageError", "message": f"DICOM image cannot be decoded: "
                                     f"{type(exc).__name__}"}).encode() + b"\n")  # fmt: skip
        else:
            header = {"shape": list(image.shape), "chroma": [chroma.total, chroma.count]}
            stdout.write(json.dumps(header).encode() + b"\n")
            stdout.write(image.tobytes())
        stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m shared.dicom_decoder",
                                     description="decode compressed DICOM pixel data for a parent process (stdin / "
                                                 "stdout protocol of shared.dicom_decoder; not for direct use)")
    parser.add_argument("--idle-exit-s", type=float, default=IDLE_EXIT_S, help="exit after this long without a decode")
    parser.add_argument("--max-data-bytes", type=int, default=None,
                        help="RLIMIT_DATA of this process (default: none; the pool passes MAX_DATA_BYTES or less)")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    if args.max_data_bytes is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (args.max_data_bytes, args.max_data_bytes))
    with contextlib.suppress(BrokenPipeError):  # the parent left while this one answered
        _serve(sys.stdin.buffer, sys.stdout.buffer, args.idle_exit_s, args.max_data_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
