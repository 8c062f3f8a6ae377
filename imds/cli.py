"""
The `imds` command: `serve` runs the metadata service, `config` prints what it would use,
`identity-cert` prints the certificate that verifies the identity document's signatures,
`ctl` drives a running server's rotation lab (imds.ctl; exit 1 when the API refuses),
`env`, `exec` and `pod-token` point an SDK at a running server through the EC2, ECS or EKS
Pod Identity flow (imds.envcmd; exit 1 when no server serves it), `node-setup` and
`node-cleanup` make the link-local addresses reach imds on a Kubernetes node (imds.node;
exit 1 when refused, with the node left as it was).

Exit codes: 0 success, 2 bad usage or configuration, 3 the server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from imds import config as cfg
from imds.errors import ConfigError, StartupError

EXIT_USAGE = 2
EXIT_STARTUP = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imds",
        description="A local EC2 instance metadata service (IMDSv2) with rotating credentials.",
        # Abbreviations would let `--tag` silently mean `--tags`; only full names count.
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    # One heading per part (imds.config.options.GROUPS), each flag with its default.
    groups = {title: common.add_argument_group(title) for title in cfg.GROUPS}
    groups[cfg.GROUPS[0]].add_argument(
        "--config", dest="config_file", metavar="FILE",
        help="TOML file of settings (default: none; env IMDS_CONFIG)")
    for option in cfg.OPTIONS:
        extra: dict[str, Any] = {}
        if option.repeated:
            extra["action"] = "append"
        elif option.is_flag:
            # `--extended-credentials` alone means true; `--extended-credentials false` works.
            extra.update(nargs="?", const="true")
        # Shown, not enforced: the option's own parser checks (and takes `INFO` too).
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else option.metavar
        text = f"{option.help} (default: {option.default}; env {option.env})"
        groups[option.group].add_argument(
            option.flag, dest=option.key, metavar=metavar,
            # argparse expands %-formats in help text.
            help=text.replace("%", "%%"), **extra)

    sub.add_parser("serve", parents=[common], allow_abbrev=False,
                   help="run the metadata service")
    sub.add_parser("config", parents=[common], allow_abbrev=False,
                   help="print the effective configuration")
    sub.add_parser("identity-cert", parents=[common], allow_abbrev=False,
                   help="print the PEM certificate that verifies the instance identity "
                        "signatures (created in the state dir if missing)")
    from imds import ctl, envcmd
    from imds.node import options as node_options

    ctl.add_parser(sub)
    envcmd.add_parsers(sub)
    node_options.add_parsers(sub)
    return parser


def load_config(args: argparse.Namespace, environ: Mapping[str, str]) -> cfg.Config:
    values = {key: getattr(args, key, None) for key in cfg.option_names()}
    return cfg.load(values, environ, args.config_file)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "ctl":
        # A client of a running server: none of the server's settings apply.
        from imds import ctl

        return ctl.main(args, env)
    if args.command in ("env", "exec", "pod-token"):
        # Clients too, of a running server or of the state directory's signing key.
        from imds import envcmd

        return envcmd.main(args, env)
    if args.command in ("node-setup", "node-cleanup"):
        # Privileged, once per node, before and after the server: none of its settings apply.
        from imds.node import command

        return command.main(args, env)
    try:
        config = load_config(args, env)
    except ConfigError as exc:
        print(f"imds: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.command == "config":
        for key, value in cfg.describe(config):
            print(f"{key} = {value}")
        return 0

    if args.command == "identity-cert":
        from imds.instance.identity import load_or_create

        try:
            signer = load_or_create(config.state_dir)
        except ConfigError as exc:  # an unsafe state directory (imds.instance.statedir)
            print(f"imds: configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except StartupError as exc:
            print(f"imds: {exc}", file=sys.stderr)
            return EXIT_STARTUP
        sys.stdout.write(signer.certificate_pem.decode("ascii"))
        return 0

    from imds import logs
    from imds.server import serve

    logs.configure(config.log_level, config.log_format)
    try:
        _run(serve(config))
    # Found at startup: an unsafe state directory (imds.instance.statedir).
    except ConfigError as exc:
        print(f"imds: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:
        print(f"imds: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop when it is installed (`pip install imds[fast]`), else asyncio."""
    run: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    # Outside the `except`: whatever is raised while serving would otherwise be reported
    # as raised "during handling of" the missing uvloop.
    run(coro)
