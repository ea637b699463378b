"""`triage`: the project's command line. Each subcommand lives in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). The module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("training_jobs.phantom", "write a SYNTHETIC chest-phantom data set (.npz) for tests and demos"),
    "prepare": ("training_jobs.prepare", "upload raw data to raw-data/, write normalized splits to processed/"),
    "train": ("training_jobs.train", "train the ViT, export ONNX + int8 + model card, log to MLflow"),
    "export": ("training_jobs.export", "export a checkpoint to ONNX (parity-checked) + int8 + model card"),
    "evaluate": ("training_jobs.evaluate", "evaluate an ONNX model on a data split: metrics and plots"),
    "study": ("training_jobs.study", "rank training recipes: k-fold CV over train + val and a stress set"),
    "promote": ("training_jobs.registry", "move the registry alias 'champion' to a model version"),
    "up": ("triage.stack.up", "start the local stack: S3, MLflow, functions, broker, gateway"),
    "demo": ("triage.stack.demo", "train or load a model, start the stack, triage a few uploads"),
    "canary": ("triage.canary", "step traffic to the challenger while it stays within thresholds"),
    "loadtest": ("load_tests.loadtest", "Locust at fixed arrival rates against any URL: CSV, JSON, latency-vs-rate"),
    "send-live": ("triage.send_live", "upload images into inference-inputs at a fixed rate, as a hospital would"),
    "scale-report": ("triage.scale", "measure predict's saturation; derive Knative scaling; cost vs daily volume"),
    "bench": ("triage.bench", "measure latency, cold start and upload-to-result; write a report"),
    "manifests": ("triage.manifests", "write the Kubernetes / Knative manifests as plain YAML"),
    "tokens": ("triage.tokens", "add, rotate, revoke or list the API tokens of predict and explain"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triage", description="xray-triage: serverless chest X-ray triage.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # exits: help on -h, the argparse error on an unknown command or option
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            print(f"triage {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    sub = argparse.ArgumentParser(prog=f"triage {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    from shared.errors import UserError

    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"triage {name}: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"triage {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
