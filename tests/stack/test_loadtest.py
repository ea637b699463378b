"""The load tool's guards and statistics (no stack needed)."""

from __future__ import annotations

import pytest

from load_tests.loadtest import check_loopback, percentiles, run_load
from shared.errors import UserError


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080/predict", "http://example.com/", "ftp://127.0.0.1/",
                                 "http://169.254.169.254/latest"])
def test_only_loopback_targets_are_accepted(url):
    with pytest.raises(UserError, match="--url"):
        check_loopback(url)


def test_loopback_targets_pass():
    for url in ("http://127.0.0.1:8080/predict", "http://localhost:1/", "http://[::1]:80/"):
        assert check_loopback(url) == url


def test_percentiles_in_milliseconds():
    stats = percentiles([0.001] * 98 + [0.010, 0.020])
    assert stats["p50"] == pytest.approx(1.0) and stats["max"] == pytest.approx(20.0)
    assert percentiles([])["p99"] is None


def test_load_is_bounded():
    with pytest.raises(UserError, match="requests must be"):
        run_load("http://127.0.0.1:9/", b"x", requests=10**6, concurrency=1)
