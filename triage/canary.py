"""Step traffic to the challenger while it stays within thresholds; promote at 100 % or roll back on a breach.

Drives the local gateway (`--gateway URL`, default http://127.0.0.1:$GATEWAY_PORT) or the Knative Services
(`--knative`, the default when KUBECONFIG or an in-cluster service account is present). Each interval it reads
per-revision requests, 5xx rate and p99 from Prometheus (`--prometheus`, $PROMETHEUS_URL; on Knative by default
the API server's proxy to the `prometheus` service; locally by default the gateway's own /metrics) and, with
`--version`, the radiologists' feedback accuracy from S3.
Exit status: 0 promoted (or nothing to canary), 1 rolled back or timed out, 2 bad input.

The canary function's own canary (started by `triage.model.registered`, with its offline replay first) keeps its
state in S3: `triage canary status [--json]` shows it (phase, weight, the replay's report, approval, decisions);
`triage canary approve|reject [--version V]` records a human's decision in it (CANARY_REQUIRE_APPROVAL=true
makes a canary that passed its last step wait for one), and its next tick promotes or rolls back.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared import registry
from shared.canary import (
    APPROVED,
    AWAITING_APPROVAL,
    HOLD,
    PROMOTED,
    REJECTED,
    ROLLBACK,
    RUNNING,
    CanaryError,
    CanaryState,
    Decision,
    Observer,
    Traffic,
    apply_decision,
    backends,
    load_state,
    log_decision,
    observer,
    review_canary,
    start_canary,
    tick,
)
from shared.config import CANARY_SERVICES, CanaryPolicy, CanarySettings, Settings, parse_steps
from shared.errors import UserError
from triage.config import TriageEnv
from triage.stack.admin_token import read_token

_REVIEWER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")  # as the feedback's reviewer names


def _add_actions(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION",
                                    title="the canary function's canary (without an action: run a canary here)")
    status = actions.add_parser("status", help="its stored state: phase, weight, replay report, approval",
                                description="The canary function's stored canary: phase, weight, the replay's "
                                            "report (counts, sensitivities, agreement, errors, verdict, reasons), "
                                            "approval and the last decisions.")
    status.add_argument("--json", action="store_true", help="print the stored state as JSON")
    status.add_argument("--history", type=int, default=8, metavar="N", help="the last N decisions shown")
    for name, text in (("approve", "approve the promotion of a canary awaiting approval"),
                       ("reject", "reject a running canary: its next tick rolls it back")):
        review = actions.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]} (recorded with who "
                                                                 "and when in its state; the next tick acts on it).")
        review.add_argument("--version", help="refuse unless the canary is of this model version")
        review.add_argument("--by", help="who decides (default: the login name)")
        review.add_argument("--reason", help="a short note kept with the decision")
        review.add_argument("--json", action="store_true", help="print the state after it as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_actions(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--gateway", metavar="URL", help="drive the local stack's gateway at URL")
    mode.add_argument("--knative", action="store_true", help="patch the Knative Services (KUBECONFIG or in-cluster)")
    parser.add_argument("--namespace", help="Knative namespace (default $KNATIVE_NAMESPACE, else xray-triage)")
    parser.add_argument("--services", default=",".join(CANARY_SERVICES), help="Knative services (comma-separated)")
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus to observe (default $PROMETHEUS_URL)")
    parser.add_argument("--window", default=None, help="PromQL range of each observation (default: the interval)")
    parser.add_argument("--steps", default="10,25,50,100", help="percents to the challenger, ending at 100")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between decisions")
    parser.add_argument("--max-duration", type=float, default=3600.0, help="give up (roll back) after this many s")
    defaults = CanaryPolicy()
    parser.add_argument("--max-error-rate", type=float, default=defaults.max_error_rate)
    parser.add_argument("--max-p99", type=float, default=defaults.max_p99_s, help="seconds")
    parser.add_argument("--max-p99-ratio", type=float, default=defaults.max_p99_ratio, help="x the champion's p99")
    parser.add_argument("--min-requests", type=int, default=defaults.min_requests, help="per step, before judging")
    parser.add_argument("--min-feedback", type=int, default=defaults.min_feedback)
    parser.add_argument("--max-accuracy-drop", type=float, default=defaults.max_accuracy_drop)
    parser.add_argument("--version", help="the challenger's model version: feedback check, registry promotion")
    parser.add_argument("--champion-version", help="the champion's model version (for the feedback check)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")


def policy_from_args(args: argparse.Namespace) -> CanaryPolicy:
    if args.interval <= 0 or args.max_duration <= 0:
        raise UserError("--interval / --max-duration: expected positive seconds")
    return CanaryPolicy(
        steps=parse_steps(args.steps),
        max_error_rate=args.max_error_rate,
        max_p99_s=args.max_p99,
        max_p99_ratio=args.max_p99_ratio,
        min_requests=args.min_requests,
        min_feedback=args.min_feedback,
        max_accuracy_drop=args.max_accuracy_drop,
    )


def settings_from_args(args: argparse.Namespace, env: TriageEnv, window: str) -> CanarySettings:
    """The canary's settings from the options, with the environment's defaults; no new revision is started."""
    knative = args.knative or (not args.gateway and env.in_cluster)
    return CanarySettings(
        policy=policy_from_args(args),
        prometheus_url=args.prometheus or env.prometheus_url,
        window=window,
        namespace=args.namespace or env.knative_namespace,
        kubernetes_api=None,
        services=tuple(s for s in args.services.split(",") if s),
        gateway_url=None if knative else args.gateway or env.gateway_url,
        model_uri=None,  # canary the revisions that are deployed (a deploy made the challenger)
        gateway_token=env.gateway_admin_token or read_token(env.run_dir),  # the local stack's, from its run dir
    )


def run_canary(
    state: CanaryState,
    policy: CanaryPolicy,
    observe: Observer,
    traffic: Traffic,
    *,
    interval_s: float,
    max_duration_s: float,
    promote: Callable[[str], Any] | None = None,
    emit: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> tuple[CanaryState, Decision]:
    """Tick every `interval_s` until promote or rollback; past `max_duration_s` the challenger is rolled back."""
    started = time.monotonic()
    decision = Decision(HOLD, state.weight, "not started")
    while True:
        failed = False
        try:
            state, decision = tick(state, policy, observe, traffic, now=clock(), promote=promote)
        except CanaryError as exc:  # a failed scrape or patch is retried at the next interval
            decision, failed = Decision(HOLD, state.weight, exc.message), True
        emit(f"{clock():%H:%M:%S} {decision.outcome:8} {decision.weight:3d} %  {decision.reason}")
        if state.status != RUNNING or (not state.revisions and not failed):  # done, or no challenger to canary
            return state, decision
        if time.monotonic() - started + interval_s > max_duration_s:
            decision = Decision(ROLLBACK, 0, f"not promoted within {max_duration_s:.0f} s")
            try:
                traffic.set_weight(0, state.revisions)
            except CanaryError as exc:  # reported; the canary still ends as not promoted
                decision = Decision(ROLLBACK, 0, f"{decision.reason}; the rollback failed: {exc.message}")
            log_decision(state, decision, state.revisions)
            state = apply_decision(state, policy, decision, clock())
            emit(f"{clock():%H:%M:%S} {decision.outcome:8} {decision.weight:3d} %  {decision.reason}")
            return state, decision
        sleep(interval_s)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def describe(state: CanaryState, history: int = 8) -> list[str]:
    """`triage canary status`'s lines for a stored canary."""
    routed = "" if state.revisions or state.status == RUNNING else " (it never received traffic)"
    step = f", step {state.step + 1}" if state.phase != "replay" else ""
    lines = [f"canary of version {state.version} (champion {state.champion_version or 'unknown'}): "
             f"{state.status}{routed}, phase {state.phase}, {state.weight} % to the challenger{step}",
             f"  started {state.started}, updated {state.updated}"]
    replay = state.replay
    if replay is None:
        lines.append("replay: none yet" if state.phase == "replay" else "replay: none (this canary did not replay)")
    else:
        correct = replay.get("labelled_correct") or {}
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted((replay.get("error_kinds") or {}).items()))
        sensitivity = (f"sensitivity challenger {_percent(replay.get('challenger_sensitivity'))} vs champion "
                       f"{_percent(replay.get('champion_sensitivity'))}")
        lines += [
            f"replay: {replay.get('verdict')} at {replay.get('time')} ({replay.get('seconds', 0):.1f} s)",
            f"  labelled {replay.get('labelled', 0)} (correct: champion {correct.get('champion', 0)}, challenger "
            f"{correct.get('challenger', 0)}); pneumonia {replay.get('positives', 0)}: {sensitivity}",
            f"  unlabelled {replay.get('unlabelled', 0)}: agreement {_percent(replay.get('agreement'))}",
            f"  errors {replay.get('errors', 0)}{f' ({kinds})' if kinds else ''}, skipped {replay.get('skipped', 0)}, "
            f"labels without a stored input {replay.get('labels_without_input', 0)}",
            *(f"  - {reason}" for reason in replay.get("reasons") or ()),
        ]
    approval = state.approval
    if approval:
        note = f" ({approval['reason']})" if approval.get("reason") else ""
        lines.append(f"approval: {approval.get('decision')} by {approval.get('by')} at {approval.get('time')}{note}")
    elif state.status == RUNNING and state.phase == AWAITING_APPROVAL:
        lines.append(f"approval: awaited: triage canary approve --version {state.version} (or reject)")
    lines.append("decisions:")
    lines += [f"  {h.get('time')} {h.get('outcome', ''):14} {h.get('weight', 0):3d} %  {h.get('reason', '')}"
              for h in state.history[-max(1, history):]]
    return lines


def _storage() -> Any:
    from shared.storage import Storage

    return Storage.from_settings(Settings.from_env())


def run_action(args: argparse.Namespace, storage: Any = None) -> int:
    """`status`, `approve` or `reject` on the canary function's stored state."""
    storage = storage if storage is not None else _storage()
    if args.action == "status":
        state = load_state(storage)
        if args.json:
            print(json.dumps(state.to_json() if state else {"status": "none"}, indent=2, sort_keys=True))
        elif state is None:
            print("no canary: none has been started (a registered model version starts one)")
        else:
            print("\n".join(describe(state, args.history)))
        return 0
    by = args.by or getpass.getuser()
    if not _REVIEWER.match(by):
        raise UserError(f"--by: expected a name of letters, digits and . _ @ - (at most 64), got {by!r}")
    reason = (args.reason or "").strip() or None
    if reason is not None and len(reason) > 200:
        raise UserError("--reason: at most 200 characters")
    decision = APPROVED if args.action == "approve" else REJECTED
    state = review_canary(storage, decision, by, version=args.version, reason=reason)
    if args.json:
        print(json.dumps(state.to_json(), sort_keys=True))
    else:
        then = "promotes it" if decision == APPROVED else "rolls it back"
        print(f"canary of version {state.version}: {decision} by {by}; the canary's next tick {then}")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None):
        return run_action(args)
    env = TriageEnv.from_env()
    window = args.window or f"{max(int(args.interval), 60)}s"  # rate() needs several scrapes in its range
    config = settings_from_args(args, env, window)
    policy = config.policy
    settings = Settings.from_env()
    metrics, traffic = backends(config, settings)
    storage = None
    if args.version:
        from shared.storage import Storage

        storage = Storage.from_settings(settings)
    state, _ = start_canary(None, args.version or "latest-revision", args.champion_version, policy, datetime.now(UTC))
    promote = None
    if args.version and env.mlflow_tracking_uri:
        def promote(version: str) -> None:
            registry.promote(version, mlflow_client=registry.client(env.mlflow_tracking_uri))

    print(f"canary of {state.version}: steps {list(policy.steps)} every {args.interval:g} s", file=sys.stderr)
    state, decision = run_canary(state, policy, observer(metrics, storage, config.services), traffic,
                                 interval_s=args.interval, max_duration_s=args.max_duration, promote=promote)
    nothing = state.status == RUNNING and not state.revisions  # no challenger revision: nothing to canary
    result = {"status": "nothing_to_do" if nothing else state.status, "version": state.version,
              "weight": state.weight, "reason": decision.reason,
              "decisions": [h["outcome"] for h in state.history], "revisions": state.revisions}
    if args.json:
        print(json.dumps(result))
    return 0 if nothing or state.status == PROMOTED else 1
