"""
The `imds` command: `serve` runs the metadata service, `config` prints what it would use.

Exit codes: 0 success, 2 bad usage or configuration, 3 the server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence

from imds import config as cfg
from imds.errors import ConfigError, StartupError

EXIT_USAGE = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imds",
        description="A local EC2 instance metadata service (IMDSv2) with rotating credentials.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", dest="config_file", metavar="FILE",
                        help="TOML file of settings (env IMDS_CONFIG)")
    for option in cfg.OPTIONS:
        common.add_argument(option.flag, dest=option.key, metavar=option.metavar,
                            help=f"{option.help} (env {option.env})")

    sub.add_parser("serve", parents=[common], help="run the metadata service")
    sub.add_parser("config", parents=[common], help="print the effective configuration")
    return parser


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> cfg.Config:
    values = {key: getattr(args, key, None) for key in cfg.option_names()}
    return cfg.load(values, environ, args.config_file)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        config = load_config(args, env)
    except ConfigError as exc:
        print(f"imds: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "config":
        for key, value in cfg.describe(config):
            print(f"{key} = {value}")
        return 0

    from imds import logs
    from imds.server import serve

    logs.configure(config.log_level, config.log_format)
    try:
        _run(serve(config))
    except StartupError as exc:
        print(f"imds: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]
