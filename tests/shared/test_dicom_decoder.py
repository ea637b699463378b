"""Compressed DICOM pixel data decoded in a child process (shared.dicom_decoder): a codec abort takes only the child."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shared import dicom_decoder
from shared.dicom import decode_dataset, decode_dicom, read_dataset
from shared.dicom_decoder import DecoderPool
from shared.errors import ImageError, NotReady, PayloadTooLarge
from shared.imaging import Chroma, decode_image
from tests.functions.tiny_model import j2k_bomb_dicom_bytes, jpeg_dicom_bytes

LIMITS = {"max_pixels": 10_000_000, "max_side": 1024}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool() -> DecoderPool:
    made = DecoderPool()
    yield made
    made.close()


def test_the_hostile_jpeg_aborts_a_process_that_decodes_it_itself() -> None:
    """Why the child exists: in-process, GDCM's uncaught C++ exception ends the whole interpreter."""
    code = ("import sys; from tests.functions.tiny_model import j2k_bomb_dicom_bytes, jpeg_dicom_bytes\n"
            "from shared.dicom import decode_dataset, read_dataset\n"
            "decode_dataset(read_dataset(jpeg_dicom_bytes(hostile=True)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, cwd=REPO)
    assert done.returncode == -signal.SIGABRT, done.stderr[-500:]


def test_a_hostile_compressed_dicom_is_a_400_and_the_next_one_decodes() -> None:
    good = jpeg_dicom_bytes()
    with pytest.raises(ImageError, match=r"stopped the image decoder \(SIGABRT\)"):
        decode_image(jpeg_dicom_bytes(hostile=True))
    np.testing.assert_array_equal(decode_image(good), decode_dataset(read_dataset(good), max_side=1024))


def test_the_child_gives_what_the_in_process_decode_gives(pool: DecoderPool) -> None:
    good = jpeg_dicom_bytes(64)
    here, there = Chroma(), Chroma()
    expected = decode_dataset(read_dataset(good), chroma=here, **LIMITS)
    image = pool.decode(good, chroma=there, **LIMITS)
    assert image.dtype == np.float32 and image.shape == (64, 64) and image.flags.writeable
    np.testing.assert_array_equal(image, expected)
    assert (there.total, there.count) == (here.total, here.count)


def test_errors_come_back_as_their_own_type(pool: DecoderPool) -> None:
    with pytest.raises(PayloadTooLarge, match="over the limit of 100"):
        pool.decode(jpeg_dicom_bytes(28), max_pixels=100, max_side=1024)
    ds = read_dataset(jpeg_dicom_bytes(28))
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(ImageError, match="'HSV' is not supported"):
        from tests.shared.test_dicom import _save

        pool.decode(_save(ds), **LIMITS)
    assert pool.decode(jpeg_dicom_bytes(28), **LIMITS).shape == (28, 28)  # the same child, still there


def test_a_codestream_declaring_more_than_its_dicom_says_fails_within_the_child_s_memory_and_the_next_decodes(
) -> None:
    """Without the limit this child reached 6.4 GB here (a container's OOM killer: a 503 and retries for ever)."""
    limited = DecoderPool(max_data_bytes=512 << 20)
    try:
        with pytest.raises((ImageError, PayloadTooLarge)):
            limited.decode(j2k_bomb_dicom_bytes(), **LIMITS)
        assert limited.decode(jpeg_dicom_bytes(28), **LIMITS).shape == (28, 28)
        (child,) = limited._idle
        limits = Path(f"/proc/{child.pid}/limits").read_text()
        assert re.search(rf"Max data size\s+{512 << 20}\s+{512 << 20}\s+bytes", limits), limits
    finally:
        limited.close()


def test_a_memory_error_in_the_child_is_a_413_naming_its_limit() -> None:
    code = ("import io, sys; from shared import dicom_decoder\n"
            "def fail(*a, **k): raise MemoryError()\n"
            "import shared.dicom; shared.dicom.decode_dataset = fail\n"
            "from tests.functions.tiny_model import j2k_bomb_dicom_bytes, jpeg_dicom_bytes\n"
            "data = jpeg_dicom_bytes(28); out = io.BytesIO()\n"
            "request = b'{\"size\": %d, \"max_pixels\": 100000, \"max_side\": 64}\\n' % len(data)\n"
            "import os; r, w = os.pipe(); os.write(w, request + data); os.close(w)\n"
            "dicom_decoder._serve(os.fdopen(r, 'rb'), out, 1.0, 256 << 20)\n"
            "sys.stdout.write(out.getvalue().decode())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-500:]
    assert json.loads(done.stdout) == {"error": "PayloadTooLarge",
                                       "message": "decoding this DICOM's pixel data needs over 256 MB"}


@pytest.mark.parametrize(("content", "expected"), [
    ("max\n", dicom_decoder.MAX_DATA_BYTES),  # no container limit
    ("1073741824\n", 512 << 20),  # a 1 GiB container: half of it
    ("8589934592\n", dicom_decoder.MAX_DATA_BYTES),
    (None, dicom_decoder.MAX_DATA_BYTES),  # no cgroup v2 file
])
def test_the_child_s_limit_is_at_most_half_the_container_s(tmp_path, content, expected) -> None:
    path = tmp_path / "memory.max"
    if content is not None:
        path.write_text(content)
    assert dicom_decoder.child_data_limit(str(path)) == expected


def test_a_child_that_left_when_idle_is_replaced_without_failing_the_decode() -> None:
    pool = DecoderPool(idle_exit_s=0.2)
    try:
        first = pool.decode(jpeg_dicom_bytes(), **LIMITS)
        (child,) = pool._idle
        child.wait(10)  # it leaves on its own, idle
        assert child.returncode == 0
        np.testing.assert_array_equal(pool.decode(jpeg_dicom_bytes(), **LIMITS), first)
        assert pool._idle and pool._idle[0] is not child
    finally:
        pool.close()


def test_a_decode_over_the_timeout_kills_the_child_and_is_a_400() -> None:
    silent = [sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"]
    pool = DecoderPool(silent, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ImageError, match="took over 0 s"):
        pool.decode(jpeg_dicom_bytes(), **LIMITS)
    assert time.monotonic() - started < 10
    assert pool._idle == [] and pool._busy == 0


def test_a_child_a_codec_ends_is_the_input_s_fault_and_one_killed_from_outside_is_a_503() -> None:
    aborting = DecoderPool([sys.executable, "-c", "import os, sys; sys.stdin.readline(); os.abort()"])
    with pytest.raises(ImageError, match="SIGABRT"):
        aborting.decode(jpeg_dicom_bytes(), **LIMITS)
    silent = DecoderPool([sys.executable, "-c", "import sys, time; sys.stdin.readline(); time.sleep(60)"])
    killer = threading.Timer(1.0, lambda: silent._busy and os.kill(_only_child(), signal.SIGKILL))
    killer.start()
    with pytest.raises(NotReady, match="SIGKILL"):
        silent.decode(jpeg_dicom_bytes(), **LIMITS)
    assert silent._busy == 0 and aborting._busy == 0


def _only_child() -> int:
    """The pid of this process's one child running `time.sleep(60)`."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    children = [pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()]
    for pid in children:
        if b"time.sleep(60)" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError(children)


def test_children_that_leave_before_taking_the_image_are_a_503_not_the_input_s_fault() -> None:
    pool = DecoderPool([sys.executable, "-c", "pass"])  # exits 0 at once, as an idle child does
    with pytest.raises(NotReady, match="left before it took the image"):
        pool.decode(jpeg_dicom_bytes(), **LIMITS)
    assert pool._busy == 0


def test_a_child_that_cannot_start_is_a_server_fault_not_the_input_s() -> None:
    pool = DecoderPool([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with status 3"):
        pool.decode(jpeg_dicom_bytes(), **LIMITS)
    assert pool._busy == 0


def test_concurrent_decodes_share_at_most_max_children(pool: DecoderPool) -> None:
    good = jpeg_dicom_bytes(64)
    expected = decode_dataset(read_dataset(good), **LIMITS)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(pool.decode(good, **LIMITS))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 25
    assert all(np.array_equal(result, expected) for result in results)
    assert len(pool._idle) <= pool.max_children and pool._busy == 0


def test_only_encapsulated_pixel_data_goes_to_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.functions.tiny_model import dicom_bytes

    sent: list[int] = []
    monkeypatch.setattr(dicom_decoder, "decode", lambda data, **kwargs: sent.append(len(data)) or np.zeros((1, 1)))
    decode_dicom(dicom_bytes())  # uncompressed: numpy in pydicom, no native codec
    assert sent == []
    decode_dicom(jpeg_dicom_bytes())
    assert len(sent) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_copy_starts_its_own_children(pool: DecoderPool) -> None:
    pool.decode(jpeg_dicom_bytes(), **LIMITS)
    parent_child = pool._idle[0]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked copy: decodes with a child of its own, leaves the parent's alone
        try:
            pool.decode(jpeg_dicom_bytes(), **LIMITS)
            ok = [child.pid for child in pool._idle] not in ([], [parent_child.pid])
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"1"
    os.close(read_end)
    assert pool._idle == [parent_child] and parent_child.poll() is None
