"""dicomweb (STOW-RS) is a public Knative Service that scales to zero and reads the API token table."""

from __future__ import annotations

from shared import topology
from tests.infra.manifests.example import knative_services


def test_dicomweb_is_public_scales_to_zero_and_checks_api_tokens(objects: list[dict]) -> None:
    from tests.infra.kubernetes_schemas import validation_errors

    assert topology.function("dicomweb").public
    service = {s["metadata"]["name"]: s for s in knative_services(objects)}["dicomweb"]
    assert validation_errors(service) == []
    assert "networking.knative.dev/visibility" not in service["metadata"]["labels"]
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    container = template["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert "API_TOKENS_URI" in env and "K_SINK" not in env  # it emits nothing: the upload path starts ingest
    assert container["image"].endswith("/dicomweb:0.3.1")
