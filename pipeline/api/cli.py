"""Command line of the HTTP service: ``cdrpipe serve`` and ``cdrpipe apikey``.

`pipeline.cli` registers both through `add_serve_parser` and `add_keys_parser`; the same
parsers run standalone as ``python -m pipeline.api serve|apikey ...``.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_keys_parser", "add_serve_parser", "cmd_apikey", "cmd_serve", "main"]

_KEYS_HELP = "API keys file (default: $CDRPIPE_API_KEYS, else <data dir>/api-keys.json)"


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` (the API and the Call Logs page) on an argparse subparsers object."""
    p = subparsers.add_parser(
        "serve",
        help="HTTP API and Call Logs web page",
        description="Serve the CDR API (/api/v1, schema at /openapi.json) and the Call Logs"
        " page (/call-logs). With the embedded store this process owns the data directory:"
        " stop other cdrpipe processes using it first.",
    )
    p.add_argument(
        "--store",
        default=None,
        help="ClickHouse DSN (default: $CDRPIPE_STORE, else the embedded chDB store in ./data)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--keys", type=Path, default=None, help=_KEYS_HELP)
    p.add_argument(
        "--max-days",
        type=int,
        default=62,
        help="longest from..to range a request may ask for (default 62)",
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=cmd_serve)
    return p


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``apikey create|list|revoke`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "apikey",
        help="create, list or revoke API keys",
        description="Manage the API keys of `cdrpipe serve`. Only hashes are stored: a new"
        " key is printed once. A running service picks changes up without a restart.",
    )
    p.add_argument("--keys", type=Path, default=None, help=_KEYS_HELP)
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print it (once)")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--account", help="the one account this key may read")
    who.add_argument("--admin", action="store_true", help="a key that may read every account")
    create.add_argument("--label", default="", help="a note, e.g. who holds the key")
    create.add_argument("--keys", type=Path, default=argparse.SUPPRESS, help=_KEYS_HELP)
    lst = actions.add_parser("list", help="list keys (ids, accounts, labels; never the keys)")
    lst.add_argument("--keys", type=Path, default=argparse.SUPPRESS, help=_KEYS_HELP)
    revoke = actions.add_parser("revoke", help="delete a key by its id")
    revoke.add_argument("id", help="key id as shown by `apikey list` (k_...)")
    revoke.add_argument("--keys", type=Path, default=argparse.SUPPRESS, help=_KEYS_HELP)
    p.set_defaults(func=cmd_apikey)
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.api.app import create_app
    from pipeline.api.auth import KeysFileError, KeyStore, default_keys_path
    from pipeline.store.client import StoreError, connect, default_dsn, redact_dsn

    keys_path = args.keys or default_keys_path()
    try:
        keys = KeyStore(keys_path)
    except KeysFileError as exc:
        print(f"cdrpipe serve: {exc}", file=sys.stderr)
        return 2
    if not len(keys):
        print(
            f"cdrpipe serve: no API keys in {keys_path}; every API request will get 401."
            " Create one with: cdrpipe apikey create --admin",
            file=sys.stderr,
        )
    if not _is_loopback(args.host):
        print(
            f"cdrpipe serve: listening on {args.host}, not only this machine; put TLS in front",
            file=sys.stderr,
        )
    dsn = args.store or default_dsn()
    try:  # open here, in the serving process, so a locked directory fails fast and clearly
        # Read-only: the API never writes, so a flaw in it cannot alter CDRs, whatever rights
        # the store's user has (a server gets readonly=2; chDB is opened with mode=ro).
        client = connect(dsn, readonly=True)
    except StoreError as exc:
        hint = ""
        if "another process" not in str(exc) and dsn.startswith(("chdb:", "/", ".")):
            hint = (
                " (if another cdrpipe process, e.g. a sink or a replay, has this embedded"
                " store open, stop it or serve from a ClickHouse server DSN)"
            )
        print(f"cdrpipe serve: {exc}{hint}", file=sys.stderr)
        return 2
    try:
        app = create_app(client, keys, max_days=args.max_days)
        print(
            f"cdrpipe serve: store {redact_dsn(dsn)}; Call Logs at"
            f" http://{args.host}:{args.port}/call-logs",
            file=sys.stderr,
        )
        from pipeline.api.server import uvicorn_options

        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            proxy_headers=False,
            server_header=False,
            **uvicorn_options(log_level=args.log_level),  # timeouts, connection cap, access log
        )
    finally:
        client.close()
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    from pipeline.api.auth import (
        KeysFileError,
        create_key,
        default_keys_path,
        list_keys,
        revoke_key,
    )

    path = args.keys or default_keys_path()
    try:
        if args.action == "create":
            key, entry = create_key(
                path,
                account=None if args.admin else args.account,
                admin=args.admin,
                label=args.label,
            )
            scope = "admin" if entry.admin else f"account {entry.account}"
            print(key)
            print(
                f"created {entry.id} ({scope}) in {path}; the key is shown only now",
                file=sys.stderr,
            )
        elif args.action == "list":
            for entry in list_keys(path):
                scope = "admin" if entry.admin else f"account={entry.account}"
                print(f"{entry.id}\t{scope}\t{entry.created}\t{entry.label}")
        else:
            if not revoke_key(path, args.id):
                print(f"cdrpipe apikey: no key {args.id!r} in {path}", file=sys.stderr)
                return 1
            print(f"revoked {args.id}", file=sys.stderr)
    except (KeysFileError, ValueError) as exc:
        print(f"cdrpipe apikey: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.api")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_keys_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
