"""Locust users of the triage system: a client system calling predict / explain, and a hospital uploading images.

Run by `triage loadtest` (`load_tests.loadtest`) in its own process, headless, one process per asked rate; it may
also be run by hand: `locust -f load_tests/locustfile.py --headless --host URL PredictUser --triage-images DIR`.
Each user keeps a fixed pace (`constant_throughput(--triage-rate-per-user)`), so the arrival rate is users x
that rate as long as the target keeps up; the report says what was achieved.

- `PredictUser` / `ExplainUser`: `POST` the next image of `--triage-images` (a folder or an .npz, cycled) to
  `--triage-predict-url` / `--triage-explain-url` (default `{host}/predict`, `{host}/explain`: the local
  gateway's routes; a deployed Knative Service is its own URL) with `Authorization: Bearer` from
  `--triage-token` / `$TRIAGE_API_TOKEN`. Anything but 200 is a failure (a 429 too: the token's rate is the
  client's limit, so give the load test a token with a rate above the asked one).
- `UploadUser`: `PutObject` into `inference-inputs` through S3 (`--triage-s3-url` / `$S3_ENDPOINT_URL`, the
  credentials of the usual AWS variables) under `--triage-key-prefix`, as the hospital's PACS or modality does;
  minio-source turns each upload into the event ingest answers.
"""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

from locust import HttpUser, User, between, constant_throughput, events, task  # noqa: F401  (between: by hand)

from load_tests.images import LoadImage, load_images
from shared.config import Settings
from shared.names import INPUT_BUCKET

__all__ = ["ExplainUser", "PredictUser", "UploadUser"]

_IMAGES: list[LoadImage] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--triage-images", required=False, default="", help="a folder of PNG / JPEG / DICOM files "
                        "or an .npz, sent in turn")
    parser.add_argument("--triage-image-count", type=int, default=64, help="at most this many images (default 64)")
    parser.add_argument("--triage-token", env_var="TRIAGE_API_TOKEN", default="", is_secret=True,
                        help="the API token for predict / explain")
    parser.add_argument("--triage-predict-url", default="", help="default {host}/predict")
    parser.add_argument("--triage-explain-url", default="", help="default {host}/explain")
    parser.add_argument("--triage-s3-url", env_var="S3_ENDPOINT_URL", default="", help="the S3 endpoint of uploads")
    parser.add_argument("--triage-key-prefix", default="loadtest", help="key prefix of uploads (default loadtest)")
    parser.add_argument("--triage-rate-per-user", type=float, default=1.0, help="requests per second per user")


@events.init.add_listener
def _load(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is not None and options.triage_images:
        _IMAGES[:] = load_images(options.triage_images, options.triage_image_count)


def _rate(user: Any) -> float:
    return user.environment.parsed_options.triage_rate_per_user


class _ImageUser(HttpUser):
    abstract = True
    path = "/"
    option = ""

    def wait_time(self) -> float:  # a fixed pace per user: the arrival rate is users x the rate per user
        return constant_throughput(_rate(self))(self)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.url = getattr(options, self.option) or self.path
        self.headers = {"Authorization": f"Bearer {options.triage_token}"} if options.triage_token else {}
        self.images = itertools.cycle(_IMAGES)

    def send(self) -> None:
        image = next(self.images)
        with self.client.post(self.url, data=image.data, name=self.path,
                              headers={**self.headers, "Content-Type": image.content_type},
                              catch_response=True) as response:
            if response.status_code == 0:  # no answer: keep what went wrong (refused, reset, timed out)
                error = getattr(response, "error", None)
                response.failure(f"no answer: {type(error).__name__ if error else 'unknown'}: {error}"[:200])
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")


class PredictUser(_ImageUser):
    path, option = "/predict", "triage_predict_url"

    @task
    def predict(self) -> None:
        self.send()


class ExplainUser(_ImageUser):
    path, option = "/explain", "triage_explain_url"

    @task
    def explain(self) -> None:
        self.send()


class UploadUser(User):
    """A hospital storing images into `inference-inputs`; each PutObject is one request of type S3."""

    def wait_time(self) -> float:
        return constant_throughput(_rate(self))(self)

    def on_start(self) -> None:
        import boto3
        from botocore.config import Config

        options = self.environment.parsed_options
        settings = Settings.from_env()  # the credentials and region, as every deployable reads them
        self.s3 = boto3.client("s3", endpoint_url=options.triage_s3_url or settings.s3_endpoint_url,
                               aws_access_key_id=settings.aws_access_key_id,
                               aws_secret_access_key=settings.aws_secret_access_key, region_name=settings.aws_region,
                               config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 1}))
        self.prefix = f"{options.triage_key_prefix.strip('/')}/{uuid.uuid4().hex[:8]}"
        self.images = itertools.cycle(_IMAGES)
        self.sent = 0

    @task
    def upload(self) -> None:
        image = next(self.images)
        self.sent += 1
        key = f"{self.prefix}/{self.sent:06d}{Path(image.name).suffix}"  # a file name may name the patient
        started = time.perf_counter()
        error: Exception | None = None
        try:
            self.s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=image.data, ContentType=image.content_type)
        except Exception as exc:  # noqa: BLE001  (any failure is the request's failure, reported to Locust)
            error = exc
        self.environment.events.request.fire(
            request_type="S3", name=f"PutObject {INPUT_BUCKET}", response_time=(time.perf_counter() - started) * 1000,
            response_length=len(image.data), exception=error, context={})
