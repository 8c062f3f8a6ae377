"""
The control API of the rotation lab, on its own listener (default 127.0.0.1:1339).

It never shares the metadata listener: a workload that can reach IMDS must not be able
to rotate, revoke or break it. Nor can it crowd the metadata listener out: it holds at
most 32 connections (`CONTROL_LIMITS`; the idlest is closed to make room, as on the
metadata port), each waiting at most 5 s for a complete request, and its descriptors come
out of the open-file limit beside the metadata port's, never out of them
(imds.http.descriptors).

Every endpoint but the timeline page itself needs `Authorization: Bearer <token>`. The
page is static (it holds no data) and reads the token from its URL *fragment*
(`/#token=…`): browsers never send a fragment to the server, so the token stays out of
access logs, `Referer` headers and proxies, and since it travels in a header that
browsers never add on their own, another site cannot make the browser call the API with
it (no CSRF, unlike a cookie).

    GET    /                      the live timeline (HTML, also /timeline)
    GET    /api/status            state, history, faults, client fetches (JSON)
    POST   /api/rotate            new credentials now            {"role"?}
    POST   /api/expire            serve the current keys as expired [L-04]   {"role"?, "endpoint"?}
    POST   /api/revoke            stop serving the current keys [C-06]       {"role"?, "endpoint"?}
    POST   /api/settings          {"lifetime"?, "refresh_ahead"?, "role"?}
    GET    /api/faults            active faults
    POST   /api/faults            inject one (imds.lab.faultspec.FaultSpec as JSON)
    DELETE /api/faults[/{id}]     clear all, or one
    GET    /metrics               Prometheus text

Faults, `expire` and `revoke` act on every endpoint that serves a role: IMDS, ECS task
credentials and EKS Pod Identity; `"endpoint": "imds" | "ecs" | "pod-identity"` aims one at
that endpoint alone (imds.containers.kinds). `role` names a role as `/api/status` lists it.
"""

from __future__ import annotations

import hmac
import importlib.resources
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError

from imds.config import Config
from imds.config import containers as container_settings
from imds.config.options import LIFETIME_RANGE, REFRESH_AHEAD_RANGE
from imds.containers.ecs import EcsEndpoint
from imds.errors import FaultError, LabError, SourceError, StartupError
from imds.http import aioserver as httpd
from imds.http.listen import bind_error
from imds.instance.statedir import kept_text, replace_file
from imds.lab import metrics
from imds.lab.faultspec import FaultSpec
from imds.lab.lab import Lab
from imds.logs import Throttle, printable
from imds.shutdown import GRACE

log = logging.getLogger("imds.control")

LAB = web.AppKey("lab", Lab)
TOKEN = web.AppKey("token", str)
PAGE = web.AppKey("page", bytes)
ECS = web.AppKey("ecs", EcsEndpoint)
# Refused calls and unparseable requests: anyone who can reach the port can send them.
REFUSALS = web.AppKey("refusals", Throttle)

# A person, `imds ctl`, a timeline page or two and a Prometheus scraper need a few
# connections, not the metadata port's thousand (imds.http.descriptors).
CONTROL_LIMITS = httpd.Limits(max_connections=32, idle_timeout=5.0)

TOKEN_FILE = "control-token"
URL_FILE = "control-url"
_PUBLIC = frozenset({"/", "/timeline"})
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The page is self-contained: inline script and style, data from this origin only.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; connect-src 'self'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def new_token() -> str:
    # Hex, not URL-safe base64: a token starting with `-` would read as a flag when
    # passed as `imds ctl --control-token TOKEN`.
    return secrets.token_hex(32)


def load_or_create_token(state_dir: str) -> str:
    """
    The control token kept in the state directory, created (mode 0600) on first use, so
    `imds ctl` finds it and it survives restarts.

    Raises ConfigError when the state directory is unsafe to trust (imds.instance.statedir).
    """
    # Checked and locked (imds.instance.statedir): a token another user planted is refused,
    # and servers starting at once all use the one token on disk.
    return kept_text(state_dir, TOKEN_FILE, new_token, 0o600, "control token")


def write_url(state_dir: str, url: str) -> None:
    """
    Publish where the control API listens, for `imds ctl` (written aside, then moved);
    imds.lab.registry calls it under the state directory's lock.
    """
    path = Path(state_dir) / URL_FILE
    try:
        replace_file(path, (url + "\n").encode("ascii"))
    except OSError as exc:
        # Not fatal: `imds ctl --control-url` still reaches the server.
        log.warning("could not publish the control URL in %s: %s", path, exc.strerror or exc)


# ---------------------------------------------------------------------------- app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=1))


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


@web.middleware
async def _auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in _PUBLIC and request.method == "GET":
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    expected = request.app[TOKEN]
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        # The path is decoded (`%0A` is a newline) and chosen by a client holding no token.
        remote = request.remote or "?"
        request.app[REFUSALS](remote, "control: refused %s %s from %s (%s token)",
                              printable(request.method), printable(request.path), remote,
                              "wrong" if given else "no")
        response = _error("a bearer token is required (imds ctl reads it from the state "
                          "directory)", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="imds"'
        return response
    try:
        return await handler(request)
    except LabError as exc:
        return _error(str(exc), exc.status)


class _NotFinite:
    """
    A number no field can hold, as the client wrote it: `Infinity`, `-Infinity`, `NaN`
    (Python's extensions to JSON) or one beyond a float's range (`1e400`).
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NotFinite(text)


def _fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's fields, refusing a non-finite number in one by the field's name."""
    for key, value in pairs:
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, _NotFinite):
                raise LabError(f"{key}: {item.text} is not a finite number")
    return dict(pairs)


def parse_json(text: str) -> Any:
    """
    JSON as RFC 8259 has it: json.loads alone takes `Infinity` and `NaN` and reads `1e400`
    as infinity, which no field accepts and `int()` cannot convert (OverflowError, a 500).
    Any such number left where `_fields` does not look (nested deeper) is a `_NotFinite`,
    which every field's type check refuses.
    """
    return json.loads(text, parse_constant=_NotFinite, parse_float=_float,
                      object_pairs_hook=_fields)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json(loads=parse_json)
    except ValueError:
        raise LabError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise LabError("the body must be a JSON object")
    return data


def _role(data: dict[str, Any]) -> str | None:
    role = data.get("role")
    if role is not None and not isinstance(role, str):
        raise LabError("role: expected a role name")
    return role


def _endpoint(data: dict[str, Any]) -> str | None:
    unknown = set(data) - {"role", "endpoint"}
    if unknown:
        raise LabError(f"unknown field(s): {', '.join(sorted(unknown))}")
    endpoint = data.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise LabError("endpoint: expected imds, ecs or pod-identity")
    return endpoint


def _seconds(data: dict[str, Any], key: str, low: int, high: int) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise LabError(f"{key}: expected seconds in {low}..{high}, got {value!r}")
    return value


async def _page(request: web.Request) -> web.Response:
    return web.Response(body=request.app[PAGE], content_type="text/html", charset="utf-8",
                        headers=_PAGE_HEADERS)


async def _status(request: web.Request) -> web.Response:
    return _json(request.app[LAB].status())


async def _rotate(request: web.Request) -> web.Response:
    lab = request.app[LAB]
    data = await _body(request)
    rendered = await lab.rotate(_role(data))
    creds = rendered.credentials
    return _json({"role": lab.rotator(_role(data)).source.role.name, "key": creds.key_hint,
                  "issued": creds.issued.timestamp(), "expires": rendered.expires_at})


async def _expire(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json(request.app[LAB].expire(_role(data), _endpoint(data)).describe(), 201)


async def _revoke(request: web.Request) -> web.Response:
    data = await _body(request)
    return _json(request.app[LAB].revoke(_role(data), _endpoint(data)).describe(), 201)


async def _settings(request: web.Request) -> web.Response:
    data = await _body(request)
    unknown = set(data) - {"lifetime", "refresh_ahead", "role"}
    if unknown:
        raise LabError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    lifetime = _seconds(data, "lifetime", *LIFETIME_RANGE)
    ahead = _seconds(data, "refresh_ahead", *REFRESH_AHEAD_RANGE)
    return _json(request.app[LAB].settings(lifetime=lifetime, refresh_ahead=ahead,
                                           role=_role(data)))


async def _faults(request: web.Request) -> web.Response:
    return _json([f.describe() for f in request.app[LAB].faults.active])


async def _add_fault(request: web.Request) -> web.Response:
    data = await _body(request)
    try:
        spec = FaultSpec.parse(data)
    except FaultError as exc:
        raise LabError(str(exc)) from None
    return _json(request.app[LAB].add_fault(spec).describe(), 201)


async def _clear_faults(request: web.Request) -> web.Response:
    return _json({"cleared": request.app[LAB].faults.clear()})


async def _clear_fault(request: web.Request) -> web.Response:
    faults = request.app[LAB].faults
    fault = faults.get(request.match_info["id"])
    if fault is None:
        raise LabError(f"no fault {request.match_info['id']!r}", 404)
    faults.end(fault, "cleared")
    return _json(fault.describe())


def _ecs(request: web.Request) -> EcsEndpoint:
    ecs = request.app.get(ECS)
    if ecs is None:
        raise LabError("this server serves no ECS task credentials", 404)
    return ecs


async def _tasks(request: web.Request) -> web.Response:
    return _json(_ecs(request).roles())


async def _assign_task(request: web.Request) -> web.Response:
    """Serve a role as an ECS task id, as --ecs-task does at startup."""
    ecs = _ecs(request)
    task = request.match_info["id"]
    role = _role(await _body(request))
    try:
        checked = container_settings.ecs_task(f"{task}={role or ''}")
    except ValueError as exc:
        raise LabError(str(exc)) from None
    task, _, role = checked.partition("=")
    try:
        await ecs.assign(task, role)
    except SourceError as exc:
        raise LabError(f"could not get the first credentials for role {role}: {exc}",
                       503) from exc
    log.info("control: ECS task %s serves role %s", printable(task), role)
    return _json({"task": task, "role": role}, 201)


async def _remove_task(request: web.Request) -> web.Response:
    task = request.match_info["id"]
    if not _ecs(request).remove(task):
        raise LabError(f"no ECS task {task!r}", 404)
    log.info("control: ECS task %s removed", printable(task))
    return _json({"task": task})


async def _metrics(request: web.Request) -> web.Response:
    response = web.Response(body=metrics.render(request.app[LAB]))
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


class _ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """
    What aiohttp's protocol logs on the control listener (`logger=`): a request it cannot
    parse is the client's doing and, like a refused call, costs a line per source and
    interval (an error line each otherwise); anything else goes to `aiohttp.server`.
    """

    def __init__(self, refusals: Throttle) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._refusals = refusals

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            # aiohttp's message is "Error handling request from %s", request.remote.
            remote = str(args[0]) if args else "?"
            self._refusals(remote, "control: refused a malformed request from %s (%s)",
                           remote, type(exc).__name__)
            return
        super().log(level, msg, *args, **kwargs)


def make_control_app(lab: Lab, token: str, ecs: EcsEndpoint | None = None) -> web.Application:
    app = web.Application(middlewares=[_auth])
    app[LAB] = lab
    app[TOKEN] = token
    if ecs is not None:
        app[ECS] = ecs
    refusals = app[REFUSALS] = Throttle(log, "refused control requests")

    async def close_refusals(_: web.Application) -> None:
        refusals.close()

    app.on_cleanup.append(close_refusals)
    app[PAGE] = importlib.resources.files("imds.lab").joinpath("timeline.html").read_bytes()
    app.router.add_get("/", _page)
    app.router.add_get("/timeline", _page)
    app.router.add_get("/api/status", _status)
    app.router.add_post("/api/rotate", _rotate)
    app.router.add_post("/api/expire", _expire)
    app.router.add_post("/api/revoke", _revoke)
    app.router.add_post("/api/settings", _settings)
    app.router.add_get("/api/faults", _faults)
    app.router.add_post("/api/faults", _add_fault)
    app.router.add_delete("/api/faults", _clear_faults)
    app.router.add_delete("/api/faults/{id}", _clear_fault)
    app.router.add_get("/api/ecs/tasks", _tasks)
    app.router.add_put("/api/ecs/tasks/{id}", _assign_task)
    app.router.add_delete("/api/ecs/tasks/{id}", _remove_task)
    app.router.add_get("/metrics", _metrics)
    return app


@dataclass
class Control:
    """The running control listener."""

    runner: web.AppRunner
    url: str
    token: str = field(default="", repr=False)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_control(config: Config, lab: Lab, token: str, *,
                        max_connections: int = CONTROL_LIMITS.max_connections,
                        ecs: EcsEndpoint | None = None) -> Control:
    """
    Bind the control listener; a busy port is a startup error, like the metadata one.
    `max_connections` is what the open-file limit leaves it (imds.http.descriptors.share).
    """
    # Polled every second by the timeline page: no access log (it would drown the rest).
    # aiohttp's own answers (ec2=False): this is a JSON API, not EC2's. Malformed requests
    # are logged through the refusal throttle; a stop waits GRACE at most.
    app = make_control_app(lab, token, ecs)
    runner = httpd.Runner(app, CONTROL_LIMITS, ec2=False, max_connections=max_connections,
                          access_log=None, logger=_ProtocolLog(app[REFUSALS]),
                          shutdown_timeout=GRACE)
    await runner.setup()
    assert config.control_port is not None  # config.finish fills it in
    site = runner.site(config.control_host, config.control_port)
    try:
        await site.start()
    except (OSError, UnicodeError) as exc:  # UnicodeError: as in imds.http.listen.start_sites
        await runner.cleanup()
        raise StartupError(f"control API: cannot listen on {config.control_host}:"
                           f"{config.control_port}: {bind_error(exc)}") from exc
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    return Control(runner, f"http://{shown}:{port}", token)
