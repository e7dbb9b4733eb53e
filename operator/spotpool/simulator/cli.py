"""`spotpool simulator`: run the CVM simulator from the command line."""

from __future__ import annotations

import argparse
import logging

from spotpool.simulator.config import Credential, SimulatorConfig
from spotpool.simulator.server import serve


def _credential(value: str) -> Credential:
    """`ID:KEY`, or `ID:KEY:ACCOUNT` for a key pair of another account (UIN). A SecretKey with a
    colon in it needs the account spelt out (the last field is taken as the account only when it
    is all digits)."""
    secret_id, sep, rest = value.partition(":")
    secret_key, account = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and head and tail.isascii() and tail.isdigit():
        secret_key, account = head, tail
    if not sep or not secret_id or not secret_key:
        raise argparse.ArgumentTypeError("expected SECRET_ID:SECRET_KEY[:ACCOUNT]")
    if account is None:
        return Credential(secret_id=secret_id, secret_key=secret_key)
    return Credential(secret_id=secret_id, secret_key=secret_key, account_id=account)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotpool simulator",
        description="Serve a simulated Tencent Cloud CVM API (signed, 2017-03-12) with a spot "
        "market, plus its control API under /_sim/.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind; 0 picks a free one")
    parser.add_argument("--config", help="market YAML (default: the packaged default market)")
    parser.add_argument(
        "--credentials",
        action="append",
        type=_credential,
        metavar="ID:KEY[:ACCOUNT]",
        help="an accepted key pair, optionally of another account (UIN) (repeatable); replaces "
        "the config's credentials",
    )
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = SimulatorConfig.from_yaml(args.config) if args.config else SimulatorConfig.default()
    if args.credentials:
        config = config.with_overrides({"credentials": [c.model_dump() for c in args.credentials]})
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    serve(config, args.host, args.port)
    return 0
