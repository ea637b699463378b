"""The local stack as a Python API: `Stack`, a context manager that starts every process of design §6.

S3 (with its notification relay), MLflow, the broker, each function, the gateway and Prometheus, on 127.0.0.1;
all stopped on exit, Ctrl-C or SIGTERM. The demo, the benchmark and the tests share it. Which functions get
which variables and which events reach them come from `shared.topology`, through `wiring`.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from shared.config import PROJECT_ROOT, ExportSettings, Settings
from shared.errors import UserError
from triage.config import PORT_ENV, TriageEnv
from triage.stack.mlflow_server import mlflow_spec
from triage.stack.models import checked_uri, resolve_models, train_first_model
from triage.stack.orthanc import INSTALL_HINT as ORTHANC_HINT
from triage.stack.orthanc import OrthancPorts, orthanc_spec
from triage.stack.ports import ALL_FUNCTIONS, MODEL_FUNCTIONS, REVISION_SLOTS, StackPorts
from triage.stack.processes import ChildFailed, ProcessSpec, Supervisor, check_ports_free, unused_port_block
from triage.stack.prometheus import INSTALL_HINT, prometheus_spec
from triage.stack.s3server import HEALTH_PATH as S3_HEALTH_PATH
from triage.stack.s3server import outbox_dir, s3_client
from triage.stack.triggers import DeliverySpec
from triage.stack.wiring import LocalValues, broker_config, stack_env
from triage.tokens import issue_local_token, local_table

__all__ = ["Stack", "StackConfig"]


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
    # Orthanc, the PACS stand-in (`triage up` and the demo turn it on; started when installed): export sends there
    # unless PACS_STOW_URL / PACS_HOST are set. Off by default, so tests that do not ask for it start none.
    orthanc: bool = False
    orthanc_ports: OrthancPorts | None = None  # None: ORTHANC_HTTP_PORT / ORTHANC_DICOM_PORT, else 8042 / 4242
    delivery: DeliverySpec = field(default_factory=lambda: DeliverySpec(retry=6, backoff_delay_s=0.5))
    webhook_token: str | None = None
    reviewer_tokens: str | None = None
    admin_token: str | None = None  # the gateway's admin API (GATEWAY_ADMIN_TOKEN, else a fresh one)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 90.0
    train_data: Path | None = None  # DATA=path.npz for the first model instead of phantoms
    force_train: bool = False  # train (and promote) a new model even when the registry has a champion
    extra_triggers: tuple[Mapping[str, Any], ...] = ()  # more broker triggers (broker config format)
    monitor_tick_s: float | None = None  # the monitor's tick (None: shared.topology's local interval)
    canary_tick_s: float | None = None  # the canary's tick: one step decision per tick
    dicom_port: int | None = None  # the DICOM receiver's port (`triage up`: DICOM_PORT, 11112); None: not started


def installation_secret(run_dir: Path, name: str) -> str:
    """The secret kept in `run_dir/name` (mode 0600), made once: the same for every start of this installation."""
    path = run_dir / name
    if path.is_file():
        return path.read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    partial = path.with_name(f".{name}.{os.getpid()}")
    partial.write_text(value + "\n")
    partial.chmod(0o600)
    try:
        os.link(partial, path)  # fails if another start made it first: then theirs is the secret
    except FileExistsError:
        value = path.read_text().strip()
    finally:
        partial.unlink()
    return value


class Stack:
    """The local stack as a context manager; `urls` says where everything is."""

    def __init__(self, config: StackConfig, *, echo: IO[str] | None = sys.stderr, env: TriageEnv | None = None) -> None:
        self.triage_env = env or TriageEnv.from_env()
        # Tokens and S3 credentials as the functions read them (Settings); fresh random tokens when unset.
        self.settings = Settings.from_env()
        # DICOM UIDs are a keyed hash: one secret per installation, kept in the run folder across restarts.
        self.deid_secret = self.settings.deid_secret or installation_secret(Path(config.run_dir), "deid-secret")
        # Log lines name objects by a hash keyed per installation too (`shared.names.key_ref`).
        self.log_ref_secret = os.environ.get("LOG_REF_SECRET") or installation_secret(Path(config.run_dir),
                                                                                      "log-ref-secret")
        self.config = replace(
            config,
            run_dir=Path(config.run_dir).resolve(),
            webhook_token=config.webhook_token or self.settings.webhook_token or secrets.token_urlsafe(24),
            reviewer_tokens=config.reviewer_tokens or self.settings.reviewer_tokens
            or f"radiologist:{secrets.token_urlsafe(18)}",
            admin_token=config.admin_token or self.triage_env.gateway_admin_token or secrets.token_urlsafe(24),
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
        self.api_token: str | None = None  # issued at start: the stack's own caller of predict / explain

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
        # S3 last: the functions' graceful exits write into it (the pending request-record batches, a result).
        self.supervisor.stop_all(last=("s3",))

    def _say(self, text: str) -> None:
        if self.echo:
            print(text, file=self.echo, flush=True)

    @property
    def admin_headers(self) -> dict[str, str]:
        """`Authorization` with the gateway's admin token, for /admin/traffic and /admin/revisions."""
        return {"Authorization": f"Bearer {self.config.admin_token}"}

    @property
    def reviewer_token(self) -> str:
        """The first reviewer's token (the demo and tests post feedback with it)."""
        assert self.config.reviewer_tokens is not None
        return self.config.reviewer_tokens.split(",")[0].split(":", 1)[1]

    @property
    def api_headers(self) -> dict[str, str]:
        """`Authorization` with the stack's API token, for calls of /predict and /explain (demo, bench, tests)."""
        assert self.api_token is not None, "the stack is not started"
        return {"Authorization": f"Bearer {self.api_token}"}

    def env(self) -> dict[str, str]:
        """Environment every function and helper process gets (`wiring.stack_env`), then `extra_env`."""
        cfg = self.config
        values = LocalValues(
            s3_url=self.urls["s3"], broker_url=self.urls["broker"], gateway_url=self.urls["gateway"],
            mlflow_url=self.urls.get("mlflow"), model_uri=self.model_uri,
            access_key=self.settings.aws_access_key_id, secret_key=self.settings.aws_secret_access_key,
            webhook_token=cfg.webhook_token or "", reviewer_tokens=cfg.reviewer_tokens or "",
            admin_token=cfg.admin_token or "",
            api_tokens=str(local_table(cfg.run_dir)), deid_secret=self.deid_secret,
            log_ref_secret=self.log_ref_secret)
        env = stack_env(values, run_dir=cfg.run_dir, threads=self.triage_env.threads,
                        pythonpath=self.triage_env.pythonpath)
        if "orthanc" in self.urls and not ExportSettings.from_env().configured:  # the local PACS, for export
            env["PACS_STOW_URL"] = f"{self.urls['orthanc']}/dicom-web"
        return {**env, **cfg.extra_env}

    def start(self) -> None:
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.api_token = issue_local_token(cfg.run_dir)  # `triage tokens add NAME` adds more to the same table
        if cfg.model_uri:  # a typo in a path should not cost a start of S3 and MLflow first
            checked_uri(cfg.model_uri, "--model / MODEL_URI")
        if cfg.challenger_uri:
            checked_uri(cfg.challenger_uri, "--challenger")
        ports = cfg.ports
        check_ports_free([
            ProcessSpec("s3", [], port=ports.s3, port_env=PORT_ENV["s3"]),
            ProcessSpec("relay", [], port=ports.s3_notify, port_env=PORT_ENV["s3_notify"]),
            ProcessSpec("broker", [], port=ports.broker, port_env=PORT_ENV["broker"]),
            ProcessSpec("gateway", [], port=ports.gateway, port_env=PORT_ENV["gateway"]),
            *([ProcessSpec("mlflow", [], port=ports.mlflow, port_env=PORT_ENV["mlflow"])] if cfg.mlflow else []),
            *([ProcessSpec("prometheus", [], port=ports.prometheus, port_env=PORT_ENV["prometheus"])]
              if cfg.prometheus else []),
            *[ProcessSpec(name, [], port=ports.function_port(name), port_env=PORT_ENV["function_base"])
              for name in (*cfg.functions, *self._slot_names())],
            *([ProcessSpec("dicom-receiver", [], port=cfg.dicom_port, port_env="DICOM_PORT")]
              if cfg.dicom_port else []),
        ])
        self._say(f"run dir {cfg.run_dir} (logs in {cfg.run_dir / 'logs'})")
        self._start_s3()
        if cfg.dicom_port:
            self._start_dicom_receiver(cfg.dicom_port)
        if cfg.mlflow:
            self.supervisor.start(mlflow_spec(cfg.run_dir, ports.mlflow, self.urls["s3"],
                                              ready_timeout_s=max(cfg.ready_timeout_s, 120)))
        self.model_uri, self.challenger_uri = resolve_models(
            model_uri=cfg.model_uri, challenger_uri=cfg.challenger_uri,
            mlflow_client=self.mlflow_client if cfg.mlflow else None,
            train=lambda: train_first_model(cfg.run_dir, self.env(), data=cfg.train_data, echo=self.echo),
            force_train=cfg.force_train, train_data=cfg.train_data, say=self._say)
        self._start_broker()
        if cfg.orthanc:
            self._start_orthanc()
        self._start_functions()
        self._start_gateway()
        if cfg.prometheus:
            self._start_prometheus()

    # -- pieces ------------------------------------------------------------------------------------------------
    def _py(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _start_s3(self) -> None:
        """S3 (writes on disk before answering), then the relay that delivers its outbox to minio-source."""
        ports = self.config.ports
        data_dir = self.config.run_dir / "s3"
        self.supervisor.start(ProcessSpec(
            "s3", self._py("triage.stack.s3server", "--port", str(ports.s3), "--data-dir", str(data_dir)),
            env=self.env(), port=ports.s3, port_env=PORT_ENV["s3"],
            health_url=f"{self.urls['s3']}{S3_HEALTH_PATH}", ready_timeout_s=60, cwd=PROJECT_ROOT))
        minio_source = self._function_url("minio_source") if "minio_source" in self.config.functions else \
            "http://127.0.0.1:9/"  # no adapter: the relay keeps the notifications until one is there
        self.supervisor.start(ProcessSpec(
            "relay", self._py("triage.stack.relay", "--port", str(ports.s3_notify), "--outbox",
                              str(outbox_dir(data_dir)), "--webhook-url", minio_source),
            env=self.env(), port=ports.s3_notify, port_env=PORT_ENV["s3_notify"],
            health_url=f"http://127.0.0.1:{ports.s3_notify}/healthz", ready_timeout_s=60, cwd=PROJECT_ROOT))

    def _start_dicom_receiver(self, port: int) -> None:
        """The C-STORE SCP (`shared.pacs.receiver`), ready once its port accepts connections."""
        metrics_port = unused_port_block(1)[0]  # its /metrics, scraped by the stack's Prometheus
        self.supervisor.start(ProcessSpec(
            "dicom-receiver", self._py("shared.pacs.receiver", "--host", "127.0.0.1", "--port", str(port),
                                       "--metrics-port", str(metrics_port)),
            env=self.env(), port=port, port_env="DICOM_PORT", cwd=PROJECT_ROOT), wait=False)
        deadline = time.monotonic() + 60
        while not self._accepts(port):
            if time.monotonic() > deadline or "dicom-receiver" in self.supervisor.check_alive():
                raise ChildFailed(f"the DICOM receiver did not listen on {port}; see "
                                  f"{self.config.run_dir / 'logs' / 'dicom-receiver.log'}")
            time.sleep(0.1)
        self.urls["dicom"] = f"dicom://{self.settings.dicom_ae_title}@127.0.0.1:{port}"
        self.urls["dicom-metrics"] = f"http://127.0.0.1:{metrics_port}/metrics"

    @staticmethod
    def _accepts(port: int) -> bool:
        with socket.socket() as probe:
            probe.settimeout(1)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def _subscriber_url(self, target: str) -> str:
        """A model function's events go through the gateway, so its revisions split them as Knative's do."""
        return self.urls["gateway"] + f"/{target}" if target in MODEL_FUNCTIONS else self._function_url(target)

    def broker_config(self) -> dict[str, Any]:
        cfg = self.config
        return broker_config(cfg.functions, self._subscriber_url, delivery=cfg.delivery,
                             ticks={"monitor": cfg.monitor_tick_s, "canary": cfg.canary_tick_s},
                             extra_triggers=cfg.extra_triggers)

    def _start_broker(self) -> None:
        cfg = self.config
        config_path = cfg.run_dir / "broker.json"
        config_path.write_text(json.dumps(self.broker_config(), indent=2))
        port = cfg.ports.broker
        self.supervisor.start(ProcessSpec(
            "broker", self._py("triage.stack.broker", "--port", str(port), "--config", str(config_path),
                               "--state-dir", str(cfg.run_dir / "broker")),
            env=self.env(), port=port, port_env=PORT_ENV["broker"], health_url=f"http://127.0.0.1:{port}/healthz",
            cwd=PROJECT_ROOT))

    def _slot_names(self) -> list[str]:
        """Ports the gateway's revisions may take, as process names (`predict-slot0`, ...)."""
        return [f"{name}-slot{i}" for name in MODEL_FUNCTIONS if name in self.config.functions
                for i in range(REVISION_SLOTS)]

    def _function_url(self, process_name: str) -> str:
        return f"http://127.0.0.1:{self.config.ports.function_port(process_name)}"

    @staticmethod
    def function_argv(target: str, port: int | str) -> list[str]:
        """functions-framework's app under its gunicorn, with waits on slow clients bounded (`function_server`)."""
        return [sys.executable, "-m", "triage.stack.function_server", "--target", target,
                "--source", str(PROJECT_ROOT / "functions" / target / "main.py"), "--host", "127.0.0.1",
                "--port", str(port)]

    def function_spec(self, process_name: str) -> ProcessSpec:
        """How to run one function process of the champion revision (the gateway starts the other revisions)."""
        port = self.config.ports.function_port(process_name)
        return ProcessSpec(process_name, self.function_argv(process_name, port),
                           env={**self.env(), "REVISION": "champion"}, port=port, port_env=PORT_ENV["function_base"],
                           health_url=f"http://127.0.0.1:{port}/healthz", ready_timeout_s=self.config.ready_timeout_s,
                           cwd=PROJECT_ROOT)

    def _start_functions(self) -> None:
        # Start all, then wait: the processes load their models in parallel.
        specs = [self.function_spec(name) for name in self.config.functions]
        for spec in specs:
            self.supervisor.start(spec, wait=False)
            self.function_urls[spec.name] = self._function_url(spec.name)
        for spec in specs:
            seconds = self.supervisor.wait_healthy(spec.name)
            self.started_at[spec.name] = seconds
            self._say(f"  {spec.name} ready in {seconds:.1f} s on {self.function_urls[spec.name]}")

    def _start_gateway(self) -> None:
        cfg = self.config
        routed = [service for service in MODEL_FUNCTIONS if service in cfg.functions]
        routes: dict[str, Any] = {service: {"revisions": {"champion": self.function_urls[service]},
                                            "traffic": {"champion": 100}} for service in routed}
        if "feedback" in cfg.functions:
            routes["feedback"] = {"revisions": {"default": self.function_urls["feedback"]}}
        if "dicomweb" in cfg.functions:  # STOW-RS at /dicomweb/studies (its own host on Knative)
            routes["dicomweb"] = {"revisions": {"default": self.function_urls["dicomweb"]}}
        if "review" in cfg.functions:  # the radiologist's worklist at /review, as on Knative
            routes["review"] = {"revisions": {"default": self.function_urls["review"]}}
        path = cfg.run_dir / "gateway.json"
        path.write_text(json.dumps(routes, indent=2))
        # How the gateway starts further revisions (no secrets here: they reach them through its environment).
        launch = {
            "templates": {service: {"argv": self.function_argv(service, "{port}"), "cwd": str(PROJECT_ROOT),
                                    "ports": [cfg.ports.function_port(f"{service}-slot{i}")
                                              for i in range(REVISION_SLOTS)]}
                          for service in routed},
            "initial": {"challenger": self.challenger_uri} if self.challenger_uri else {},
        }
        launch_path = cfg.run_dir / "gateway-revisions.json"
        launch_path.write_text(json.dumps(launch, indent=2))
        port = cfg.ports.gateway
        self.supervisor.start(ProcessSpec(
            "gateway", self._py("triage.stack.gateway", "--port", str(port), "--routes", str(path),
                                "--launch", str(launch_path), "--run-dir", str(cfg.run_dir)),
            env=self.env(), port=port, port_env=PORT_ENV["gateway"], health_url=f"http://127.0.0.1:{port}/healthz",
            ready_timeout_s=cfg.ready_timeout_s + (60 if self.challenger_uri else 0), cwd=PROJECT_ROOT))

    @property
    def orthanc_ports(self) -> OrthancPorts:
        """Orthanc's ports and the receiver it knows as its modality (DICOM_PORT, AE DICOM_AE_TITLE)."""
        env = self.triage_env
        return self.config.orthanc_ports or OrthancPorts(
            http=env.orthanc_http_port, dicom=env.orthanc_dicom_port,
            receiver=self.config.dicom_port or self.settings.dicom_port,
            receiver_ae=self.settings.dicom_ae_title)

    def _start_orthanc(self) -> None:
        spec = orthanc_spec(self.config.run_dir, self.orthanc_ports)
        if spec is None:
            self._say(ORTHANC_HINT)
            return
        try:
            self.supervisor.start(spec)
            self.urls["orthanc"] = self.orthanc_ports.http_url
        except ChildFailed as exc:  # optional: the stack works without a PACS (export then skips)
            self._say(f"Orthanc did not start; continuing without it: {exc}")

    def _start_prometheus(self) -> None:
        ports = self.config.ports
        targets = {name: url.removeprefix("http://") for name, url in self.function_urls.items()}
        targets.update({name: f"127.0.0.1:{ports.function_port(name)}" for name in self._slot_names()})
        targets.update({"gateway": f"127.0.0.1:{ports.gateway}", "broker": f"127.0.0.1:{ports.broker}"})
        if "dicom-metrics" in self.urls:
            targets["dicom-receiver"] = urlsplit(self.urls["dicom-metrics"]).netloc
        spec = prometheus_spec(self.config.run_dir, ports.prometheus, targets)
        if spec is None:
            self._say(INSTALL_HINT)
            return
        try:
            self.supervisor.start(spec)
            self.urls["prometheus"] = f"http://127.0.0.1:{ports.prometheus}"
        except ChildFailed as exc:  # optional: the stack works without it
            self._say(f"Prometheus did not start; continuing without it: {exc}")

    # -- for demo, bench and tests -------------------------------------------------------------------------------
    def mlflow_client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.urls["mlflow"], registry_uri=self.urls["mlflow"])

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
