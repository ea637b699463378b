"""`triage up`: start the local stack (design §6) and keep it running until Ctrl-C.

The environment is read once (`triage.config.TriageEnv`: RUN_DIR, DATA, MODEL_URI, THREADS, the ports) and
passed down to the `Stack`; options given on the command line win over it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.errors import UserError
from triage.config import TriageEnv
from triage.stack.ports import ALL_FUNCTIONS, StackPorts
from triage.stack.processes import ChildFailed
from triage.stack.stack import Stack, StackConfig

__all__ = ["add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model to serve: a model dir, s3://..., or models:/xray-vit@champion "
                        "(default: $MODEL_URI, else the registry's champion, else a phantom model trained first)")
    parser.add_argument("--challenger", help="a second model served as revision 'challenger' (0 %% traffic)")
    parser.add_argument("--run-dir", type=Path,
                        help="state, logs and the MLflow store (default $RUN_DIR, else .triage)")
    parser.add_argument("--data", type=Path,
                        help="train the first model on this .npz instead of phantoms (default $DATA)")
    parser.add_argument("--functions", default=",".join(ALL_FUNCTIONS), help="comma-separated functions to start")
    parser.add_argument("--no-mlflow", action="store_true", help="do not start MLflow (needs --model)")
    parser.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    parser.add_argument("--json", action="store_true", help="print the URLs as one JSON line once ready")


def config_from_args(args: argparse.Namespace, env: TriageEnv) -> StackConfig:
    return StackConfig(
        run_dir=args.run_dir or env.run_dir,
        model_uri=args.model or env.model_uri,
        challenger_uri=args.challenger,
        functions=tuple(name.strip() for name in args.functions.split(",") if name.strip()),
        ports=StackPorts.from_env(env),
        mlflow=not args.no_mlflow,
        prometheus=not args.no_prometheus,
        orthanc=True,  # the local PACS, when installed (triage.stack.orthanc)
        train_data=args.data or env.data,
        dicom_port=env.dicom_port,
    )


def run(args: argparse.Namespace) -> int:
    env = TriageEnv.from_env()
    stack = Stack(config_from_args(args, env), env=env)
    stack.supervisor.install_signal_handlers()
    try:
        with stack:
            urls = {**stack.urls, "review": stack.urls["gateway"] + "/review", "functions": stack.function_urls}
            token_file = stack.config.run_dir / "reviewer-token"
            token_file.write_text(stack.reviewer_token + "\n")
            token_file.chmod(0o600)
            api_token_file = stack.config.run_dir / "api-token"
            api_token_file.write_text(f"{stack.api_token}\n")
            api_token_file.chmod(0o600)
            print("\nxray-triage local stack is up:")
            for name, url in urls.items():
                if name != "functions":
                    print(f"  {name:<10} {url}")
            print(f"  model      {stack.model_uri}")
            print(f"  worklist   {urls['gateway']}/review   STOW-RS  {urls['gateway']}/dicomweb/studies")
            print(f"  reviewer token for /review and /feedback: in {token_file}")
            print(f"  API token for /predict, /explain, /dicomweb (Authorization: Bearer ...): in {api_token_file}; "
                  "more with `triage tokens add NAME`")
            admin_token_file = stack.config.run_dir / "gateway-admin-token"
            print(f"  gateway admin token for /admin/* and triage canary: in {admin_token_file}")
            print("Ctrl-C stops everything.", flush=True)
            if args.json:
                print(json.dumps(urls), flush=True)
            stack.wait()
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    except ChildFailed as exc:
        raise UserError(str(exc)) from exc
    return 0
