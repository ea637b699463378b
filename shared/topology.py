"""The functions and how events reach them, as plain data: the one table production and the local stack read.

- `FUNCTIONS`: each function (its Knative Service name, functions-framework target, public or cluster-local,
  whether it emits events, whether it serves the model) and its environment contract.
- `SUBSCRIPTIONS`: the Triggers of design §4 (event type, bucket, subscriber).
- `PING_SCHEDULES`: the periodic wake-ups, the production cron beside the local stack's tick interval.
- `AUTOSCALING`: the Knative target, containerConcurrency and max-scale of the functions that were measured
  (`triage scale-report`; the rule and the measurement in `load_tests/scale.py`).

`infra_pulumi` turns these into Knative Services, Triggers and PingSources; `triage/stack` into its processes,
broker triggers and ticks. Kubernetes-only details (cpu, memory, max scale, service accounts) live in
`infra_pulumi/functions`. Change an event route or a function's variables here and nowhere else.

The environment contract names, for each variable, WHAT it holds (one of the value names below, e.g.
`S3_URL`); each deployable says where that value comes from (`environment(fn, values)` for plain strings).
A value a deployable does not have leaves its variable out: K_SINK in production (the SinkBinding sets it),
TRAINING_IMAGE locally (retrain launches training in-process there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.names import (
    FEEDBACK_RECEIVED,
    HEATMAP_REQUESTED,
    INPUT_BUCKET,
    MODEL_REGISTERED,
    OBJECT_CREATED,
    PREDICTION_CREATED,
    RAW_BUCKET,
)

__all__ = [
    "API_TOKENS",
    "ARTIFACT_STORE_URL",
    "AUTOSCALING",
    "BROKER_URL",
    "CANARY_REPLAY_MIN_AGREEMENT",
    "CANARY_REPLAY_UPLOADS",
    "CANARY_REQUIRE_APPROVAL",
    "COMMON_ENV",
    "DEAD_LETTER_SINK",
    "DEID_SECRET",
    "EMITTER_ENV",
    "EXPORT_AE_TITLE",
    "EXPORT_METHOD",
    "FUNCTIONS",
    "GATEWAY_URL",
    "LOG_REF_SECRET",
    "MLFLOW_URL",
    "MODEL_THREADS",
    "MODEL_URI",
    "NAMESPACE",
    "PACS_AE_TITLE",
    "PACS_HOST",
    "PACS_PORT",
    "PACS_STOW_URL",
    "PING_SCHEDULES",
    "REGION",
    "RETRAIN_BACKEND",
    "REVIEWER_TOKENS",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_URL",
    "SUBSCRIPTIONS",
    "TRAINING_ENV_SECRET",
    "TRAINING_IMAGE",
    "WEBHOOK_TOKEN",
    "Autoscaling",
    "EnvVar",
    "Function",
    "PingSchedule",
    "Subscription",
    "environment",
    "function",
]

# --- values a variable can hold (each deployable maps these to its own) -----------------------------------------
MODEL_URI = "model_uri"  # the model to serve (models:/xray-vit@champion in production)
S3_URL = "s3_url"  # the S3 endpoint (MinIO / the local S3 server)
ARTIFACT_STORE_URL = "artifact_store_url"  # where MLflow's artifacts are (the same S3 endpoint, when MLflow runs)
MLFLOW_URL = "mlflow_url"  # the MLflow tracking and registry server
REGION = "region"
NAMESPACE = "namespace"  # the Kubernetes namespace of the Knative Services (production only)
BROKER_URL = "broker_url"  # where emitted CloudEvents go
GATEWAY_URL = "gateway_url"  # the local gateway whose split the canary steps (local only: Knative in production)
# The canary's replay (uploads replayed, least agreement with the champion) and its human approval gate; a
# deployable without them leaves them out, and `shared.config.CanarySettings`' defaults apply.
CANARY_REPLAY_UPLOADS = "canary_replay_uploads"
CANARY_REPLAY_MIN_AGREEMENT = "canary_replay_min_agreement"
CANARY_REQUIRE_APPROVAL = "canary_require_approval"
RETRAIN_BACKEND = "retrain_backend"  # where retrain launches training (kubernetes in production)
TRAINING_IMAGE = "training_image"  # the image of the training Jobs retrain launches
TRAINING_ENV_SECRET = "training_env_secret"  # the Secret those Jobs take their credentials from
# Secret values: the names are the keys of the stack's one Kubernetes Secret (infra_pulumi.config).
S3_ACCESS_KEY = "minio_root_user"
S3_SECRET_KEY = "minio_root_password"
WEBHOOK_TOKEN = "webhook_token"
DEID_SECRET = "deid_secret"  # the keyed hash of replaced DICOM UIDs (preprocess, ingest)
LOG_REF_SECRET = "log_ref_secret"  # the keyed hash by which logs name objects (`names.key_ref`): every process
REVIEWER_TOKENS = "reviewer_tokens"
# Where the API token table of predict / explain is (hashes only, not a secret): the state bucket's object in
# production, a file in the run dir locally. Rotated with `triage tokens`, re-read by the functions.
API_TOKENS = "api_tokens"
PACS_STOW_URL = "pacs_stow_url"  # the hospital PACS's DICOMweb base, where export sends the SR and the heatmap
EXPORT_METHOD = "export_method"  # how export sends: stow (DICOMweb, PACS_STOW_URL) or cstore (DIMSE, PACS_HOST...)
PACS_HOST = "pacs_host"  # the PACS's C-STORE SCP: host, port and AE title (EXPORT_METHOD=cstore)
PACS_PORT = "pacs_port"
PACS_AE_TITLE = "pacs_ae_title"
EXPORT_AE_TITLE = "export_ae_title"  # export's own (calling) AE title as the C-STORE SCU


@dataclass(frozen=True)
class EnvVar:
    """One variable of a function's environment: `name` holds the value known as `value` (one of the above)."""

    name: str
    value: str
    secret: bool = False  # a secret value (a key of the Kubernetes Secret in production)


# Every function gets these.
COMMON_ENV: tuple[EnvVar, ...] = (
    EnvVar("MODEL_URI", MODEL_URI),
    EnvVar("S3_ENDPOINT_URL", S3_URL),
    EnvVar("MLFLOW_S3_ENDPOINT_URL", ARTIFACT_STORE_URL),
    EnvVar("MLFLOW_TRACKING_URI", MLFLOW_URL),
    EnvVar("AWS_REGION", REGION),
    EnvVar("KNATIVE_NAMESPACE", NAMESPACE),
    EnvVar("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY, secret=True),
    EnvVar("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY, secret=True),
    EnvVar("LOG_REF_SECRET", LOG_REF_SECRET, secret=True),
)
EMITTER_ENV = (EnvVar("K_SINK", BROKER_URL),)  # functions that emit events


@dataclass(frozen=True, kw_only=True)
class Function:
    """One function: a Knative Service in production, a functions-framework process locally."""

    name: str  # the Service name (DNS label): minio-source
    public: bool  # reachable from outside (Kourier / the gateway); otherwise cluster-local only
    emits_events: bool = False  # gets K_SINK (the broker)
    serves_model: bool = False  # a model version is a revision of it (the canary splits its traffic)
    local: bool = True  # runs in the local stack (whose broker writes dead letters itself)
    own_env: tuple[EnvVar, ...] = ()  # its variables beyond COMMON_ENV (and K_SINK)
    # Request threads of its one gunicorn worker (`triage.stack.function_server`, which runs it here and in the
    # image); None: THREADS, else functions-framework's default (4 per CPU the node has, not the pod's limit).
    threads: int | None = None

    @property
    def target(self) -> str:
        """The functions-framework target and folder: functions/<target>/main.py."""
        return self.name.replace("-", "_")

    @property
    def env(self) -> tuple[EnvVar, ...]:
        """The whole environment contract, in order: the common variables, K_SINK, its own."""
        return COMMON_ENV + (EMITTER_ENV if self.emits_events else ()) + self.own_env


# The model's functions are CPU-bound (one ONNX Runtime thread per call): two request threads let one run the
# model while the other parses, decodes and answers; more only fight over the GIL. Measured on 2 cores, one predict
# process, closed loop at c=8: 2 threads 494-529 req/s and 2.8 ms CPU per answer, 4 threads 444, 8 threads 389
# (3.4 ms); c=1 unchanged (README, "the predict path"). Knative's containerConcurrency queues the rest.
MODEL_THREADS = 2
FUNCTIONS: tuple[Function, ...] = (
    Function(name="predict", public=True, serves_model=True, threads=MODEL_THREADS,
             own_env=(EnvVar("API_TOKENS_URI", API_TOKENS),)),
    Function(name="explain", public=True, serves_model=True, threads=MODEL_THREADS,
             own_env=(EnvVar("API_TOKENS_URI", API_TOKENS),)),
    Function(name="preprocess", public=False, own_env=(EnvVar("DEID_SECRET", DEID_SECRET, secret=True),)),
    Function(
        name="feedback",
        public=True,
        emits_events=True,
        own_env=(EnvVar("REVIEWER_TOKENS", REVIEWER_TOKENS, secret=True),),
    ),
    Function(
        name="minio-source",
        public=False,
        emits_events=True,
        own_env=(EnvVar("WEBHOOK_TOKEN", WEBHOOK_TOKEN, secret=True),),
    ),
    Function(name="ingest", public=False, emits_events=True, serves_model=True,
             own_env=(EnvVar("DEID_SECRET", DEID_SECRET, secret=True),)),
    Function(
        name="retrain",
        public=False,
        emits_events=True,
        own_env=(
            EnvVar("RETRAIN_BACKEND", RETRAIN_BACKEND),
            EnvVar("TRAINING_IMAGE", TRAINING_IMAGE),
            EnvVar("TRAINING_ENV_SECRET", TRAINING_ENV_SECRET),
        ),
    ),
    Function(  # the radiologist's worklist: labels take the feedback path, so it emits their events
        name="review",
        public=True,
        emits_events=True,
        own_env=(EnvVar("REVIEWER_TOKENS", REVIEWER_TOKENS, secret=True),),
    ),
    Function(name="dicomweb", public=True, own_env=(EnvVar("API_TOKENS_URI", API_TOKENS),)),  # STOW-RS ingest
    Function(
        name="canary",
        public=False,
        own_env=(
            EnvVar("CANARY_GATEWAY_URL", GATEWAY_URL),
            EnvVar("CANARY_REPLAY_UPLOADS", CANARY_REPLAY_UPLOADS),
            EnvVar("CANARY_REPLAY_MIN_AGREEMENT", CANARY_REPLAY_MIN_AGREEMENT),
            EnvVar("CANARY_REQUIRE_APPROVAL", CANARY_REQUIRE_APPROVAL),
        ),
    ),
    Function(name="monitor", public=False),
    Function(  # results back to the PACS (DICOM inputs only): an SR + a Secondary Capture, UIDs keyed by DEID_SECRET
        name="export",
        public=False,
        own_env=(
            EnvVar("DEID_SECRET", DEID_SECRET, secret=True),
            EnvVar("EXPORT_METHOD", EXPORT_METHOD),
            EnvVar("PACS_STOW_URL", PACS_STOW_URL),
            EnvVar("PACS_HOST", PACS_HOST),
            EnvVar("PACS_PORT", PACS_PORT),
            EnvVar("PACS_AE_TITLE", PACS_AE_TITLE),
            EnvVar("EXPORT_AE_TITLE", EXPORT_AE_TITLE),
        ),
    ),
    Function(name="dead-letter", public=False, local=False),
)
DEAD_LETTER_SINK = "dead-letter"  # the function that stores events which failed every retry


def function(name: str) -> Function:
    """The function called `name` (Service name or target: minio-source or minio_source)."""
    for fn in FUNCTIONS:
        if name in (fn.name, fn.target):
            return fn
    raise KeyError(name)


def environment(fn: Function, values: Mapping[str, str | None]) -> dict[str, str]:
    """`fn`'s variables with their values from `values` (value name -> string); None or absent: left out."""
    return {var.name: values[var.value] for var in fn.env if values.get(var.value) is not None}


@dataclass(frozen=True)
class Subscription:
    """A Trigger of design §4: events of `event_type` (from `bucket`, when set) go to `subscriber`."""

    name: str
    event_type: str
    subscriber: str  # a function's name
    bucket: str | None = None


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription("ingest-inference-inputs", OBJECT_CREATED, "ingest", INPUT_BUCKET),
    # ingest's heatmap step: its own Trigger, so occlusion maps are delivered apart from the flags of new uploads
    Subscription("ingest-heatmaps", HEATMAP_REQUESTED, "ingest"),
    Subscription("retrain-raw-data", OBJECT_CREATED, "retrain", RAW_BUCKET),
    Subscription("monitor-predictions", PREDICTION_CREATED, "monitor"),
    Subscription("export-predictions", PREDICTION_CREATED, "export"),  # export skips all but DICOM inputs
    Subscription("retrain-feedback", FEEDBACK_RECEIVED, "retrain"),
    Subscription("monitor-feedback", FEEDBACK_RECEIVED, "monitor"),
    Subscription("canary-model-registered", MODEL_REGISTERED, "canary"),
)


@dataclass(frozen=True)
class PingSchedule:
    """A periodic wake-up of `subscriber` (a PingSource in production, a broker tick locally)."""

    name: str
    subscriber: str
    cron: str  # production schedule
    local_every_s: float  # the local stack's tick interval (faster, so a demo sees it)


# The canary steps traffic, the monitor computes drift and live accuracy.
PING_SCHEDULES: tuple[PingSchedule, ...] = (
    PingSchedule("canary-tick", "canary", cron="*/5 * * * *", local_every_s=60.0),
    PingSchedule("monitor-tick", "monitor", cron="*/15 * * * *", local_every_s=60.0),
)


@dataclass(frozen=True)
class Autoscaling:
    """A function's Knative scaling, set from a measurement (`triage scale-report`, rule in `load_tests/scale.py`)."""

    target: int  # autoscaling.knative.dev/target: requests in flight per pod the autoscaler aims at (soft)
    container_concurrency: int  # spec.containerConcurrency: requests in flight per pod at most (hard)
    max_scale: int  # autoscaling.knative.dev/max-scale


# Measured (load_tests.scale.MEASURED_PREDICT: one predict process on 1 CPU, its pod's limit, saturates at
# concurrency 4); the functions not here get the stack's target_concurrency / max_scale and no hard limit.
AUTOSCALING: Mapping[str, Autoscaling] = {
    "predict": Autoscaling(target=2, container_concurrency=4, max_scale=2),
}
