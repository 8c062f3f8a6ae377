"""
`imds ctl`: drive a running server's rotation lab from the shell.

It finds the control API the way `imds serve` publishes it: `--control-url`, else the
server `--server PID|ROLE|URL` names among those running on the state directory
(imds.lab.registry), else `IMDS_CONTROL_URL`, else the one server running there, else the
`control-url` file, else http://127.0.0.1:1339. With several running and none chosen it
lists them and exits 2: acting on one of them by a guess could rotate or revoke the wrong
server's keys. The token comes from `--control-token` / `IMDS_CONTROL_TOKEN`, else the
state directory's `control-token` file (`--state-dir` / `IMDS_STATE_DIR` / the default).
Plain `urllib`, no proxy: a CLI call needs no event loop, and the control API is on
loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imds.config import CONTROL_PORT
from imds.config.instance import default_state_dir
from imds.config.options import LIFETIME_RANGE, REFRESH_AHEAD_RANGE
from imds.containers.kinds import ENDPOINTS
from imds.errors import ConfigError, CtlError, ServerChoiceError
from imds.instance import statedir
from imds.lab.control import TOKEN_FILE, URL_FILE
from imds.lab.faultspec import BODY_MODES, DROP_MODES, KINDS
from imds.lab.registry import Server, running_servers

EXIT_ERROR = 1
EXIT_USAGE = 2


class ControlClient:
    """A small synchronous client of the control API (JSON in, JSON out)."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise CtlError(f"control URL must be http(s)://…, got {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        # Loopback: an http_proxy in the environment must not get the bearer token.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self._token}",
                     "Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read()
                kind = response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise CtlError(f"{method} {path}: {exc.code} {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach the control API at {self.url}: {reason} "
                           "(is `imds serve` running? see --control-url)") from None
        return json.loads(raw) if kind == "application/json" else raw.decode()

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/api/status")  # type: ignore[no-any-return]

    def rotate(self, role: str | None = None) -> dict[str, Any]:
        return self.request("POST", "/api/rotate", _role(role))  # type: ignore[no-any-return]

    def expire(self, role: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST", "/api/expire", _role(role) | _endpoint(endpoint))

    def revoke(self, role: str | None = None, endpoint: str | None = None) -> dict[str, Any]:
        return self.request(  # type: ignore[no-any-return]
            "POST", "/api/revoke", _role(role) | _endpoint(endpoint))

    def settings(self, **values: Any) -> dict[str, Any]:
        body = {k: v for k, v in values.items() if v is not None}
        return self.request("POST", "/api/settings", body)  # type: ignore[no-any-return]

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        body = {k: v for k, v in spec.items() if v not in (None, [], ())}
        return self.request("POST", "/api/faults", body)  # type: ignore[no-any-return]

    def faults(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/faults")  # type: ignore[no-any-return]

    def clear_faults(self, fault_id: str | None = None) -> Any:
        return self.request("DELETE", "/api/faults" + (f"/{fault_id}" if fault_id else ""))

    def metrics(self) -> str:
        return self.request("GET", "/metrics")  # type: ignore[no-any-return]

    def ecs_tasks(self) -> dict[str, str]:
        return self.request("GET", "/api/ecs/tasks")  # type: ignore[no-any-return]

    def assign_task(self, task: str, role: str) -> dict[str, str]:
        path = "/api/ecs/tasks/" + urllib.parse.quote(task, safe="")
        return self.request("PUT", path, {"role": role})  # type: ignore[no-any-return]

    def remove_task(self, task: str) -> dict[str, str]:
        path = "/api/ecs/tasks/" + urllib.parse.quote(task, safe="")
        return self.request("DELETE", path)  # type: ignore[no-any-return]


def _role(role: str | None) -> dict[str, Any]:
    return {"role": role} if role else {}


def _endpoint(endpoint: str | None) -> dict[str, Any]:
    return {"endpoint": endpoint} if endpoint else {}


def _endpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", choices=ENDPOINTS,
                        help="only the answers of this endpoint: IMDS, ECS task credentials "
                             "or EKS Pod Identity (default: every endpoint)")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def state_dir_of(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    return Path(args.state_dir or environ.get("IMDS_STATE_DIR") or default_state_dir(environ))


def client_from(args: argparse.Namespace, environ: Mapping[str, str]) -> ControlClient:
    state = state_dir_of(args, environ)
    given_url = args.control_url or (None if args.server else environ.get("IMDS_CONTROL_URL"))
    given_token = args.control_token or environ.get("IMDS_CONTROL_TOKEN")
    if not (given_url and given_token) and state.exists():
        # A URL planted there would receive our token; a planted token, our commands.
        with contextlib.suppress(OSError):  # unreadable: the reads below find nothing
            statedir.check(state)
    url = given_url
    if not url:
        server = choose(state, args.server)
        if server is not None and server.own_token and not given_token:
            raise CtlError(f"server {server.pid} was started with its own control token: "
                           "give it with --control-token or IMDS_CONTROL_TOKEN")
        url = server.control_url if server is not None else \
            _read(state / URL_FILE) or f"http://127.0.0.1:{CONTROL_PORT}"
    token = given_token or _read(state / TOKEN_FILE)
    if not token:
        raise CtlError(f"no control token: give --control-token or IMDS_CONTROL_TOKEN, or "
                       f"point --state-dir at the server's ({state / TOKEN_FILE} is missing)")
    return ControlClient(url, token)


def choose(state: Path, selector: str | None) -> Server | None:
    """
    The server `selector` (--server) names among those running on `state`, or the only
    one; None when none runs (a server too old to record itself may still be found through
    `control-url`). Raises ServerChoiceError rather than guess between several.
    """
    servers = running_servers(state)
    if selector is None:
        if len(servers) > 1:
            raise ServerChoiceError(
                f"{len(servers)} servers are running on state directory {state}; say which "
                f"with --server PID, ROLE or URL (or --control-url URL):\n"
                + _server_lines(servers, "  "))
        return servers[0] if servers else None
    chosen = [s for s in servers if s.matches(selector)]
    if len(chosen) == 1:
        return chosen[0]
    if not servers:
        raise ServerChoiceError(f"--server {selector}: no server is running on state "
                                f"directory {state}")
    if chosen:
        raise ServerChoiceError(f"--server {selector} names {len(chosen)} servers; give "
                                "the PID:\n" + _server_lines(chosen, "  "))
    raise ServerChoiceError(f"--server {selector} names none of the servers running on "
                            f"state directory {state}:\n" + _server_lines(servers, "  "))


def _server_lines(servers: list[Server], indent: str = "") -> str:
    """One line each: what tells them apart (pid, role, where, source), oldest first."""
    return "\n".join(
        f"{indent}{s.pid}  {s.role}  {', '.join(s.urls)}  control {s.control_url}  since "
        f"{_when(s.started)}  {s.source}" + ("  (own control token)" if s.own_token else "")
        for s in servers)


def add_parser(sub: Any) -> None:
    """The `ctl` subcommand and its own subcommands, on the `imds` parser."""
    ctl = sub.add_parser("ctl", help="drive a running server: rotate, expire, revoke, "
                                     "inject faults, show status")
    which = ctl.add_mutually_exclusive_group()
    which.add_argument("--control-url", metavar="URL", help="env IMDS_CONTROL_URL; default: "
                       "the server running on the state dir, else state_dir/control-url, "
                       f"else http://127.0.0.1:{CONTROL_PORT}")
    which.add_argument("--server", metavar="PID|ROLE|URL", help="which of the servers "
                       "running on the state dir (`imds ctl servers` lists them): its pid, "
                       "role, or metadata or control URL")
    ctl.add_argument("--control-token", metavar="TOKEN",
                     help="its bearer token (default: state_dir/control-token; "
                          "env IMDS_CONTROL_TOKEN)")
    ctl.add_argument("--state-dir", metavar="DIR",
                     help="the server's state directory (default: $XDG_STATE_HOME/imds, else "
                          "~/.local/state/imds; env IMDS_STATE_DIR)")
    ctl.add_argument("--json", action="store_true",
                     help="print the API's JSON answer (default: a summary)")
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="credentials, next rotation, faults, recent fetches")
    actions.add_parser("servers", help="list the servers running on the state dir")
    for name, text in (("rotate", "new credentials now"),
                       ("expire", "serve the current keys as already expired (L-04) "
                                  "until the next rotation"),
                       ("revoke", "stop serving the current keys (C-06) until the next "
                                  "rotation")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--role", help="a role of --role-map (default: the server's)")
        if name != "rotate":
            _endpoint_option(action)
    settings = actions.add_parser("set", help="change lifetime and refresh-ahead now")
    low, high = LIFETIME_RANGE
    settings.add_argument("--lifetime", type=int, metavar="SECONDS",
                          help=f"lifetime of the next credentials, {low}..{high} (local "
                               "source only; default: unchanged)")
    low, high = REFRESH_AHEAD_RANGE
    settings.add_argument("--refresh-ahead", type=int, metavar="SECONDS",
                          help=f"replace credentials this many seconds before they expire, "
                               f"{low}..{high} (default: unchanged)")
    settings.add_argument("--role", help="a role of --role-map (default: the server's)")
    fault = actions.add_parser(
        "fault", help="inject a fault (KIND), or `fault list`, `fault clear [--id ID]`")
    fault.add_argument("kind", choices=(*KINDS, "list", "clear"), metavar="KIND",
                       help=f"one of {', '.join(KINDS)}; or list, clear")
    fault.add_argument("--path", action="append", default=[], metavar="PATH",
                       help="a path prefix or glob (`*` crosses /); repeatable "
                            "(default: all paths)")
    fault.add_argument("--count", type=int,
                       help="affect this many requests (fetches) (default: no limit)")
    fault.add_argument("--duration", type=float, metavar="SECONDS",
                       help="last this long (default: until cleared)")
    fault.add_argument("--status", type=int,
                       help="status: the status answered (default: 503); token: "
                            "403|404|405 (default: 404)")
    fault.add_argument("--delay", type=float, metavar="SECONDS",
                       help="latency: seconds of delay (default: 2)")
    fault.add_argument("--mode", help=f"drop: {'|'.join(DROP_MODES)} (default: {DROP_MODES[0]}); "
                                      f"body: {'|'.join(BODY_MODES)} (default: {BODY_MODES[0]})")
    fault.add_argument("--id", help="with clear: only this fault (default: all)")
    _endpoint_option(fault)
    task = actions.add_parser(
        "ecs-task", help="the ECS task ids served at /v2/credentials/ID: `ecs-task list`, "
                         "`ecs-task add ID ROLE`, `ecs-task remove ID`")
    task.add_argument("verb", choices=("list", "add", "remove"), metavar="VERB",
                      help="list, add or remove")
    task.add_argument("task", nargs="?", metavar="ID", help="the task id (add, remove)")
    task.add_argument("role", nargs="?", metavar="ROLE",
                      help="add: a role name (minted locally) or role ARN (assumed with STS)")
    actions.add_parser("url", help="print the timeline page's URL, with the token")
    actions.add_parser("metrics", help="print /metrics")


def main(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        if args.action == "servers":
            result: Any = running_servers(state_dir_of(args, environ))
        else:
            result = _dispatch(client_from(args, environ), args)
    except ServerChoiceError as exc:
        print(f"imds ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CtlError as exc:
        print(f"imds ctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ConfigError as exc:  # an unsafe state directory (imds.instance.statedir)
        print(f"imds ctl: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(result, str):
        text = result if result.endswith("\n") else result + "\n"
    elif args.json:
        text = json.dumps(_jsonable(result), indent=2) + "\n"
    else:
        text = _human(args.action, result) + "\n"
    write_out(text)
    return 0


def write_out(text: str) -> None:
    """Print `text`; a reader that left (`imds ctl status | head`) ends it quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Say nothing more, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _dispatch(client: ControlClient, args: argparse.Namespace) -> Any:
    action = args.action
    if action == "status":
        return client.status()
    if action == "rotate":
        return client.rotate(args.role)
    if action in ("expire", "revoke"):
        return getattr(client, action)(args.role, args.endpoint)
    if action == "set":
        if args.lifetime is None and args.refresh_ahead is None:
            raise CtlError("set: give --lifetime and/or --refresh-ahead")
        return client.settings(lifetime=args.lifetime, refresh_ahead=args.refresh_ahead,
                               role=args.role)
    if action == "fault":
        if args.kind == "list":
            return client.faults()
        if args.kind == "clear":
            return client.clear_faults(args.id)
        return client.add_fault(kind=args.kind, paths=args.path, count=args.count,
                                duration=args.duration, status=args.status,
                                delay=args.delay, mode=args.mode, endpoint=args.endpoint)
    if action == "ecs-task":
        if args.verb == "list":
            return client.ecs_tasks()
        if not args.task or (args.verb == "add") != bool(args.role):
            raise CtlError("ecs-task: give `add ID ROLE` or `remove ID`")
        if args.verb == "add":
            return client.assign_task(args.task, args.role)
        return client.remove_task(args.task)
    if action == "url":
        return f"{client.url}/#token={client._token}"
    return client.metrics()


def _when(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def _fault_line(f: Mapping[str, Any]) -> str:
    what = " ".join(str(x) for x in (f["kind"], f.get("status", ""), f.get("mode", ""),
                                     f"{f['delay']}s" if "delay" in f else "") if x)
    where = " ".join(f["paths"]) or (f"key {f['key']}" if f.get("key") else "")
    if f.get("endpoint"):
        where = f"{where} at {f['endpoint']}".lstrip()
    if f.get("ended"):
        left = f"ended ({f['end_reason']})"
    elif f.get("remaining") is not None:
        left = f"{f['remaining']} left"
    elif f.get("until"):
        left = f"until {_when(f['until'])}"
    else:
        left = "until cleared" if not f.get("key") else "until the next rotation"
    return f"{f['id']}  {what}  {where}  {left}, {f['hits']} hit(s)".replace("    ", "  ")


def _key_line(cur: Mapping[str, Any]) -> str:
    """
    The served key: what clients are told about it, and when the key itself expires. After
    `expire` the two differ (served as expired [L-04], still valid for minutes), so the line
    says which is which rather than "expired … (114s left)".
    """
    state, left = cur["state"], cur["seconds_left"]
    when = _when(cur["expires"])
    if left <= 0:
        expiry = f"expired {when} ({-left:.0f}s ago)"
    elif state == "valid":
        expiry = f"expires {when} ({left:.0f}s left)"
    else:
        expiry = f"real expiry {when} (in {left:.0f}s)"
    if state == "expired" and left > 0:
        state = "served as expired"
    return f"key {cur['key']}  {state}  issued {_when(cur['issued'])}  {expiry}"


def _jsonable(result: Any) -> Any:
    if isinstance(result, list) and all(isinstance(s, Server) for s in result):
        return [s.to_json() for s in result]
    return result


def _human(action: str, result: Any) -> str:
    if action == "servers":
        return _server_lines(result) or "no server is running on this state directory"
    if action == "status":
        lines = []
        for role in result["roles"].values():
            lines.append(f"role {role['role']}: {role['source']}")
            cur = role["current"]
            if cur:
                lines.append(f"  {_key_line(cur)}")
            lines.append(f"  next rotation {_when(role['next_rotation'])}, refresh-ahead "
                         f"{role['refresh_ahead']}s"
                         + (f", lifetime {role['lifetime']}s" if role["lifetime"] else ""))
        faults = result["faults"]
        lines.append("faults: " + ("none" if not faults else ""))
        lines += [f"  {_fault_line(f)}" for f in faults]
        fetches = result["fetches"][-5:]
        if fetches:
            lines.append("recent credential fetches:")
            lines += [f"  {_when(f['at'])}  {f.get('endpoint', 'imds'):<12}  {f['client']}  "
                      f"{f['role'] or '?'}  {f['key'] or 'no key'}"
                      + (f"  ({f['fault']})" if f["fault"] else "") for f in fetches]
        return "\n".join(lines)
    if action == "ecs-task":
        if "task" in result:
            role = result.get("role")
            return f"task {result['task']}: " + (f"serves role {role}" if role else "removed")
        return "\n".join(f"{task}  {role}" for task, role in result.items()) or "no tasks"
    if action == "rotate":
        return f"rotated {result['role']}: key {result['key']} until {_when(result['expires'])}"
    if action in ("expire", "revoke") or (action == "fault" and "kind" in result):
        return _fault_line(result)
    if action == "fault" and isinstance(result, list):
        return "\n".join(_fault_line(f) for f in result) or "no active faults"
    if action == "fault":
        return f"cleared {result.get('cleared', result.get('id'))}"
    if action == "set":
        cur = result["current"] or {}
        return (f"{result['role']}: lifetime {result['lifetime']}s, refresh-ahead "
                f"{result['refresh_ahead']}s; next rotation {_when(result['next_rotation'])}"
                + (f" (key {cur['key']})" if cur else ""))
    return json.dumps(result, indent=2)
