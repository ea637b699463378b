"""Knative Services as a canary traffic backend: revisions found and split by patching `spec.traffic`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from shared.canary.errors import CanaryError
from shared.config import CANARY_SERVICES
from shared.kubernetes import KubernetesAPI, KubernetesError

__all__ = ["KnativeTraffic"]

log = logging.getLogger("triage.canary")
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class KnativeTraffic:
    """Splits traffic of the Knative Services between the champion and challenger revisions.

    The challenger is the latest ready revision; the champion the revision tagged `champion` in the Service's
    traffic, else (never pinned) the newest older revision. A service whose latest revision is its champion has
    nothing to canary and is left out. Each step is one JSON merge patch of `spec.traffic`.
    """

    def __init__(self, api: KubernetesAPI, namespace: str, services: Iterable[str] = CANARY_SERVICES, *,
                 model_uri: str | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.services = tuple(services)
        self.model_uri = model_uri  # e.g. "models:/xray-vit/{version}": `prepare` makes a revision serving it

    def prepare(self, version: str) -> None:
        """A new revision of each Service serving model `version`, at 0 %: the serving one is pinned as champion.

        The template's containers are a list, which a merge patch replaces whole: the current list is sent back
        with only MODEL_URI changed.
        """
        if not self.model_uri:
            return
        uri = self.model_uri.format(version=version)
        for service in self.services:
            svc = self._request("GET", self._path(service))
            traffic = (svc.get("spec") or {}).get("traffic") or []
            champion = next((t.get("revisionName") for t in traffic if t.get("tag") == "champion"), None)
            champion = champion or (svc.get("status") or {}).get("latestReadyRevisionName")
            containers = [dict(c) for c in svc["spec"]["template"]["spec"]["containers"]]
            env = [e for e in containers[0].get("env", []) if e.get("name") != "MODEL_URI"]
            containers[0]["env"] = [*env, {"name": "MODEL_URI", "value": uri}]
            patch: dict[str, Any] = {"spec": {"template": {"spec": {"containers": containers}}}}
            if champion:
                patch["spec"]["traffic"] = [{"revisionName": champion, "percent": 100, "tag": "champion"}]
            self._patch(service, patch)
            log.info("canary version=%s new revision of %s requested (champion %s)", version, service, champion)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return self.api.request(method, path, **kwargs)
        except KubernetesError as exc:  # the canary's backend failed: 502, retried on the next tick
            raise CanaryError(exc.message) from exc

    def _patch(self, service: str, patch: Mapping[str, Any]) -> None:
        self._request("PATCH", self._path(service), content=json.dumps(patch), headers=MERGE_PATCH)

    def _path(self, service: str = "") -> str:
        base = f"/apis/serving.knative.dev/v1/namespaces/{self.namespace}"
        return f"{base}/services/{service}" if service else f"{base}/revisions"

    def _older_revision(self, service: str, newest: str) -> str | None:
        selector = {"labelSelector": f"serving.knative.dev/service={service}"}
        generations = []
        for item in self._request("GET", self._path(), params=selector).get("items", []):
            labels = item["metadata"].get("labels", {})
            generation = int(labels.get("serving.knative.dev/configurationGeneration", 0))
            generations.append((generation, item["metadata"]["name"]))
        newest_generation = next((g for g, n in generations if n == newest), None)
        older = sorted((g, n) for g, n in generations if newest_generation is None or g < newest_generation)
        return older[-1][1] if older else None

    def revisions(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for service in self.services:
            svc = self._request("GET", self._path(service))
            challenger = (svc.get("status") or {}).get("latestReadyRevisionName")
            traffic = (svc.get("spec") or {}).get("traffic") or []
            champion = next((t.get("revisionName") for t in traffic if t.get("tag") == "champion"), None)
            if challenger and champion is None:  # never pinned: the revision before the latest one served
                champion = self._older_revision(service, challenger)
            if champion and challenger and champion != challenger:
                found[service] = {"champion": champion, "challenger": challenger}
        return found

    @staticmethod
    def traffic_block(weight: int, champion: str, challenger: str, *, promote: bool = False) -> list[dict[str, Any]]:
        if promote:  # the challenger is the new champion; pinned, so the next revision starts at 0 %
            return [{"revisionName": challenger, "percent": 100, "tag": "champion"}]
        return [
            {"revisionName": champion, "percent": 100 - weight, "tag": "champion"},
            {"revisionName": challenger, "percent": weight, "tag": "challenger"},
        ]

    def set_weight(self, weight: int, revisions: Mapping[str, Mapping[str, str]], *, promote: bool = False) -> None:
        for service, pair in revisions.items():
            patch = {"spec": {"traffic": self.traffic_block(weight, pair["champion"], pair["challenger"],
                                                           promote=promote)}}
            self._patch(service, patch)
