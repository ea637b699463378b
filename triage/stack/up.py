"""Start the local stack: S3, MLflow, functions, broker, gateway (design §6); runs until Ctrl-C.

`Stack` is the Python API the demo, the benchmark and the tests share: a context manager that starts every
process of design §6 on 127.0.0.1 and stops all of them on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from shared.config import PROJECT_ROOT, Settings
from shared.errors import UserError
from triage.stack.broker import DeliverySpec
from triage.stack.mlflow_server import mlflow_spec
from triage.stack.processes import ChildFailed, ProcessSpec, Supervisor, check_ports_free
from triage.stack.prometheus import INSTALL_HINT, prometheus_spec
from triage.stack.s3server import s3_client

__all__ = ["ALL_FUNCTIONS", "Stack", "StackConfig", "StackPorts", "add_arguments", "run"]

ALL_FUNCTIONS = ("predict", "explain", "preprocess", "feedback", "minio_source", "ingest", "retrain", "monitor",
                 "canary")
# The gateway splits these between revisions, one process each; the revisions it starts take these slots.
MODEL_FUNCTIONS = ("predict", "explain", "ingest")
REVISION_SLOTS = 2  # a champion at 100 % plus two more: the running canary's and the one it replaces
# Ports from FUNCTION_BASE_PORT on, in this order: the champion's functions, then the revision slots.
FUNCTION_PORT_ORDER = (*ALL_FUNCTIONS, *(f"{name}-slot{i}" for name in MODEL_FUNCTIONS for i in range(REVISION_SLOTS)))
MODEL_NAME = "xray-vit"


@dataclass(frozen=True)
class StackPorts:
    s3: int = 9000
    s3_notify: int = 9001
    mlflow: int = 5000
    gateway: int = 8080
    broker: int = 8081
    prometheus: int = 9090
    function_base: int = 8100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackPorts:
        env = os.environ if env is None else env
        values = {}
        for name, var in PORT_ENV.items():
            raw = env.get(var)
            if raw:
                if not raw.isdigit() or not 0 < int(raw) < 65536:
                    raise UserError(f"environment variable {var}={raw!r} is not a port number")
                values[name] = int(raw)
        return cls(**values)

    @classmethod
    def free(cls) -> StackPorts:
        """Unused ports for tests, outside the kernel's ephemeral range (another process could still take one)."""
        from triage.stack.processes import unused_port_block

        # One block: the six single ports, then every port counted from function_base.
        block = unused_port_block(6 + len(FUNCTION_PORT_ORDER))
        return cls(*block[:6], function_base=block[6])


PORT_ENV = {"s3": "S3_PORT", "s3_notify": "S3_NOTIFY_PORT", "mlflow": "MLFLOW_PORT", "gateway": "GATEWAY_PORT",
            "broker": "BROKER_PORT", "prometheus": "PROMETHEUS_PORT", "function_base": "FUNCTION_BASE_PORT"}


@dataclass(frozen=True)
class StackConfig:
    """What to start. `model_uri` None: the registry's champion, else a phantom model trained first."""

    run_dir: Path = Path(".triage")
    model_uri: str | None = None
    challenger_uri: str | None = None
    functions: tuple[str, ...] = ALL_FUNCTIONS
    ports: StackPorts = field(default_factory=StackPorts)
    mlflow: bool = True
    prometheus: bool = True
    delivery: DeliverySpec = field(default_factory=lambda: DeliverySpec(retry=6, backoff_delay_s=0.5))
    webhook_token: str | None = None
    reviewer_tokens: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 90.0
    train_data: Path | None = None  # DATA=path.npz for the first model instead of phantoms
    force_train: bool = False  # train (and promote) a new model even when the registry has a champion
    extra_triggers: tuple[Mapping[str, Any], ...] = ()  # more broker triggers (broker config format)
    monitor_tick_s: float = 60.0  # the monitor's PingSource (every 15 min in production)
    canary_tick_s: float = 60.0  # the canary's PingSource: one step decision per tick


def _python_env() -> dict[str, str]:
    """Children import the project from its checkout whether or not it is pip-installed."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(PROJECT_ROOT) + (os.pathsep + path if path else "")}


class Stack:
    """The local stack as a context manager; `urls` says where everything is."""

    def __init__(self, config: StackConfig, *, echo: IO[str] | None = sys.stderr) -> None:
        # Tokens and S3 credentials as the functions read them (Settings); fresh random tokens when unset.
        self.settings = Settings.from_env()
        self.config = replace(
            config,
            run_dir=Path(config.run_dir).resolve(),
            webhook_token=config.webhook_token or self.settings.webhook_token or secrets.token_urlsafe(24),
            reviewer_tokens=config.reviewer_tokens or self.settings.reviewer_tokens
            or f"radiologist:{secrets.token_urlsafe(18)}",
        )
        for name in self.config.functions:
            if name not in ALL_FUNCTIONS:
                raise UserError(f"unknown function {name!r} (have {', '.join(ALL_FUNCTIONS)})")
            if not (PROJECT_ROOT / "functions" / name / "main.py").is_file():
                raise UserError(f"functions/{name}/main.py is missing")
        self.echo = echo
        self.supervisor = Supervisor(self.config.run_dir, echo=echo)
        ports = self.config.ports
        self.urls: dict[str, str] = {
            "s3": f"http://127.0.0.1:{ports.s3}",
            "gateway": f"http://127.0.0.1:{ports.gateway}",
            "broker": f"http://127.0.0.1:{ports.broker}",
        }
        if self.config.mlflow:
            self.urls["mlflow"] = f"http://127.0.0.1:{ports.mlflow}"
        self.function_urls: dict[str, str] = {}  # process name (e.g. predict) → URL of the champion revision
        self.model_uri: str | None = None
        self.challenger_uri: str | None = None
        self.started_at: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.supervisor.stop_all()

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, file=self.echo, flush=True)

    @property
    def reviewer_token(self) -> str:
        """The first reviewer's token (the demo and tests post feedback with it)."""
        assert self.config.reviewer_tokens is not None
        return self.config.reviewer_tokens.split(",")[0].split(":", 1)[1]

    def env(self) -> dict[str, str]:
        """Environment every function and helper process gets."""
        cfg = self.config
        env = {
            **_python_env(),
            "S3_ENDPOINT_URL": self.urls["s3"],
            "AWS_ACCESS_KEY_ID": self.settings.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.settings.aws_secret_access_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MODEL_CACHE_DIR": str(cfg.run_dir / "model-cache"),
            "K_SINK": self.urls["broker"],
            "WEBHOOK_TOKEN": cfg.webhook_token or "",
            "REVIEWER_TOKENS": cfg.reviewer_tokens or "",
            "WORKERS": "1",
            "THREADS": os.environ.get("THREADS", "8"),
            # The canary function steps the gateway's split, as it patches Knative Services in production.
            "CANARY_GATEWAY_URL": self.urls["gateway"],
        }
        # The stack's own registry, or none: a tracking URI in the caller's environment must not leak in.
        env["MLFLOW_TRACKING_URI"] = self.urls.get("mlflow", "")
        if "mlflow" in self.urls:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.urls["s3"]
        return {**env, **cfg.extra_env}

    def start(self) -> None:
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.model_uri:  # a typo in a path should not cost a start of S3 and MLflow first
            _checked_uri(cfg.model_uri, "--model / MODEL_URI")
        if cfg.challenger_uri:
            _checked_uri(cfg.challenger_uri, "--challenger")
        ports = cfg.ports
        specs = self._function_specs()
        check_ports_free([
            ProcessSpec("s3", [], port=ports.s3, port_env="S3_PORT"),
            ProcessSpec("s3-notify", [], port=ports.s3_notify, port_env="S3_NOTIFY_PORT"),
            ProcessSpec("broker", [], port=ports.broker, port_env="BROKER_PORT"),
            ProcessSpec("gateway", [], port=ports.gateway, port_env="GATEWAY_PORT"),
            *([ProcessSpec("mlflow", [], port=ports.mlflow, port_env="MLFLOW_PORT")] if cfg.mlflow else []),
            *([ProcessSpec("prometheus", [], port=ports.prometheus, port_env="PROMETHEUS_PORT")]
              if cfg.prometheus else []),
            *specs,
            *[ProcessSpec(name, [], port=self._function_port(name), port_env="FUNCTION_BASE_PORT")
              for name in self._slot_names()],
        ])
        self._say(f"run dir {cfg.run_dir} (logs in {cfg.run_dir / 'logs'})")
        self._start_s3()
        if cfg.mlflow:
            self.supervisor.start(mlflow_spec(cfg.run_dir, ports.mlflow, self.urls["s3"],
                                              ready_timeout_s=max(cfg.ready_timeout_s, 120)))
        self.model_uri, self.challenger_uri = self._resolve_models()
        self._start_broker()
        self._start_functions()
        self._start_gateway()
        if cfg.prometheus:
            self._start_prometheus()

    # -- pieces ------------------------------------------------------------------------------------------------
    def _py(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _start_s3(self) -> None:
        ports = self.config.ports
        minio_source = self._function_url("minio_source") if "minio_source" in self.config.functions else \
            "http://127.0.0.1:9/"  # no adapter: the relay keeps the notifications until one is there
        self.supervisor.start(ProcessSpec(
            "s3", self._py("triage.stack.s3server", "--port", str(ports.s3), "--relay-port", str(ports.s3_notify),
                           "--data-dir", str(self.config.run_dir / "s3"), "--webhook-url", minio_source),
            env=self.env(), port=ports.s3, port_env="S3_PORT",
            health_url=f"http://127.0.0.1:{ports.s3_notify}/healthz", ready_timeout_s=60, cwd=PROJECT_ROOT))

    def _start_broker(self) -> None:
        cfg = self.config
        triggers = []
        if "ingest" in cfg.functions:  # through the gateway: ingest's revisions split the events like Knative's
            triggers.append({"name": "ingest", "subscriber": self.urls["gateway"] + "/ingest",
                             "filter": {"type": "io.minio.object.created", "bucket": "inference-inputs"}})
        if "retrain" in cfg.functions:
            triggers += [
                {"name": "retrain-raw-data", "subscriber": self._function_url("retrain"),
                 "filter": {"type": "io.minio.object.created", "bucket": "raw-data"}},
                {"name": "retrain-feedback", "subscriber": self._function_url("retrain"),
                 "filter": {"type": "triage.feedback.received"}},
            ]
        pings = []
        if "monitor" in cfg.functions:
            monitor = self._function_url("monitor")
            pings.append({"name": "monitor-tick", "every_s": cfg.monitor_tick_s})
            triggers += [
                {"name": "monitor-predictions", "subscriber": monitor, "filter": {"type": "triage.prediction.created"}},
                {"name": "monitor-feedback", "subscriber": monitor, "filter": {"type": "triage.feedback.received"}},
                {"name": "monitor-tick", "subscriber": monitor,
                 "filter": {"type": "dev.knative.sources.ping", "source": "/local/pingsources/monitor-tick"}},
            ]
        if "canary" in cfg.functions:
            canary = self._function_url("canary")
            pings.append({"name": "canary-tick", "every_s": cfg.canary_tick_s})
            triggers += [
                {"name": "canary-registered", "subscriber": canary, "filter": {"type": "triage.model.registered"}},
                {"name": "canary-tick", "subscriber": canary,
                 "filter": {"type": "dev.knative.sources.ping", "source": "/local/pingsources/canary-tick"}},
            ]
        triggers += [dict(trigger) for trigger in cfg.extra_triggers]
        delivery = cfg.delivery
        config_path = cfg.run_dir / "broker.json"
        config_path.write_text(json.dumps({"triggers": triggers, "pings": pings, "delivery": {
            "retry": delivery.retry, "backoff_policy": delivery.backoff_policy,
            "backoff_delay_s": delivery.backoff_delay_s, "timeout_s": delivery.timeout_s}}, indent=2))
        port = cfg.ports.broker
        self.supervisor.start(ProcessSpec(
            "broker", self._py("triage.stack.broker", "--port", str(port), "--config", str(config_path),
                               "--state-dir", str(cfg.run_dir / "broker")),
            env=self.env(), port=port, port_env="BROKER_PORT", health_url=f"http://127.0.0.1:{port}/healthz",
            cwd=PROJECT_ROOT))

    def _function_names(self) -> list[str]:
        return list(self.config.functions)

    def _slot_names(self) -> list[str]:
        """Ports the gateway's revisions may take, as process names (`predict-slot0`, ...)."""
        return [f"{name}-slot{i}" for name in MODEL_FUNCTIONS if name in self.config.functions
                for i in range(REVISION_SLOTS)]

    def _function_url(self, process_name: str) -> str:
        return f"http://127.0.0.1:{self._function_port(process_name)}"

    def _function_port(self, process_name: str) -> int:
        return self.config.ports.function_base + FUNCTION_PORT_ORDER.index(process_name)

    @staticmethod
    def function_argv(target: str, port: int | str) -> list[str]:
        binary = Path(sys.executable).with_name("functions-framework")
        return [str(binary) if binary.exists() else "functions-framework", "--target", target,
                "--source", str(PROJECT_ROOT / "functions" / target / "main.py"), "--host", "127.0.0.1",
                "--port", str(port)]

    def function_spec(self, process_name: str) -> ProcessSpec:
        """How to run one function process of the champion revision (the gateway starts the other revisions)."""
        port = self._function_port(process_name)
        env = {**self.env(), "REVISION": "champion"}
        if self.model_uri:
            env["MODEL_URI"] = self.model_uri
        return ProcessSpec(process_name, self.function_argv(process_name, port), env=env, port=port,
                           port_env="FUNCTION_BASE_PORT", health_url=f"http://127.0.0.1:{port}/healthz",
                           ready_timeout_s=self.config.ready_timeout_s, cwd=PROJECT_ROOT)

    def _function_specs(self) -> list[ProcessSpec]:
        return [self.function_spec(name) for name in self._function_names()]

    def _start_functions(self) -> None:
        # Start all, then wait: the processes load their models in parallel.
        specs = self._function_specs()
        for spec in specs:
            self.supervisor.start(spec, wait=False)
            self.function_urls[spec.name] = self._function_url(spec.name)
        for spec in specs:
            seconds = self.supervisor.wait_healthy(spec.name)
            self.started_at[spec.name] = seconds
            self._say(f"  {spec.name} ready in {seconds:.1f} s on {self.function_urls[spec.name]}")

    def _start_gateway(self) -> None:
        routed = [service for service in MODEL_FUNCTIONS if service in self.config.functions]
        routes: dict[str, Any] = {service: {"revisions": {"champion": self.function_urls[service]},
                                            "traffic": {"champion": 100}} for service in routed}
        if "feedback" in self.config.functions:
            routes["feedback"] = {"revisions": {"default": self.function_urls["feedback"]}}
        path = self.config.run_dir / "gateway.json"
        path.write_text(json.dumps(routes, indent=2))
        # How the gateway starts further revisions (no secrets here: they reach them through its environment).
        launch = {
            "templates": {service: {"argv": self.function_argv(service, "{port}"), "cwd": str(PROJECT_ROOT),
                                    "ports": [self._function_port(f"{service}-slot{i}") for i in range(REVISION_SLOTS)]}
                          for service in routed},
            "initial": {"challenger": self.challenger_uri} if self.challenger_uri else {},
        }
        launch_path = self.config.run_dir / "gateway-revisions.json"
        launch_path.write_text(json.dumps(launch, indent=2))
        port = self.config.ports.gateway
        self.supervisor.start(ProcessSpec(
            "gateway", self._py("triage.stack.gateway", "--port", str(port), "--routes", str(path),
                                "--launch", str(launch_path), "--run-dir", str(self.config.run_dir)),
            env=self.env(), port=port, port_env="GATEWAY_PORT", health_url=f"http://127.0.0.1:{port}/healthz",
            ready_timeout_s=self.config.ready_timeout_s + (60 if self.challenger_uri else 0), cwd=PROJECT_ROOT))

    def _start_prometheus(self) -> None:
        targets = {name: url.removeprefix("http://") for name, url in self.function_urls.items()}
        targets.update({name: f"127.0.0.1:{self._function_port(name)}" for name in self._slot_names()})
        targets.update({"gateway": f"127.0.0.1:{self.config.ports.gateway}",
                        "broker": f"127.0.0.1:{self.config.ports.broker}"})
        spec = prometheus_spec(self.config.run_dir, self.config.ports.prometheus, targets)
        if spec is None:
            self._say(INSTALL_HINT)
            return
        try:
            self.supervisor.start(spec)
            self.urls["prometheus"] = f"http://127.0.0.1:{self.config.ports.prometheus}"
        except ChildFailed as exc:  # optional: the stack works without it
            self._say(f"Prometheus did not start; continuing without it: {exc}")

    # -- models ------------------------------------------------------------------------------------------------
    def _resolve_models(self) -> tuple[str, str | None]:
        cfg = self.config
        if cfg.model_uri:
            return _checked_uri(cfg.model_uri, "--model / MODEL_URI"), (
                _checked_uri(cfg.challenger_uri, "--challenger") if cfg.challenger_uri else None)
        if not cfg.mlflow:
            raise UserError("no model: pass --model PATH|URI or set MODEL_URI (the registry is off)")
        client = self.mlflow_client()
        champion = _alias_version(client, "champion")
        if champion is None or cfg.force_train:
            self._say(f"{'training on ' + str(cfg.train_data) if cfg.force_train else 'no champion in the registry'}"
                      ": training a model first (about a minute)")
            version = train_first_model(self.config.run_dir, self.env(), data=cfg.train_data, echo=self.echo)
            from training_jobs.registry import promote

            promote(version, mlflow_client=client)
            champion = version
        challenger = _alias_version(client, "challenger")
        challenger_uri = cfg.challenger_uri or (
            f"models:/{MODEL_NAME}@challenger" if challenger and challenger != champion else None)
        self._say(f"serving {MODEL_NAME} version {champion} (champion)"
                  + (f", challenger {challenger_uri}" if challenger_uri else ""))
        return f"models:/{MODEL_NAME}@champion", challenger_uri

    def mlflow_client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.urls["mlflow"], registry_uri=self.urls["mlflow"])

    # -- helpers for demo, bench and tests -----------------------------------------------------------------------
    def s3(self) -> Any:
        env = self.env()
        return s3_client(self.urls["s3"], access_key=env["AWS_ACCESS_KEY_ID"],
                         secret_key=env["AWS_SECRET_ACCESS_KEY"])

    def kill(self, process_name: str) -> None:
        self.supervisor.kill(process_name)

    def restart(self, process_name: str) -> float:
        """Start a stopped or killed function again; returns seconds to healthy."""
        self.supervisor.restart(process_name, wait=False)
        return self.supervisor.wait_healthy(process_name)

    def wait(self, poll_s: float = 1.0) -> None:
        """Block until Ctrl-C / SIGTERM; a function that crashes is started again, as Knative would."""
        while True:
            time.sleep(poll_s)
            for name in self.supervisor.check_alive():
                self._say(f"{name} exited; starting it again (log: {self.config.run_dir / 'logs' / name}.log)")
                try:
                    self.restart(name)
                except ChildFailed as exc:
                    self._say(str(exc))


def _checked_uri(uri: str, what: str) -> str:
    if "://" in uri or uri.startswith("models:/"):
        return uri
    path = Path(uri).expanduser()
    if not path.exists():
        raise UserError(f"{what}: {uri} does not exist (a model dir, model.onnx, s3://... or models:/...)")
    return str(path.resolve())


def _alias_version(client: Any, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


PHANTOM_ARGS = ("--n-train", "1200", "--n-val", "200", "--n-test", "200", "--size", "28")
# A small hybrid ViT that trains in about a minute on 2 cores (the default recipe is sized for real data).
# Measured on these phantoms: val AUC 0.98 in 52 s (dim 32 / depth 2 / patch 7 on 400 phantoms learned nothing).
# Epochs run until the time budget (--max-minutes) or early stopping, whichever comes first.
FAST_TRAIN_ARGS = ("--epochs", "40", "--batch-size", "32", "--dim", "48", "--depth", "2", "--heads", "2",
                   "--patch", "4", "--patience", "6", "--max-minutes", "1.0")


def train_first_model(run_dir: Path, env: Mapping[str, str], *, data: Path | None = None,
                      echo: IO[str] | None = sys.stderr, extra_args: tuple[str, ...] = FAST_TRAIN_ARGS) -> str:
    """`triage phantom` (unless `data`) then `triage train` against the stack's MLflow; returns the new version."""
    cli = [sys.executable, "-m", "triage.cli"]
    child_env = {**os.environ, **env}
    if data is None:
        data = Path(run_dir) / "phantom.npz"
        if not data.exists():
            _run_step([*cli, "phantom", "--out", str(data), *PHANTOM_ARGS], child_env, "triage phantom")
    elif not Path(data).is_file():
        raise UserError(f"DATA: {data} is not a file (an .npz like pneumoniamnist_28.npz)")
    out = Path(run_dir) / "models" / time.strftime("%Y%m%d-%H%M%S")
    result = _run_step([*cli, "train", "--data", str(data), "--out", str(out), *extra_args, "--json"], child_env,
                       "triage train", echo=echo)
    version = result.get("version")
    if version is None:
        raise UserError(f"triage train did not register a model (its JSON: {json.dumps(result)[:300]})")
    if echo:
        val, test = result.get("val") or {}, result.get("test") or {}
        scores = ", ".join(f"{name} AUC {split['auc']:.3f}" for name, split in (("val", val), ("test", test))
                           if isinstance(split.get("auc"), float))
        print(f"trained {MODEL_NAME} version {version} in {result.get('total_seconds')} s "
              f"({result.get('epochs')} epochs): {scores or 'no metrics'}"
              + (" - SYNTHETIC data, for demos only" if result.get("synthetic_data") else ""), file=echo, flush=True)
    return str(version)


def _run_step(argv: list[str], env: Mapping[str, str], what: str, echo: IO[str] | None = None) -> dict[str, Any]:
    """Run a CLI step, its progress going to our stderr; returns the JSON of its last stdout line."""
    process = subprocess.run(argv, env=dict(env), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=None if echo else subprocess.PIPE, text=True)
    if process.returncode != 0:
        raise UserError(f"{what} failed with exit code {process.returncode}: "
                        f"{(process.stderr or process.stdout or '')[-800:]}")
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}


# -- CLI ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model to serve: a model dir, s3://..., or models:/xray-vit@champion "
                        "(default: $MODEL_URI, else the registry's champion, else a phantom model trained first)")
    parser.add_argument("--challenger", help="a second model served as revision 'challenger' (0 %% traffic)")
    parser.add_argument("--run-dir", type=Path, default=Path(os.environ.get("RUN_DIR", ".triage")),
                        help="state, logs and the MLflow store (default .triage)")
    parser.add_argument("--data", type=Path, default=os.environ.get("DATA") or None,
                        help="train the first model on this .npz instead of phantoms (default $DATA)")
    parser.add_argument("--functions", default=",".join(ALL_FUNCTIONS), help="comma-separated functions to start")
    parser.add_argument("--no-mlflow", action="store_true", help="do not start MLflow (needs --model)")
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    parser.add_argument("--json", action="store_true", help="print the URLs as one JSON line once ready")


def config_from_args(args: argparse.Namespace) -> StackConfig:
    return StackConfig(
        run_dir=args.run_dir,
        model_uri=args.model or os.environ.get("MODEL_URI") or None,
        challenger_uri=args.challenger,
        functions=tuple(name.strip() for name in args.functions.split(",") if name.strip()),
        ports=StackPorts.from_env(),
        mlflow=not args.no_mlflow,
        prometheus=not args.no_prometheus,
        train_data=args.data,
    )


def run(args: argparse.Namespace) -> int:
    stack = Stack(config_from_args(args))
    stack.supervisor.install_signal_handlers()
    try:
        with stack:
            urls = {**stack.urls, "review": stack.urls["gateway"] + "/review", "functions": stack.function_urls}
            token_file = stack.config.run_dir / "reviewer-token"
            token_file.write_text(stack.reviewer_token + "\n")
            token_file.chmod(0o600)
            print("\nxray-triage local stack is up:")
            for name, url in urls.items():
                if name != "functions":
                    print(f"  {name:<10} {url}")
            print(f"  model      {stack.model_uri}")
            print(f"  reviewer token for /review and /feedback: in {token_file}")
            print("Ctrl-C stops everything.", flush=True)
            if args.json:
                print(json.dumps(urls), flush=True)
            stack.wait()
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    except ChildFailed as exc:
        raise UserError(str(exc)) from exc
    return 0
