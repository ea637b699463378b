"""The load tools: run_load's guards and statistics, the Locust driver's pieces, CLI argument errors (no stack)."""

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


def test_run_load_counts_answers_statuses_revisions_and_lost_connections():
    """Against a real HTTP server: every 5th answer a 503, every 7th closes the connection without one (the client
    opens a new one), the others name their revision; the server sees every body whole."""
    import http.server
    import threading

    seen: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            seen.append(self.rfile.read(int(self.headers["Content-Length"])))
            n = len(seen)
            if n % 7 == 0:
                self.close_connection = True  # no answer at all: the client sees the connection drop
                return
            status = 503 if n % 5 == 0 else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.send_header("X-Triage-Revision", "predict-00002" if n % 2 else "predict-00001")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_load(f"http://127.0.0.1:{server.server_address[1]}/p?x=1", b"body", requests=70, concurrency=2,
                          warmup=0)
    finally:
        server.shutdown()
    assert set(seen) == {b"body"} and len(seen) == 72  # the 2 warm-up requests, then the 70
    summary = result.summary()
    assert summary["requests"] == 70 and summary["ok"] == len(result.latencies) > 0
    assert result.errors["HTTP 503"] > 0 and sum(result.errors.values()) == 70 - summary["ok"]
    assert any(name != "HTTP 503" for name in result.errors)  # the dropped connections, by exception type
    assert set(result.revisions) == {"predict-00001", "predict-00002"}
    assert summary["throughput_rps"] > 0 and summary["p50_ms"] > 0


def test_run_load_counts_a_refused_connection_as_an_error():
    result = run_load("http://127.0.0.1:9/", b"x", requests=3, concurrency=1, warmup=0, timeout_s=2)
    assert result.latencies == [] and sum(result.errors.values()) == 3 and "ConnectionRefusedError" in result.errors


def test_images_come_from_a_folder_or_an_npz(tmp_path):
    import numpy as np

    from load_tests.images import load_images
    from tests.functions.tiny_model import gray_image, png_bytes
    from triage.stack.demo import dicom

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "b.dcm").write_bytes(dicom(gray_image()))
    (folder / "notes.txt").write_text("not an image")
    images = load_images(folder)
    assert [(i.name, i.content_type) for i in images] == [("a.png", "image/png"), ("b.dcm", "application/dicom")]
    assert all(i.pixels.dtype == np.uint8 and i.pixels.shape == (28, 28) for i in images)

    np.savez(tmp_path / "set.npz", test_images=np.stack([gray_image(28, s) for s in range(3)]))
    from_npz = load_images(tmp_path / "set.npz", 2)
    assert [i.name for i in from_npz] == ["0.png", "1.png"] and from_npz[0].data.startswith(b"\x89PNG")
    assert np.array_equal(from_npz[1].pixels, gray_image(28, 1))

    with pytest.raises(UserError, match="--images"):
        load_images(tmp_path / "missing")


# --- triage loadtest (Locust) and send-live: the pieces and the argument errors, no stack ------------------------
def test_the_rate_is_split_over_enough_users_of_each_class():
    from load_tests.loadtest import users_for

    assert users_for(4, 2) == (2, 2.0)
    users, per_user = users_for(20, 2)
    assert users == 10 and per_user * users == pytest.approx(20)
    users, per_user = users_for(5, 3)  # never fewer users than classes, a whole number of each
    assert users % 3 == 0 and per_user <= 2.0 and per_user * users == pytest.approx(5)
    assert users_for(0.5, 1) == (1, 0.5)


def test_the_locust_command_keeps_the_token_out_of_argv(tmp_path):
    from load_tests.loadtest import locust_command

    command = locust_command(host="https://staging.example.org", rate=10, duration_s=30, mix=["predict", "upload"],
                             images=tmp_path, csv_prefix=tmp_path / "rate-10", s3_url="http://s3:9000",
                             predict_url=None, explain_url=None, key_prefix="lt")
    assert command[1:3] == ["-m", "locust"] and "--headless" in command
    assert command[command.index("--host") + 1] == "https://staging.example.org"  # any target, not only loopback
    assert command[command.index("--users") + 1] == "6" and command[command.index("--run-time") + 1] == "30s"
    assert command[-2:] == ["PredictUser", "UploadUser"] and "--triage-token" not in command


def test_locust_statistics_become_the_json_summary(tmp_path):
    from load_tests.loadtest import rate_summary, read_stats

    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
              "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
              "99.99%,100%")
    rows = ["POST,/predict,120,0,12,13.5,4,80,300,2.0,0.0,12,14,15,16,20,30,50,70,80,80,80",
            "S3,PutObject inference-inputs,118,2,20,22,9,95,800,1.97,0.03,20,22,24,25,30,40,60,90,95,95,95",
            ",Aggregated,238,2,15,17,4,95,550,3.97,0.03,15,18,20,21,25,35,55,80,95,95,95"]
    (tmp_path / "s.csv").write_text("\n".join([header, *rows]) + "\n")
    stats = read_stats(tmp_path / "s.csv")
    assert stats["/predict"]["p99_ms"] == 70.0 and stats["PutObject inference-inputs"]["failures"] == 2
    summary = rate_summary(4.0, 60, stats)
    assert summary["requests"] == 238 and summary["failures"] == 2
    assert summary["achieved_rps"] == pytest.approx(238 / 60, abs=0.01)
    assert set(summary["by_request"]) == {"/predict", "PutObject inference-inputs"}


def test_the_cli_process_never_imports_locust_or_gevent():
    import subprocess
    import sys

    code = ("import sys, triage.cli, load_tests.loadtest, triage.send_live, triage.scale; "
            "assert not {'locust', 'gevent'} & set(sys.modules), sorted(m for m in sys.modules if 'gevent' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("argv, message", [
    (["loadtest", "--rates", "0", "--images", "."], "--rates"),
    (["loadtest", "--rates", "5,x", "--images", "."], "--rates"),
    (["loadtest", "--mix", "predict,bogus", "--images", "."], "--mix"),
    (["loadtest", "--duration", "0", "--images", "."], "--duration"),
    (["loadtest", "--url", "ftp://host/", "--images", "."], "--url"),
    (["loadtest", "--images", "/no/such/folder"], "--images"),
    (["send-live", "--rate", "0", "--duration", "5"], "--rate"),
    (["send-live", "--rate", "500", "--duration", "5"], "--rate"),
    (["send-live", "--rate", "1", "--duration", "-1"], "--duration"),
    (["send-live", "--rate", "1", "--duration", "5", "--prefix", "../x"], "--prefix"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    from triage.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["send-live"], ["send-live", "--rate", "fast", "--duration", "5"],
                                  ["loadtest", "--rates", "5"]])
def test_missing_or_malformed_options_are_argparse_errors(argv, capsys):
    from triage.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_send_live_to_an_unreachable_endpoint_is_an_exit_message_not_a_traceback(capsys):
    from triage.cli import main
    from triage.stack.processes import unused_port_block

    [port] = unused_port_block(1)
    assert main(["send-live", "--rate", "1", "--duration", "1", "--s3-url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach S3 at http://127.0.0.1:{port}" in err and "Traceback" not in err
