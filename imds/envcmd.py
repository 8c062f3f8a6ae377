"""
`imds env`, `imds exec` and `imds pod-token`: point an SDK at a running server through one
of the three credential flows (imds.flows), as aws-vault's `exec` does for its profiles.

The server is found as `imds ctl` finds it (imds.ctl.choose): the one running on the state
directory, or the one `--server PID|ROLE|URL` names; several and none chosen is exit 2.
Its first metadata URL serves every flow, since imds answers the container paths on the
same listeners. Only the `export` lines go to stdout, so `eval "$(imds env ecs)"` works;
everything said to the user goes to stderr.

Exit codes: 0 success (`exec`: the command's own), 1 no server or none that serves the flow,
2 bad usage; `exec` 126/127 when the command cannot be run, as a shell says.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imds import flows, podtoken
from imds.containers.build import TOKEN_FILE as CONTAINER_TOKEN_FILE
from imds.ctl import choose, state_dir_of, write_out
from imds.errors import ConfigError, FlowError, ServerChoiceError, StartupError
from imds.lab.registry import Server

COMMANDS = ("env", "exec", "pod-token")
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127


Warn = Callable[[str], None]
# A task id as `--ecs-task` takes it (imds.config.containers): safe in a URL path.
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def add_parsers(sub: Any) -> None:
    """The `env`, `exec` and `pod-token` subcommands, on the `imds` parser."""
    env = sub.add_parser(
        "env", allow_abbrev=False,
        help="print the export lines that point an SDK at the running server "
             "(eval \"$(imds env ecs)\")",
        description="Print `export NAME=VALUE` lines (for a POSIX shell) that point an AWS "
                    "SDK at the server running on the state directory, through one of the "
                    "three credential flows. Variables of the other flows already set in "
                    "the shell are left alone (a warning names them): `imds exec` clears "
                    "them.")
    env.add_argument("flow_arg", nargs="?", choices=flows.FLOWS, metavar="FLOW",
                     help=f"{'|'.join(flows.FLOWS)}, as --flow (default: imds)")
    _flow_options(env)

    run = sub.add_parser(
        "exec", allow_abbrev=False,
        help="run a command with the variables of `imds env` set",
        description="Run CMD with the variables `imds env` prints set, in place of imds "
                    "(its exit code is the command's). Every other flow's variables "
                    f"({', '.join(flows.FLOW_VARIABLES)}; for --flow imds also "
                    f"{flows.METADATA_DISABLED}) are removed from its environment, so the "
                    "chosen flow is the one its SDK uses, whatever the default chain's "
                    "order.")
    run.set_defaults(flow_arg=None)
    _flow_options(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS",
                     help="the command to run and its arguments, after --")

    token = sub.add_parser(
        "pod-token", allow_abbrev=False,
        help="mint a Kubernetes service-account token for EKS Pod Identity (play a pod)",
        description="Mint a service-account token (audience pods.eks.amazonaws.com) signed "
                    "with the state directory's key (created if missing), which a server "
                    "without --pod-identity-keys accepts, for a compose file or a test that "
                    "plays a pod.")
    _pod_options(token)
    token.add_argument("--lifetime", type=int, metavar="SECONDS",
                       default=podtoken.DEFAULT_LIFETIME,
                       help=f"seconds the token is valid, 1..{podtoken.MAX_LIFETIME} "
                            f"(default: {podtoken.DEFAULT_LIFETIME})")
    token.add_argument("--state-dir", metavar="DIR", help=_STATE_DIR_HELP)
    token.add_argument("--out", metavar="FILE|-", default="-",
                       help="write the token to FILE (mode 0600, replaced whole), or print "
                            "it with - (a newline only on a terminal) (default: -)")


_STATE_DIR_HELP = ("the server's state directory (default: $XDG_STATE_HOME/imds, else "
                   "~/.local/state/imds; env IMDS_STATE_DIR)")


def _flow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flow", choices=flows.FLOWS, metavar="{" + ",".join(flows.FLOWS) + "}",
                        help="imds: the EC2 metadata service; ecs: an ECS task role (full "
                             "URI and token); pod-identity: EKS Pod Identity (full URI and "
                             "a token file) (default: imds)")
    parser.add_argument("--server", metavar="PID|ROLE|URL",
                        help="which of the servers running on the state dir (`imds ctl "
                             "servers` lists them) (default: the only one)")
    parser.add_argument("--state-dir", metavar="DIR", help=_STATE_DIR_HELP)
    ecs = parser.add_argument_group("ecs")
    ecs.add_argument("--container-token", metavar="TOKEN",
                     help="the token of a server started with its own --container-token "
                          "(default: state_dir/container-token; env IMDS_CONTAINER_TOKEN)")
    ecs.add_argument("--task-id", metavar="ID",
                     help="an id the server was given with --ecs-task (default: the id it "
                          "serves its own role under)")
    pod = parser.add_argument_group("pod-identity")
    _pod_options(pod)
    pod.add_argument("--token-file", metavar="PATH",
                     help="where to write the freshly minted token (default: "
                          "state_dir/tokens/NAMESPACE.SERVICE_ACCOUNT.jwt)")


def _pod_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--namespace", default=podtoken.DEFAULT_NAMESPACE,
                        help=f"the pod's namespace (default: {podtoken.DEFAULT_NAMESPACE})")
    parser.add_argument("--service-account", default=podtoken.DEFAULT_SERVICE_ACCOUNT,
                        metavar="NAME",
                        help="the pod's service account (default: "
                             f"{podtoken.DEFAULT_SERVICE_ACCOUNT})")
    parser.add_argument("--pod-name", default=podtoken.DEFAULT_POD_NAME, metavar="NAME",
                        help=f"the pod's name (default: {podtoken.DEFAULT_POD_NAME})")
    parser.add_argument("--pod-uid", metavar="UUID",
                        help="the pod's uid (default: one derived from the namespace and "
                             "pod name, the same each time)")


def main(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    command = args.command
    try:
        if command == "pod-token":
            return _pod_token(args, environ)
        flow = _flow(args)
        variables = resolve(flow, args, environ, _warn(command))
        if command == "env":
            for name in flows.shadowing(environ, flow, cleared=False):
                _warn(command)(f"{name} is set in this environment and SDKs use it before "
                               f"these variables: unset it, or use `imds exec` [E-09]")
            return _write(flows.exports(variables))
        return _exec(_command(args), flows.environment(environ, flow, variables), flow,
                     environ)
    except (ServerChoiceError, ConfigError) as exc:  # ConfigError: also an unsafe state dir
        print(f"imds {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (FlowError, StartupError) as exc:  # StartupError: the signing key is unusable
        print(f"imds {command}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _command(args: argparse.Namespace) -> list[str]:
    words = list(args.argv)
    return words[1:] if words[:1] == ["--"] else words


def _flow(args: argparse.Namespace) -> str:
    if args.command == "exec" and not _command(args):
        # Before anything is minted or looked up: nothing would use it.
        raise ConfigError("give the command to run after --: imds exec [--flow FLOW] -- "
                          "CMD ARGS")
    if args.flow_arg and args.flow and args.flow_arg != args.flow:
        raise ConfigError(f"the flow is given twice: {args.flow_arg} and --flow {args.flow}")
    return str(args.flow_arg or args.flow or flows.IMDS)


def resolve(flow: str, args: argparse.Namespace, environ: Mapping[str, str],
            warn: Warn) -> dict[str, str]:
    """The chosen flow's variables for the server that args and the state directory name."""
    state = Path(state_dir_of(args, environ))
    server = choose(state, args.server)
    if server is None:
        raise FlowError(f"no server is running on state directory {state}: start one with "
                        "`imds serve`, or give its --state-dir")
    url = _url(server, flow, warn)
    if flow == flows.IMDS:
        return flows.imds_variables(url)
    if flow == flows.ECS:
        task = args.task_id or server.ecs_task
        if args.task_id and not _TASK_ID.fullmatch(args.task_id):
            raise ConfigError(f"--task-id {args.task_id!r}: expected an id given to the server "
                              "with --ecs-task (letters, digits and ._-)")
        if not task:
            raise FlowError(f"server {server.pid} does not serve ECS task credentials (its "
                            "entry names no ECS task: an imds from before ECS support?)")
        token = _container_token(server, state, args, environ)
        try:
            return flows.ecs_variables(url, task, token)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    pod = podtoken.Pod.of(args.namespace, args.service_account, args.pod_name, args.pod_uid)
    path = Path(args.token_file) if args.token_file else podtoken.default_path(state, pod)
    written = podtoken.write(path, podtoken.mint(state, pod))
    return flows.pod_identity_variables(url, str(written))


def _url(server: Server, flow: str, warn: Warn) -> str:
    """
    The server's first metadata URL; for a container flow the first that SDKs accept in a
    full URI [K-02], else the first with a warning that they will refuse it.
    """
    urls = [flows.client_url(url) for url in server.urls]
    if not urls:
        raise FlowError(f"server {server.pid} records no metadata URL")
    if flow == flows.IMDS:
        return urls[0]
    allowed = [url for url in urls if flows.full_uri_allowed(url)]
    if allowed:
        return allowed[0]
    warn(f"server {server.pid} listens on {', '.join(urls)}: SDKs refuse an http full URI "
         "to any host but loopback, 169.254.170.2, 169.254.170.23 and fd00:ec2::23 [K-02]")
    return urls[0]


def _container_token(server: Server, state: Path, args: argparse.Namespace,
                     environ: Mapping[str, str]) -> str:
    given = args.container_token or environ.get("IMDS_CONTAINER_TOKEN")
    if given:
        return str(given)
    if server.own_container_token:
        raise ConfigError(f"server {server.pid} was started with its own --container-token: "
                          "give it to `imds env` with --container-token or "
                          "IMDS_CONTAINER_TOKEN")
    path = state / CONTAINER_TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise FlowError(f"no container token: {path} is missing or unreadable (give "
                        "--container-token, or point --state-dir at the server's)") from None


def _pod_token(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    pod = podtoken.Pod.of(args.namespace, args.service_account, args.pod_name, args.pod_uid)
    state = state_dir_of(args, environ)
    token = podtoken.mint(state, pod, args.lifetime)
    if args.out == "-":
        # No newline unless a person reads it: `imds pod-token > token` must give a file an
        # SDK sends as it is, and botocore refuses a token file that ends in LF [K-03].
        return _write(token + ("\n" if sys.stdout.isatty() else ""))
    written = podtoken.write(Path(args.out), token)
    print(f"imds pod-token: {pod.namespace}/{pod.service_account} (pod {pod.name}) token "
          f"written to {written}", file=sys.stderr)
    return 0


def _exec(command: list[str], env: dict[str, str], flow: str,
          environ: Mapping[str, str]) -> int:
    for name in flows.shadowing(environ, flow, cleared=True):
        _warn("exec")(f"{name} is set and SDKs use it before the {flow} flow")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 - the user's own command
    except FileNotFoundError:
        print(f"imds exec: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as exc:
        print(f"imds exec: {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN


def _warn(command: str) -> Warn:
    return lambda message: print(f"imds {command}: warning: {message}", file=sys.stderr)


def _write(text: str) -> int:
    write_out(text)
    return 0
