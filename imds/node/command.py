"""
Run `imds node-setup` or `imds node-cleanup`: one line per change on stdout, the reason on
stderr when refused.

Exit codes: 0 done (also when nothing needed doing), 1 refused or failed with the node
left as it was (NodeError), 2 bad usage (argparse, or a flag's value: ConfigError).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from imds.errors import ConfigError, NodeError
from imds.node import dnat, link
from imds.node.options import from_args

EXIT_FAILED = 1
EXIT_USAGE = 2


def main(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        options = from_args(args)
    except ConfigError as exc:
        print(f"imds {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        setup = args.command == "node-setup"
        if options.mode == "dummy":
            done = link.setup(options) if setup else link.cleanup(options)
        else:
            done = dnat.setup(options, environ) if setup else dnat.cleanup(options, environ)
    except NodeError as exc:
        print(f"imds {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in done or ["nothing to do: the node is already as asked"]:
        print(f"imds {args.command}: {line}")
    return 0
