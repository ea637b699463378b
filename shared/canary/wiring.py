"""The one wiring of the canary: metrics source, traffic backend and controller from `CanarySettings`.

The canary function (`controller_from_settings`) and `triage canary` (`backends`) both build theirs here:
with a gateway URL the local gateway (observed through Prometheus when a URL is given, else its own /metrics);
otherwise the Knative Services through the Kubernetes API, observed through Prometheus (when no URL is given,
through the API server's proxy to the cluster's `prometheus` service). With CANARY_REPLAY (the default) and a
CANARY_MODEL_URI naming `{version}`, each new canary first replays stored uploads (`shared.canary.replay`).
"""

from __future__ import annotations

import logging

from shared import registry
from shared.canary.controller import CanaryController
from shared.canary.gateway import GatewayTraffic
from shared.canary.knative import KnativeTraffic
from shared.canary.observe import GatewayMetricsSource, MetricsSource, PrometheusSource, observer
from shared.canary.replay import Replayer
from shared.canary.traffic import Traffic
from shared.config import CanarySettings, Settings
from shared.kubernetes import KubernetesAPI
from shared.storage import Storage

__all__ = ["backends", "controller_from_settings"]

log = logging.getLogger("triage.canary")


def backends(config: CanarySettings, settings: Settings) -> tuple[MetricsSource, Traffic]:
    """(metrics source, traffic backend) of `config`; `settings` says where the Kubernetes API is."""
    if config.gateway_url:
        traffic: Traffic = GatewayTraffic(config.gateway_url, model_uri=config.model_uri,
                                          admin_token=config.gateway_token)
        if config.prometheus_url:
            return PrometheusSource(config.prometheus_url, flavor="gateway", window=config.window), traffic
        return GatewayMetricsSource(config.gateway_url), traffic  # no Prometheus needed locally
    api = KubernetesAPI.from_settings(settings, server=config.kubernetes_api)
    traffic = KnativeTraffic(api, config.namespace, config.services, model_uri=config.model_uri)
    if config.prometheus_url:
        return PrometheusSource(config.prometheus_url, window=config.window), traffic
    # Through the API server: the cluster's Prometheus is not exposed outside it (e.g. to a deploy runner).
    proxy = f"{api.server}/api/v1/namespaces/{config.namespace}/services/prometheus:9090/proxy"
    return PrometheusSource(proxy, window=config.window, client=api.client), traffic


def controller_from_settings(config: CanarySettings, settings: Settings, storage: Storage) -> CanaryController:
    """The function's controller: its backends, S3 feedback, and MLflow promotion when a registry is set."""
    metrics, traffic = backends(config, settings)
    tracking_uri = settings.mlflow_tracking_uri

    def promote(version: str) -> None:
        previous = registry.promote(version, mlflow_client=registry.client(tracking_uri))
        log.info("canary version=%s promoted in the registry (champion was %s)", version, previous)

    replay = None
    if config.replay and config.model_uri and "{version}" in config.model_uri:
        replay = Replayer(storage, settings, config.model_uri, uploads=config.replay_uploads)
    elif config.replay:
        log.warning("canary: no replay (CANARY_MODEL_URI names no {version} to load the challenger from)")
    return CanaryController(storage, config.policy, observer(metrics, storage, config.services), traffic,
                            promote=promote if tracking_uri else None,
                            champion_version=lambda: registry.champion_version(tracking_uri), replay=replay)
