"""shared.batching.MicroBatcher: each caller its own row, the size and wait caps, errors to every waiter, shutdown."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared.batching import MicroBatcher


class Recorder:
    """A batched function that remembers each batch's size, optionally holding the first until released."""

    def __init__(self, hold: threading.Event | None = None, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.hold, self.fail = hold, fail
        self.entered = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.sizes.append(len(rows))
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(10), "the test never released the batch"
        if self.fail:
            raise ValueError("the model failed")
        return rows[:, :1] * 10 + 1  # [N, 1]: each row's own value, transformed


def _rows(n: int) -> list[np.ndarray]:
    return [np.full((1, 3), i, np.float32) for i in range(n)]


def test_each_concurrent_caller_gets_its_own_row_and_batches_stay_within_max():
    function = Recorder()
    batcher = MicroBatcher(function, max_batch=4, wait_s=0.02)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher, _rows(64)))
    assert [float(r[0, 0]) for r in results] == [i * 10 + 1 for i in range(64)]
    assert all(r.shape == (1, 1) for r in results)
    assert max(function.sizes) <= 4 and sum(function.sizes) == 64 == batcher.rows


def test_calls_queued_behind_a_running_batch_are_grouped_into_the_next_one():
    hold = threading.Event()
    function = Recorder(hold)
    batcher = MicroBatcher(function, max_batch=8, wait_s=0.5)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher, _rows(1)[0])
        assert function.entered.wait(10)  # the first batch (one row) runs and is held
        rest = [pool.submit(batcher, row) for row in _rows(6)[1:]]
        while len(batcher._queue) < 5:  # the five queue up behind it
            threading.Event().wait(0.005)
        hold.set()
        assert float(first.result(10)[0, 0]) == 1
        assert [float(f.result(10)[0, 0]) for f in rest] == [11, 21, 31, 41, 51]
    assert function.sizes == [1, 5]


def test_a_lone_call_does_not_wait_for_company():
    """The wait cap applies only while others are about: a lone call is never held for `wait_s` (here an hour)."""
    function = Recorder()
    batcher = MicroBatcher(function, max_batch=8, wait_s=3600)
    for row in _rows(3):
        assert batcher(row).shape == (1, 1)
    assert function.sizes == [1, 1, 1]


def test_the_wait_is_capped_even_when_the_batch_does_not_fill():
    """Two callers, room for eight, a 50 ms cap: the batch runs with what it has (no hang until it is full)."""
    function = Recorder()
    batcher = MicroBatcher(function, max_batch=8, wait_s=0.05)
    barrier = threading.Barrier(2)

    def call(row: np.ndarray) -> np.ndarray:
        barrier.wait()
        return batcher(row)

    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(call, _rows(2)))
        assert [float(r[0, 0]) for r in results] == [1, 11]
    assert sum(function.sizes) == 6 and max(function.sizes) <= 2


def _three_queued_behind_a_running_call(pool: ThreadPoolExecutor, batcher: MicroBatcher, function: Recorder) -> list:
    """Row 0 is being run (held by `function`) while rows 1-3 wait in the batcher's queue: their futures, in order."""
    futures = [pool.submit(batcher, _rows(1)[0])]
    assert function.entered.wait(10)
    futures += [pool.submit(batcher, row) for row in _rows(4)[1:]]
    while len(batcher._queue) < 3:
        threading.Event().wait(0.005)
    return futures


def test_an_error_reaches_every_caller_of_the_batch_and_the_batcher_keeps_working():
    hold = threading.Event()
    function = Recorder(hold, fail=True)
    batcher = MicroBatcher(function, max_batch=8, wait_s=0.5)
    with ThreadPoolExecutor(4) as pool:
        futures = _three_queued_behind_a_running_call(pool, batcher, function)
        hold.set()
        for future in futures:
            with pytest.raises(ValueError, match="the model failed"):
                future.result(10)
    function.fail = False
    assert float(batcher(_rows(3)[2])[0, 0]) == 21


def test_a_wrong_row_count_is_an_error_not_a_wrong_answer():
    batcher = MicroBatcher(lambda rows: rows[:1], max_batch=4, wait_s=0.05)
    barrier = threading.Barrier(3)

    def call(row: np.ndarray) -> np.ndarray:
        barrier.wait()
        return batcher(row)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(call, row) for row in _rows(3)]
        outcomes = [f.exception(10) for f in futures]
    # Whichever batches formed: a batch of one is answered, any larger one fails for each of its callers.
    assert any(isinstance(o, RuntimeError) for o in outcomes) or all(o is None for o in outcomes)


def test_close_answers_the_queued_calls_and_later_calls_run_alone():
    hold = threading.Event()
    function = Recorder(hold)
    batcher = MicroBatcher(function, max_batch=8, wait_s=5)
    with ThreadPoolExecutor(4) as pool:
        futures = _three_queued_behind_a_running_call(pool, batcher, function)
        batcher.close()  # with a 5 s cap: the queued ones must not wait it out, nor hang
        hold.set()
        assert [float(f.result(10)[0, 0]) for f in futures] == [1, 11, 21, 31]
    assert float(batcher(_rows(5)[4])[0, 0]) == 41 and function.sizes[-1] == 1


def test_max_batch_one_is_off():
    function = Recorder()
    batcher = MicroBatcher(function, max_batch=1)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(batcher, _rows(8)))
    assert function.sizes == [1] * 8 and batcher.batches == 0
    with pytest.raises(ValueError):
        MicroBatcher(function, max_batch=0)


def test_a_batched_call_with_several_outputs_gives_each_caller_its_row_of_each():
    batcher = MicroBatcher(lambda rows: [rows * 2, rows[:, :1] + 100], max_batch=4, wait_s=0.05)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(batcher, _rows(8)))
    for i, (doubled, plus) in enumerate(results):
        assert doubled.shape == (1, 3) and float(doubled[0, 0]) == 2 * i and float(plus[0, 0]) == 100 + i


def test_the_model_answers_the_same_with_micro_batching_on(tmp_path):
    """PREDICT_BATCH_MAX > 1: concurrent predictions through one session.run give each image its own answer."""
    from shared.config import Settings
    from shared.model import TriageModel
    from tests.functions.tiny_model import build_tiny_model_dir, png_bytes

    model_dir = build_tiny_model_dir(tmp_path / "model")
    plain = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path / "a"))
    batched = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path / "b", predict_batch_max=8,
                                   predict_batch_wait_ms=20.0))
    plain.load()
    batched.load()
    images = [png_bytes(seed=seed) for seed in range(16)]
    expected = [plain(image, "image/png").probability for image in images]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda image: batched(image, "image/png").probability, images))
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(p, 6) for p in expected)) > 1  # the images differ, so a mixed-up row would show
    from shared import model as model_module

    carried = [entry[1].rows for key, entry in model_module._BATCHERS.items() if key[0] == id(batched)]
    assert sum(carried) >= 16  # every prediction went through the batcher (the warm-up too)


def test_the_settings_read_the_batching_variables_and_refuse_bad_values():
    from shared.config import ConfigError, Settings

    assert Settings.from_env({}).predict_batch_max == 1  # off unless asked for (README: measured)
    on = Settings.from_env({"PREDICT_BATCH_MAX": "8", "PREDICT_BATCH_WAIT_MS": "0.5"})
    assert (on.predict_batch_max, on.predict_batch_wait_ms) == (8, 0.5)
    for env in ({"PREDICT_BATCH_MAX": "0"}, {"PREDICT_BATCH_MAX": "2.5"}, {"PREDICT_BATCH_WAIT_MS": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_env(env)
