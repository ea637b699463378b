"""The serving side's registry aliases: read and move `champion` in a real MLflow store, without torch."""

from __future__ import annotations

import json

PROMOTE_SCRIPT = """
import json, sys
from mlflow.tracking import MlflowClient
uri, source = sys.argv[1], sys.argv[2]
mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
mc.create_registered_model("xray-vit")
for _ in range(2):
    mc.create_model_version("xray-vit", source=source)
mc.set_registered_model_alias("xray-vit", "champion", "1")
import shared.canary
from shared import registry
before = registry.champion_version(uri)
previous = registry.promote("2", mlflow_client=registry.client(uri))
after = str(mc.get_model_version_by_alias("xray-vit", "champion").version)
training = any(name.startswith("training_jobs") for name in sys.modules)
print(json.dumps({"before": before, "previous": previous, "after": after, "torch": "torch" in sys.modules,
                  "training_jobs": training}))
"""


def test_promotion_moves_the_mlflow_champion_alias_without_importing_torch_or_training_code(tmp_path):
    import subprocess
    import sys

    from shared.config import PROJECT_ROOT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "model").mkdir()
    done = subprocess.run([sys.executable, "-c", PROMOTE_SCRIPT, uri, str(tmp_path / "model")], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "before": "1", "previous": "1", "after": "2", "torch": False, "training_jobs": False}
