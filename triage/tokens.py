"""`triage tokens add NAME | rotate NAME | revoke NAME | list`: the API tokens callers of predict and explain present.

The table holds names and SHA-256 hashes only; `add` and `rotate` print the new token ONCE (store it in the
client system now: it cannot be shown again). Changes reach the running functions within API_TOKENS_REFRESH_S
(10 s by default) without a restart. The table is `--store`, else $API_TOKENS_URI (production:
`s3://triage-state/auth/api-tokens.json`, with the S3 variables of the functions), else the local stack's
`$RUN_DIR/api-tokens.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.api_tokens import API_FUNCTIONS, TokenTable
from shared.config import Settings
from shared.storage import Storage
from shared.timestamps import utc_iso
from shared.token_store import TokenStore, token_store
from triage.config import TriageEnv

__all__ = ["LOCAL_CLIENT", "LOCAL_TABLE", "add_arguments", "issue_local_token", "local_table", "run", "store_for"]

LOCAL_TABLE = "api-tokens.json"  # the local stack's table, in its run dir
LOCAL_CLIENT = "local-stack"  # the client name of the token the local stack issues itself at start


def local_table(run_dir: Path) -> Path:
    """The token table file of the local stack that runs in `run_dir`."""
    return Path(run_dir) / LOCAL_TABLE


def issue_local_token(run_dir: Path, name: str = LOCAL_CLIENT) -> str:
    """A fresh token for the local stack's own client (demo, bench, tests), replacing the one of its last start;
    not limited in practice (1000 requests per second). Other entries of the table are kept."""
    store = token_store(str(local_table(run_dir)), lambda: Storage.from_settings(Settings.from_env()))
    return store.update(lambda table: table.without(name).add(name, now=utc_iso(), rate_per_s=1000.0,
                                                              burst=1000)[::-1])


def store_for(uri: str | None, env: TriageEnv) -> TokenStore:
    """The store of `uri`, else $API_TOKENS_URI, else the local stack's table."""
    chosen = uri or env.api_tokens_uri or str(local_table(env.run_dir))
    return token_store(chosen, lambda: Storage.from_settings(Settings.from_env()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="the token table: s3://bucket/key or a file (default: $API_TOKENS_URI, "
                        "else the local stack's $RUN_DIR/api-tokens.json)")
    common.add_argument("--json", action="store_true", help="print one JSON line last")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[common], help="issue a token for a client system and print it once")
    add.add_argument("name", help="the client system, e.g. pacs-bridge or ward-3-viewer")
    add.add_argument("--functions", default=",".join(API_FUNCTIONS),
                     help=f"what it may call, comma-separated (default {','.join(API_FUNCTIONS)})")
    add.add_argument("--rate", type=float, help="requests per second (default: the service's API_RATE_PER_S)")
    add.add_argument("--burst", type=int, help="requests at once (default: the service's API_RATE_BURST)")
    rotate = actions.add_parser("rotate", parents=[common], help="revoke a client's token and print its new one once")
    rotate.add_argument("name")
    revoke = actions.add_parser("revoke", parents=[common],
                                help="revoke a client's token (its calls are then answered 403)")
    revoke.add_argument("name")
    actions.add_parser("list", parents=[common], help="every token's name, state and functions (never a token or hash)")


def _listing(table: TokenTable) -> list[dict]:
    return [{"name": e.name, "state": "active" if e.active else "revoked", "functions": list(e.functions),
             "created_at": e.created_at, "revoked_at": e.revoked_at, "rate_per_s": e.rate_per_s, "burst": e.burst}
            for e in table.entries]


def run(args: argparse.Namespace) -> int:
    store = store_for(args.store, TriageEnv.from_env())
    now = utc_iso()
    result: dict
    # A table change returns (table, token); a store's update wants (result, table): hence the [::-1].
    if args.action == "add":
        functions = [f.strip() for f in args.functions.split(",") if f.strip()]
        token = store.update(lambda table: table.add(args.name, now=now, functions=functions, rate_per_s=args.rate,
                                                     burst=args.burst)[::-1])
        result = {"name": args.name, "token": token, "store": store.uri}
    elif args.action == "rotate":
        token = store.update(lambda table: table.rotate(args.name, now=now)[::-1])
        result = {"name": args.name, "token": token, "store": store.uri}
    elif args.action == "revoke":
        store.update(lambda table: (None, table.revoke(args.name, now=now)))
        result = {"name": args.name, "revoked_at": now, "store": store.uri}
    else:
        result = {"tokens": _listing(TokenTable.parse(store.read())), "store": store.uri}
    if "token" in result:
        print(f"API token for {args.name} (shown once; present it as 'Authorization: Bearer <token>'):")
        print(result["token"])
    elif args.action == "revoke":
        print(f"revoked the API token of {args.name} in {store.uri}")
    else:
        for item in result["tokens"]:
            print(f"{item['name']:<24} {item['state']:<8} {','.join(item['functions']):<16} {item['created_at']}")
        if not result["tokens"]:
            print(f"no API tokens in {store.uri}")
    if args.json:
        print(json.dumps(result))
    return 0
