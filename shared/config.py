"""Settings of every serving deployable, read once from the environment into frozen objects and passed down.

`Settings` is what every function reads; `CanarySettings`, `MonitorConfig` and `RetrainConfig` are the event
functions' own. Every number goes through `env_number` (one parser, one error type: `ConfigError`, a UserError
naming the variable). Nothing outside this module (and `triage/config.py` for the CLI and the local stack) reads
`os.environ`. Bucket and key names live in `shared.names`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import UserError
from shared.names import AE_TITLE, API_TOKENS_KEY, BUCKETS, STATE_BUCKET

__all__ = [
    "BUCKETS",
    "BURNED_IN_POLICIES",
    "CANARY_SERVICES",
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_PIXELS",
    "PROJECT_ROOT",
    "RECORD_WRITERS",
    "RETRAIN_BACKENDS",
    "CanaryPolicy",
    "CanarySettings",
    "ConfigError",
    "EXPORT_METHODS",
    "ExportSettings",
    "MonitorConfig",
    "RetrainConfig",
    "Settings",
    "default_tracking_uri",
    "disable_onnxruntime_telemetry",
    "env_number",
    "parse_steps",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CANARY_SERVICES = ("predict", "explain", "ingest")  # the services a model version is a revision of
RETRAIN_BACKENDS = ("local", "kubernetes", "github")
DEFAULT_MAX_PIXELS = 50_000_000  # declared pixels above this are refused (413) before any is decoded
# The largest input object held in memory (MAX_INPUT_BYTES): an object ingest reads from inference-inputs, a C-STORE
# data set the DICOM receiver takes. The largest image allowed, at 16 bits in one sample, plus its headers.
DEFAULT_MAX_INPUT_BYTES = 2 * DEFAULT_MAX_PIXELS + (16 << 20)
BURNED_IN_POLICIES = ("refuse", "mark")  # BURNED_IN_ANNOTATION: the first is the default
# REQUEST_RECORD_WRITER: predict's / explain's record batches through a child process (the default: botocore off the
# request threads' GIL, ~50 MB of RSS) or from a thread of the function's own process (tests that import a function
# many times, a platform that allows no subprocess).
RECORD_WRITERS = ("process", "thread")


class ConfigError(UserError, ValueError):
    """An environment variable (or option) with a value that cannot be used; the message names it."""

    code = "bad_setting"


def env_number(env: Mapping[str, str], name: str, default: float | None, *, whole: bool = False,
               none_ok: bool = False, unit: str = "number") -> float | None:
    """The number in `env[name]`, `default` when unset or empty; "none" → None where `none_ok`.

    ConfigError naming the variable for anything else that is not a (whole) number.
    """
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if none_ok and raw.strip().lower() == "none":
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={raw!r} is not a {unit}") from exc
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"environment variable {name}={raw!r} is not a finite {unit}")
    if whole and value != int(value):
        raise ConfigError(f"environment variable {name}={raw!r} is not a whole number")
    return value


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    return int(env_number(env, name, default, whole=True))  # type: ignore[arg-type]


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """`env[name]` lower-cased when it is one of `choices`, the first choice when unset; ConfigError otherwise."""
    value = (env.get(name) or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"environment variable {name}={env.get(name)!r} is not one of {', '.join(choices)}")
    return value


def _real(env: Mapping[str, str], name: str, default: float, unit: str = "number") -> float:
    return float(env_number(env, name, default, unit=unit))  # type: ignore[arg-type]


def _not_negative(env: Mapping[str, str], name: str, default: float, unit: str) -> float:
    value = _real(env, name, default, unit)
    if value < 0:
        raise ConfigError(f"environment variable {name}={env.get(name)!r} must not be negative")
    return value


def _positive(env: Mapping[str, str], name: str, default: float, unit: str, *, whole: bool = False) -> float:
    value = float(env_number(env, name, default, whole=whole, unit=unit))  # type: ignore[arg-type]
    if value <= 0:
        raise ConfigError(f"environment variable {name}={env.get(name)!r} must be positive")
    return value


def _ae_title(name: str, raw: str) -> str:
    """A DICOM AE title (PS3.5: 1 to 16 characters of the default repertoire, no backslash), spaces trimmed."""
    title = raw.strip()
    if not AE_TITLE.fullmatch(title):
        raise ConfigError(f"environment variable {name}: {raw!r} is not an AE title (1 to 16 printable ASCII "
                          "characters, no backslash)")
    return title


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    value = _whole(env, name, default)
    if not 0 < value < 65536:
        raise ConfigError(f"environment variable {name}={env.get(name)!r} is not a port number")
    return value


@dataclass(frozen=True)
class Settings:
    """Every environment variable the functions read, in one place."""

    # S3 (moto server locally, MinIO in production); credentials default to MinIO's.
    s3_endpoint_url: str | None = None
    aws_access_key_id: str = "minioadmin"
    aws_secret_access_key: str = field(default="minioadmin", repr=False)
    aws_region: str = "us-east-1"
    # Model: a local path, s3://bucket/prefix/, or models:/xray-vit@champion.
    model_uri: str | None = None
    model_cache_dir: Path = PROJECT_ROOT / ".cache" / "models"
    model_variant: str = "model.onnx"  # or model.int8.onnx
    mlflow_tracking_uri: str | None = None
    # Events: K_SINK is where a function posts CloudEvents (Knative's SinkBinding sets it).
    k_sink: str | None = None
    # Security: the webhook token of the MinIO adapter and the reviewers' tokens ("name:token,name2:token2").
    webhook_token: str | None = field(default=None, repr=False)
    reviewer_tokens: str | None = field(default=None, repr=False)
    # De-identification: the per-installation secret of the keyed hash that replaces DICOM UIDs (no secret: nothing
    # is de-identified, 503), and what to do with an image whose pixels carry burned-in text: refuse | mark.
    deid_secret: str | None = field(default=None, repr=False)
    burned_in_annotation: str = "refuse"
    request_record_writer: str = "process"  # RECORD_WRITERS
    # API tokens of predict / explain: the table (s3://bucket/key or a file), how often it is re-read, the rate limit.
    api_tokens_uri: str = f"s3://{STATE_BUCKET}/{API_TOKENS_KEY}"
    api_tokens_refresh_s: float = 10.0
    api_rate_per_s: float = 10.0  # per token and process; an entry of the table may set its own
    api_rate_burst: int = 20
    # The review worklist: a case unreviewed longer than this goes ahead of fresher ones; sign-ins last this long.
    review_max_wait_min: float = 60.0
    review_session_hours: float = 8.0
    # Limits.
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    url_fetch_timeout_s: float = 5.0
    # Networks a {"url"} input may point into despite the SSRF guard ("127.0.0.1/32,::1"): local stack and tests only.
    url_allow_networks: str = ""
    # ONNX Runtime intra-op threads: 1 keeps one request per core predictable under concurrency.
    ort_intra_op_threads: int = 1
    # Micro-batching of concurrent single-image model runs (shared.batching): up to PREDICT_BATCH_MAX rows in one
    # session.run, waiting at most PREDICT_BATCH_WAIT_MS for company; 1 is off (measured in `make bench`).
    predict_batch_max: int = 1
    predict_batch_wait_ms: float = 2.0
    # Retraining.
    retrain_min_labels: int = 50
    retrain_backend: str = "local"  # local | kubernetes | github
    # Set by retrain on the training job it launches: which batch of labels the job trains on.
    retrain_batch_id: str | None = None
    retrain_batch_uri: str | None = None  # s3://triage-state/retrain/batches/<id>.json: the labels to train on
    # Revision label this process serves (the gateway / Knative route splits traffic between revisions).
    revision: str = "champion"
    # The DICOM receiver (C-STORE SCP, shared.pacs.receiver): its AE title and port, the calling AE titles it
    # accepts (DICOM_ALLOWED_AES, comma-separated; empty: any), concurrent associations, the PDU size it offers.
    dicom_ae_title: str = "XRAYTRIAGE"
    dicom_port: int = 11112
    dicom_allowed_aes: tuple[str, ...] = ()
    dicom_max_associations: int = 10
    dicom_max_pdu_bytes: int = 262_144
    # Kubernetes API (canary, retrain): a kubeconfig file, else the in-cluster service account's host and port.
    kubeconfig: str | None = None
    kubernetes_service_host: str | None = None
    kubernetes_service_port: str = "443"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        kubeconfig = env.get("KUBECONFIG") or None
        return cls(
            s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "minioadmin"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "minioadmin"),
            aws_region=env.get("AWS_REGION", "us-east-1"),
            model_uri=env.get("MODEL_URI") or None,
            model_cache_dir=Path(env.get("MODEL_CACHE_DIR") or PROJECT_ROOT / ".cache" / "models"),
            model_variant=env.get("MODEL_VARIANT", "model.onnx"),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            k_sink=env.get("K_SINK") or None,
            webhook_token=env.get("WEBHOOK_TOKEN") or None,
            reviewer_tokens=env.get("REVIEWER_TOKENS") or None,
            deid_secret=env.get("DEID_SECRET") or None,
            burned_in_annotation=_choice(env, "BURNED_IN_ANNOTATION", BURNED_IN_POLICIES),
            request_record_writer=_choice(env, "REQUEST_RECORD_WRITER", RECORD_WRITERS),
            api_tokens_uri=env.get("API_TOKENS_URI") or f"s3://{STATE_BUCKET}/{API_TOKENS_KEY}",
            api_tokens_refresh_s=_positive(env, "API_TOKENS_REFRESH_S", 10.0, "number of seconds"),
            api_rate_per_s=_positive(env, "API_RATE_PER_S", 10.0, "number of requests per second"),
            api_rate_burst=int(_positive(env, "API_RATE_BURST", 20, "whole number", whole=True)),
            review_max_wait_min=_real(env, "REVIEW_MAX_WAIT_MIN", 60.0, "number of minutes"),
            review_session_hours=_real(env, "REVIEW_SESSION_HOURS", 8.0, "number of hours"),
            max_body_bytes=_whole(env, "MAX_BODY_BYTES", 20 * 1024 * 1024),
            max_pixels=_whole(env, "MAX_PIXELS", DEFAULT_MAX_PIXELS),
            max_input_bytes=int(_positive(env, "MAX_INPUT_BYTES", DEFAULT_MAX_INPUT_BYTES, "whole number", whole=True)),
            url_fetch_timeout_s=_real(env, "URL_FETCH_TIMEOUT_S", 5.0, "number of seconds"),
            url_allow_networks=env.get("URL_ALLOW_NETWORKS", ""),
            ort_intra_op_threads=_whole(env, "ORT_INTRA_OP_THREADS", 1),
            predict_batch_max=int(_positive(env, "PREDICT_BATCH_MAX", 1, "whole number", whole=True)),
            predict_batch_wait_ms=_not_negative(env, "PREDICT_BATCH_WAIT_MS", 2.0, "number of milliseconds"),
            retrain_min_labels=_whole(env, "RETRAIN_MIN_LABELS", 50),
            retrain_backend=env.get("RETRAIN_BACKEND", "local"),
            retrain_batch_id=env.get("RETRAIN_BATCH_ID") or None,
            retrain_batch_uri=env.get("RETRAIN_BATCH_URI") or None,
            revision=env.get("REVISION", "champion"),
            dicom_ae_title=_ae_title("DICOM_AE_TITLE", env.get("DICOM_AE_TITLE") or "XRAYTRIAGE"),
            dicom_port=_port(env, "DICOM_PORT", 11112),
            dicom_allowed_aes=tuple(_ae_title("DICOM_ALLOWED_AES", title)
                                    for title in (env.get("DICOM_ALLOWED_AES") or "").split(",") if title.strip()),
            dicom_max_associations=int(_positive(env, "DICOM_MAX_ASSOCIATIONS", 10, "whole number", whole=True)),
            dicom_max_pdu_bytes=int(_positive(env, "DICOM_MAX_PDU_BYTES", 262_144, "whole number", whole=True)),
            kubeconfig=kubeconfig.split(os.pathsep)[0] if kubeconfig else None,
            kubernetes_service_host=env.get("KUBERNETES_SERVICE_HOST") or None,
            kubernetes_service_port=env.get("KUBERNETES_SERVICE_PORT") or "443",
        )


def default_tracking_uri() -> str:
    """MLflow tracking URI: $MLFLOW_TRACKING_URI, else a local store inside the project's working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def disable_onnxruntime_telemetry() -> None:
    """ONNX Runtime (>= 1.29 on Linux) uploads usage telemetry to Microsoft unless ORT_DISABLE_TELEMETRY=1 is set
    before its first session: called before the serving model opens, so a hospital's service sends nothing out,
    writes no device id, and starts no uploader thread at load. An operator's own ORT_DISABLE_TELEMETRY wins."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# --- canary (design §9) ------------------------------------------------------------------------------------------
def parse_steps(text: str) -> tuple[int, ...]:
    """"10,25,50,100" → (10, 25, 50, 100); UserError naming the value otherwise."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"steps: expected comma-separated whole percents like 10,25,50,100, got {text!r}") from exc


@dataclass(frozen=True)
class CanaryPolicy:
    """Traffic steps (percent to the challenger, ending at 100) and the thresholds every step must meet.

    `max_p99_ratio` compares the challenger's p99 with the champion's; the feedback check applies once the
    challenger has `min_feedback` labels: its accuracy may fall at most `max_accuracy_drop` below the champion's
    (and never under `min_accuracy` when set). These are the canary's thresholds: change them here (or with the
    CANARY_* variables / `triage canary` options).
    The replay (before any traffic, `shared.canary.replay`) judges sensitivity once it has `replay_min_positives`
    labelled pneumonia cases and agreement once it has `replay_min_unlabelled` unlabelled ones; `require_approval`
    makes a canary that passed its last step wait for `triage canary approve` before it is promoted.
    """

    steps: tuple[int, ...] = (10, 25, 50, 100)
    max_error_rate: float = 0.02
    max_p99_s: float | None = 1.0
    max_p99_ratio: float | None = 2.0
    min_requests: int = 20
    min_feedback: int = 20
    max_accuracy_drop: float = 0.05
    min_accuracy: float | None = None
    replay_min_agreement: float = 0.9  # share of unlabelled replayed cases with the champion's label
    replay_min_positives: int = 5  # labelled pneumonia cases before the replay judges sensitivity
    replay_min_unlabelled: int = 20  # unlabelled cases before the replay judges agreement
    require_approval: bool = False  # wait for a human (`triage canary approve`) before promoting

    def __post_init__(self) -> None:
        steps = self.steps
        if not steps or any(not isinstance(s, int) or not 0 < s <= 100 for s in steps):
            raise ConfigError(f"steps: expected whole percents in 1..100, got {list(steps)}")
        if list(steps) != sorted(set(steps)) or steps[-1] != 100:
            raise ConfigError(f"steps: expected strictly increasing percents ending at 100, got {list(steps)}")
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError(f"max_error_rate: expected a fraction in [0, 1], got {self.max_error_rate}")
        for name in ("max_p99_s", "max_p99_ratio"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}: expected a positive number, got {value}")
        if self.min_requests < 1 or self.min_feedback < 1:
            raise ConfigError("min_requests / min_feedback: expected at least 1")
        if not 0 <= self.max_accuracy_drop <= 1 or (self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1):
            raise ConfigError("max_accuracy_drop / min_accuracy: expected fractions in [0, 1]")
        if not 0 <= self.replay_min_agreement <= 1 or self.replay_min_positives < 1 or self.replay_min_unlabelled < 1:
            raise ConfigError("replay_min_agreement: expected a fraction in [0, 1]; replay_min_*: at least 1")


@dataclass(frozen=True)
class CanarySettings:
    """The canary function's environment, read once."""

    policy: CanaryPolicy = CanaryPolicy()
    prometheus_url: str | None = "http://prometheus:9090"  # None: the local gateway's own /metrics
    window: str = "5m"
    namespace: str = "xray-triage"
    kubernetes_api: str | None = None  # None: in-cluster (KUBERNETES_SERVICE_HOST) or KUBECONFIG
    services: tuple[str, ...] = CANARY_SERVICES
    gateway_url: str | None = None  # set: drive the local gateway instead of Knative
    model_uri: str | None = "models:/xray-vit/{version}"  # the challenger revisions' MODEL_URI; "" leaves it
    gateway_token: str | None = field(default=None, repr=False)  # GATEWAY_ADMIN_TOKEN: the local gateway's /admin
    replay: bool = True  # CANARY_REPLAY: score recent and labelled uploads offline before any traffic
    replay_uploads: int = 200  # CANARY_REPLAY_UPLOADS: the latest N uploads replayed (every labelled one too)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CanarySettings:
        env = os.environ if env is None else env
        base = CanaryPolicy()
        policy = CanaryPolicy(
            steps=parse_steps(env.get("CANARY_STEPS") or "10,25,50,100"),
            max_error_rate=_real(env, "CANARY_MAX_ERROR_RATE", base.max_error_rate),
            max_p99_s=env_number(env, "CANARY_MAX_P99_S", base.max_p99_s, none_ok=True),
            max_p99_ratio=env_number(env, "CANARY_MAX_P99_RATIO", base.max_p99_ratio, none_ok=True),
            min_requests=_whole(env, "CANARY_MIN_REQUESTS", base.min_requests),
            min_feedback=_whole(env, "CANARY_MIN_FEEDBACK", base.min_feedback),
            max_accuracy_drop=_real(env, "CANARY_MAX_ACCURACY_DROP", base.max_accuracy_drop),
            min_accuracy=env_number(env, "CANARY_MIN_ACCURACY", None, none_ok=True),
            replay_min_agreement=_real(env, "CANARY_REPLAY_MIN_AGREEMENT", base.replay_min_agreement),
            replay_min_positives=_whole(env, "CANARY_REPLAY_MIN_POSITIVES", base.replay_min_positives),
            replay_min_unlabelled=_whole(env, "CANARY_REPLAY_MIN_UNLABELLED", base.replay_min_unlabelled),
            require_approval=_choice(env, "CANARY_REQUIRE_APPROVAL", ("false", "true")) == "true",
        )
        namespace = env.get("KNATIVE_NAMESPACE") or "xray-triage"
        services = tuple(s for s in (env.get("CANARY_SERVICES") or ",".join(CANARY_SERVICES)).split(",") if s)
        return cls(
            policy=policy,
            prometheus_url=env.get("PROMETHEUS_URL") or (
                None if env.get("CANARY_GATEWAY_URL") else f"http://prometheus.{namespace}.svc.cluster.local:9090"),
            window=env.get("CANARY_WINDOW") or "5m",
            namespace=namespace,
            kubernetes_api=env.get("KUBERNETES_API") or None,
            services=services,
            gateway_url=env.get("CANARY_GATEWAY_URL") or None,
            model_uri=env.get("CANARY_MODEL_URI", "models:/xray-vit/{version}") or None,
            gateway_token=env.get("GATEWAY_ADMIN_TOKEN") or None,
            replay=_choice(env, "CANARY_REPLAY", ("true", "false")) == "true",
            replay_uploads=int(_positive(env, "CANARY_REPLAY_UPLOADS", 200, "whole number", whole=True)),
        )


# --- monitor -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitorConfig:
    """The monitor's window and thresholds, read once (`from_env`) and passed down."""

    window_days: float = 7.0  # predictions and labels older than this leave the window
    window_labels: int = 500  # live accuracy over at most the latest N labels
    bins: int = 10  # equal-width probability bins over [0, 1]
    reference_size: int = 200  # predictions forming the first-window reference (when the card has none)
    # Fewer predictions in the window: no drift verdict. PSI is biased upwards in small samples: windows drawn
    # from PneumoniaMNIST's own train split exceed 0.2 (10 bins) in 32 % of draws of 50 inputs, 4 % of 100, 0 of 200.
    min_predictions: int = 200
    psi_threshold: float = 0.2  # PSI above this is drift (0.1-0.25 is the usual "moderate" band)
    ks_threshold: float = 0.2  # KS distance of the binned CDFs above this is drift
    model_uri: str | None = None  # where the model card (the validation reference) is read from

    def __post_init__(self) -> None:
        checks = {
            "MONITOR_WINDOW_DAYS": self.window_days > 0,
            "MONITOR_WINDOW_LABELS": self.window_labels >= 1,
            "MONITOR_BINS": 2 <= self.bins <= 100,
            "MONITOR_REFERENCE_SIZE": self.reference_size >= 1,
            "MONITOR_MIN_PREDICTIONS": self.min_predictions >= 1,
            "MONITOR_PSI_THRESHOLD": self.psi_threshold > 0,
            "MONITOR_KS_THRESHOLD": 0 < self.ks_threshold <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"environment variable {name}: value out of range")

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] | None = None) -> MonitorConfig:
        env = os.environ if env is None else env
        return cls(
            window_days=_real(env, "MONITOR_WINDOW_DAYS", cls.window_days),
            window_labels=_whole(env, "MONITOR_WINDOW_LABELS", cls.window_labels),
            bins=_whole(env, "MONITOR_BINS", cls.bins),
            reference_size=_whole(env, "MONITOR_REFERENCE_SIZE", cls.reference_size),
            min_predictions=_whole(env, "MONITOR_MIN_PREDICTIONS", cls.min_predictions),
            psi_threshold=_real(env, "MONITOR_PSI_THRESHOLD", cls.psi_threshold),
            ks_threshold=_real(env, "MONITOR_KS_THRESHOLD", cls.ks_threshold),
            model_uri=settings.model_uri,
        )


# --- retrain -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainConfig:
    """What retraining needs beyond Settings (read once, from the environment, in `from_env`)."""

    backend: str = "local"
    min_labels: int = 50
    # The current data set (`triage prepare --data ... --name current`) plus the batch's labelled uploads, which
    # `triage train` reads from RETRAIN_BATCH_URI.
    train_command: tuple[str, ...] = ("triage", "train", "--data", "s3://processed/current")
    training_image: str = "ghcr.io/xray-triage/training:latest"
    namespace: str | None = None  # kubernetes: defaults to the pod's own namespace
    service_account: str | None = None
    env_secret: str | None = "triage-training-env"  # kubernetes Secret with S3 / MLflow credentials, optional
    kubernetes_api: str = "https://kubernetes.default.svc"
    github_repository: str | None = None  # owner/name
    github_token: str | None = field(default=None, repr=False)
    github_api: str = "https://api.github.com"
    stale_after_s: float = 900.0
    job_env: Mapping[str, str] = field(default_factory=dict)  # passed to the job (endpoints, never secrets)

    def __post_init__(self) -> None:
        if self.backend not in RETRAIN_BACKENDS:
            raise ConfigError(f"RETRAIN_BACKEND={self.backend!r} is not one of {', '.join(RETRAIN_BACKENDS)}")
        if self.min_labels < 1:
            raise ConfigError(f"RETRAIN_MIN_LABELS={self.min_labels} must be at least 1")

    @classmethod
    def from_env(cls, settings: Settings, env: Mapping[str, str] | None = None) -> RetrainConfig:
        env = os.environ if env is None else env
        job_env = {
            "S3_ENDPOINT_URL": settings.s3_endpoint_url,
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "K_SINK": settings.k_sink,
        }
        return cls(
            backend=settings.retrain_backend,
            min_labels=settings.retrain_min_labels,
            train_command=tuple(shlex.split(env["TRAIN_COMMAND"])) if env.get("TRAIN_COMMAND") else cls.train_command,
            training_image=env.get("TRAINING_IMAGE") or cls.training_image,
            namespace=env.get("TRAINING_NAMESPACE") or None,
            service_account=env.get("TRAINING_SERVICE_ACCOUNT") or None,
            env_secret=env.get("TRAINING_ENV_SECRET", cls.env_secret) or None,
            kubernetes_api=env.get("KUBERNETES_API") or cls.kubernetes_api,
            github_repository=env.get("GITHUB_REPOSITORY") or None,
            github_token=env.get("GITHUB_TOKEN") or None,
            github_api=env.get("GITHUB_API_URL") or cls.github_api,
            stale_after_s=_real(env, "RETRAIN_STALE_AFTER_S", cls.stale_after_s, "number of seconds"),
            job_env={name: value for name, value in job_env.items() if value},
        )


# --- export (results back to the PACS) ----------------------------------------------------------------------------
EXPORT_METHODS = ("stow", "cstore")  # EXPORT_METHOD: DICOMweb STOW-RS (the default) or a DIMSE C-STORE


@dataclass(frozen=True)
class ExportSettings:
    """Where and how the export function sends the SR and the Secondary Capture (read once, `from_env`)."""

    method: str = "stow"
    stow_url: str | None = None  # PACS_STOW_URL: the DICOMweb base (Orthanc: http://host:8042/dicom-web)
    pacs_host: str | None = None  # PACS_HOST / PACS_PORT / PACS_AE_TITLE: the C-STORE SCP
    pacs_port: int = 4242
    pacs_ae_title: str = "ORTHANC"
    calling_ae_title: str = "XRAYTRIAGE"  # EXPORT_AE_TITLE: our AE title as the SCU
    timeout_s: float = 10.0  # EXPORT_TIMEOUT_S: connect / response timeout of one attempt
    attempts: int = 2  # EXPORT_ATTEMPTS: tries within one delivery before answering 5xx (the broker retries too)
    backoff_s: float = 0.5  # EXPORT_BACKOFF_S: wait before the second try, doubled each further one

    def __post_init__(self) -> None:
        if self.method not in EXPORT_METHODS:
            raise ConfigError(f"EXPORT_METHOD={self.method!r} is not one of {', '.join(EXPORT_METHODS)}")
        if not 0 < self.pacs_port < 65536:
            raise ConfigError(f"environment variable PACS_PORT={self.pacs_port} is not a port number")
        if self.attempts < 1 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ConfigError("EXPORT_ATTEMPTS must be at least 1, EXPORT_TIMEOUT_S positive, EXPORT_BACKOFF_S >= 0")

    @property
    def configured(self) -> bool:
        """A destination is set for the chosen method (else every export is a 503: the operator's to fix)."""
        return bool(self.stow_url if self.method == "stow" else self.pacs_host)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExportSettings:
        env = os.environ if env is None else env
        return cls(
            method=_choice(env, "EXPORT_METHOD", EXPORT_METHODS),
            stow_url=env.get("PACS_STOW_URL") or None,
            pacs_host=env.get("PACS_HOST") or None,
            pacs_port=_whole(env, "PACS_PORT", cls.pacs_port),
            pacs_ae_title=env.get("PACS_AE_TITLE") or cls.pacs_ae_title,
            calling_ae_title=env.get("EXPORT_AE_TITLE") or cls.calling_ae_title,
            timeout_s=_positive(env, "EXPORT_TIMEOUT_S", cls.timeout_s, "number of seconds"),
            attempts=_whole(env, "EXPORT_ATTEMPTS", cls.attempts),
            backoff_s=_real(env, "EXPORT_BACKOFF_S", cls.backoff_s, "number of seconds"),
        )
