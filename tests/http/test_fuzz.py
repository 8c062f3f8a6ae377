"""
Property tests against a running server over real sockets: whatever arrives, the answer
is one of EC2's statuses, nothing crashes, the server serves normally afterwards, and no
token it did not issue (or issued to someone else, or that has expired) is accepted. The
container credential endpoints beside IMDS [K-01] [K-06] get the same: any id, token,
service account JWT, Host and method is answered as the agents answer it, never with a
5xx, and credentials only for the right token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import socket
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds.containers.satoken import LEEWAY, load_or_create_key, mint
from imds.ec2.tokens import TOKEN_LENGTH, TokenSigner
from imds.server import Running, ServerThread
from tests.conftest import make_config

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
ROLE = "imds-local-role"
CREDENTIALS = f"/latest/meta-data/iam/security-credentials/{ROLE}"
# 200, 400 [T-03], 401, 403 [T-09] [T-12], 404, 405 [T-11] and
# 417 [T-14]: all EC2 ever answers here.
EC2_STATUSES = frozenset({200, 400, 401, 403, 404, 405, 417})
B64URL = string.ascii_letters + string.digits + "-_"

# Modest counts keep the suite fast; `--hypothesis-seed` reproduces a failure.
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    # The server fixture is shared by all examples on purpose: it must survive them all.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Clock:
    """Wall time plus an offset the tests move forward (token expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, raw: bytes, *, source: str = "127.0.0.1") -> Answer | None:
    """Send `raw` on a new connection and read until the server closes (it always does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as sock:
        # The server may answer and close before it has read everything (a bad header).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def request(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 169.254.169.254"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def port_of(server: Running) -> int:
    return int(server.url.rsplit(":", 1)[1])


def issue(server: Running, ttl: int = 21600, source: str = "127.0.0.1") -> str:
    answer = exchange(port_of(server), request("PUT", "/latest/api/token", {TTL: str(ttl)}),
                      source=source)
    assert answer is not None and 200 == answer.status
    return answer.body.decode()


def get_credentials(server: Running, token: str, source: str = "127.0.0.1") -> int:
    answer = exchange(port_of(server), request("GET", CREDENTIALS, {TOKEN: token}),
                      source=source)
    assert answer is not None
    return answer.status


def serves_normally(server: Running) -> bool:
    token = issue(server)
    answer = exchange(port_of(server), request("GET", CREDENTIALS, {TOKEN: token}))
    return answer is not None and 200 == answer.status and b'"Code" : "Success"' in answer.body


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


# The ECS full-URI flow's token [K-02] and a task besides the server's own (its role
# minted locally, like the server's).
CONTAINER_TOKEN = "fuzz-container-token-0123456789"
TASK = "web"


@pytest.fixture(scope="module")
def server(clock: Clock) -> Iterator[Running]:
    thread = ServerThread(make_config(container_token=CONTAINER_TOKEN,
                                      ecs_task=[f"{TASK}=web-role"]), clock=clock)
    yield thread.start()
    thread.stop()


@pytest.fixture
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing the fuzzer sends may make imds log an internal error."""
    caplog.set_level(logging.DEBUG, logger="imds")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [] == [r.getMessage() for r in errors]


# ---------------------------------------------------------------------- strategies

METHODS = st.one_of(
    st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE",
                     "CONNECT", "PROPFIND", "get", "Put"]),
    st.text(alphabet=string.ascii_letters + "-_!#", min_size=1, max_size=12),
)
SEGMENTS = st.one_of(
    st.sampled_from(["latest", "meta-data", "iam", "security-credentials", ROLE, "api",
                     "token", "dynamic", "instance-identity", "document", "user-data",
                     "2009-04-04", "..", ".", "", "%2e%2e", "%2F", "%00", "%ff%fe",
                     "placement", "region", "tags", "instance"]),
    st.text(alphabet=(string.ascii_letters + string.digits + string.punctuation)
            .replace("?", "").replace("#", ""), max_size=20),
    st.binary(max_size=8).map(lambda raw: "".join(f"%{b:02x}" for b in raw)),
)
PATHS = st.one_of(
    st.lists(SEGMENTS, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.integers(min_value=100, max_value=12000).map(lambda n: "/latest/meta-data/" + "a" * n),
    st.sampled_from(["/latest/api/token", CREDENTIALS, "/", "*", "http://169.254.169.254/",
                     "//latest//meta-data", "/latest/meta-data/../../../etc/passwd"]),
)
HEADER_NAMES = st.one_of(
    st.sampled_from([TOKEN, TTL, "X-Forwarded-For", "Host", "Content-Length",
                     "Transfer-Encoding", "Expect", "Connection", "Upgrade", "Range",
                     "Accept-Encoding", "X-aws-ec2-metadata-token".upper()]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.!~", min_size=1,
            max_size=30),
)
# Anything but CR and LF, which would end the header early (that is the parser's job).
HEADER_VALUES = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=60),
    st.sampled_from(["21600", "0", "-1", "100-continue", "chunked", "close", "keep-alive",
                     "websocket", "gzip", "bytes=0-10", "10"]),
)
RAW_TARGETS = st.binary(min_size=1, max_size=40).filter(
    lambda raw: b"\r" not in raw and b"\n" not in raw)


# ---------------------------------------------------------------------- properties


class TestAnyRequest:
    @FUZZ
    @given(method=METHODS, path=PATHS,
           headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=6),
           version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2"]))
    def test_gets_an_ec2_status_and_the_server_serves_on(
        self, server: Running, no_internal_errors: None, method: str, path: str,
        headers: dict[str, str], version: str,
    ) -> None:
        lines = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in headers.items())]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        answer = exchange(port_of(server), raw)
        assert answer is not None
        assert answer.status in EC2_STATUSES
        assert "EC2ws" == answer.headers.get("server")
        assert serves_normally(server)

    @FUZZ
    @given(target=RAW_TARGETS, method=st.sampled_from([b"GET", b"PUT", b"HEAD"]))
    def test_non_utf8_bytes_in_the_request_line(
        self, server: Running, no_internal_errors: None, target: bytes, method: bytes
    ) -> None:
        raw = method + b" /latest/" + target + b" HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
        answer = exchange(port_of(server), raw)
        assert answer is not None
        assert answer.status in EC2_STATUSES
        assert serves_normally(server)


class TestTtl:
    @FUZZ
    @given(ttl=st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
        st.integers(min_value=-10, max_value=30000).map(str),
        st.sampled_from(["+60", "60.0", "060", "0x10", "1e3", "21600", "21601", "1",
                         "٣", "６０", "60 60"]),
    ))
    def test_only_a_plain_integer_in_range_gets_a_token(
        self, server: Running, no_internal_errors: None, ttl: str
    ) -> None:
        """[T-02] [T-04] the spec's rule, written independently of imds.ec2.tokens."""
        clean = ttl.replace("\r", "").replace("\n", "")
        answer = exchange(port_of(server), request("PUT", "/latest/api/token", {TTL: clean}))
        assert answer is not None
        # HTTP strips optional whitespace around a header value before anyone sees it.
        seen = clean.strip(" \t")
        valid = re.fullmatch(r"[1-9][0-9]{0,4}", seen) is not None and int(seen) <= 21600
        if valid:
            assert 200 == answer.status
            assert seen == answer.headers["x-aws-ec2-metadata-token-ttl-seconds"]
            assert TOKEN_LENGTH == len(answer.body)
        else:
            assert 400 == answer.status


class TestTokensNotIssuedHereAreRefused:
    @FUZZ
    @given(token=st.one_of(
        st.text(alphabet=B64URL, min_size=TOKEN_LENGTH - 2, max_size=TOKEN_LENGTH - 2)
        .map(lambda body: body + "=="),
        st.text(alphabet=B64URL + "=", min_size=TOKEN_LENGTH, max_size=TOKEN_LENGTH),
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=80),
    ))
    def test_random_tokens(self, server: Running, no_internal_errors: None, token: str) -> None:
        status = get_credentials(server, token)
        # 400 only where the value itself is not a valid header (e.g. a NUL).
        assert status in (400, 401)

    @FUZZ
    @given(at=st.integers(min_value=0, max_value=TOKEN_LENGTH - 1),
           shift=st.integers(min_value=1, max_value=len(B64URL)))
    def test_mutated_tokens(self, server: Running, no_internal_errors: None, at: int,
                            shift: int) -> None:
        """One character replaced by any other of the alphabet (or padding)."""
        token = issue(server)
        alphabet = B64URL + "="
        other = alphabet[(alphabet.index(token[at]) + shift) % len(alphabet)]
        mutated = token[:at] + other + token[at + 1:]
        assert 401 == get_credentials(server, mutated)
        assert 200 == get_credentials(server, token)

    @FUZZ
    @given(keep=st.integers(min_value=0, max_value=TOKEN_LENGTH - 1),
           extra=st.text(alphabet=B64URL + "=", min_size=1, max_size=8))
    def test_truncated_and_extended_tokens(
        self, server: Running, no_internal_errors: None, keep: int, extra: str
    ) -> None:
        token = issue(server)
        assert 401 == get_credentials(server, token[:keep])
        assert 401 == get_credentials(server, token + extra)

    @FUZZ
    @given(ttl=st.integers(min_value=1, max_value=21600))
    def test_tokens_signed_with_another_key(
        self, server: Running, no_internal_errors: None, ttl: int
    ) -> None:
        """Right format, right client, right expiry: only the key differs."""
        forged = TokenSigner(time.time, key=secrets.token_bytes(32)).issue(ttl, "127.0.0.1")
        assert TOKEN_LENGTH == len(forged)
        assert 401 == get_credentials(server, forged)

    @FUZZ
    @given(ttl=st.integers(min_value=1, max_value=21600),
           late=st.floats(min_value=0, max_value=100_000))
    def test_expired_tokens(
        self, server: Running, clock: Clock, no_internal_errors: None, ttl: int, late: float
    ) -> None:
        """[T-21] invalid from the instant created + ttl, and forever after."""
        token = issue(server, ttl)
        # Used once first, so the token is remembered as good and the answer kept
        # (imds.ec2.tokens, imds.http.fastpath): neither may outlive the token.
        assert 200 == get_credentials(server, token)
        clock.offset += ttl + late
        try:
            assert 401 == get_credentials(server, token)
        finally:
            # Back to now: the server is shared, and its credentials must stay valid
            # for the examples after this one.
            clock.offset -= ttl + late

    @settings(FUZZ, max_examples=20)
    @given(ttl=st.integers(min_value=1, max_value=21600))
    def test_tokens_used_from_another_address(
        self, server: Running, no_internal_errors: None, ttl: int
    ) -> None:
        """[T-08] a token is bound to the caller that asked for it."""
        token = issue(server, ttl, source="127.0.0.1")
        assert 401 == get_credentials(server, token, source="127.0.0.2")
        assert 200 == get_credentials(server, token, source="127.0.0.1")


# ---------------------------------------------------------- the fast path agrees

# What the fast path takes (imds.http.fastpath._HEAD), so most examples stay on it.
PLAIN_SEGMENTS = st.one_of(
    st.sampled_from(["meta-data", "iam", "security-credentials", ROLE, "api", "token",
                     "dynamic", "instance-identity", "document", "user-data", "placement",
                     "region", "tags", "instance", "ami-id", "", "."]),
    st.text(alphabet=string.ascii_letters + string.digits + "._~+=,@:-", max_size=12),
)
PLAIN_NAMES = st.one_of(
    st.sampled_from([TOKEN, TTL, TOKEN.upper(), "X-Forwarded-For", "Content-Length",
                     "Connection", "Accept", "User-Agent", "Host"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.!~", min_size=1,
            max_size=20),
)
PLAIN_VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["21600", "60", "0", "close", "keep-alive", "{token}", " {token} "]),
)


def comparable(answer: Answer | None) -> tuple[int, dict[str, str], bytes] | None:
    """An answer without what rightly differs between two: its date, a fresh token."""
    if answer is None:
        return None
    headers = {k: v for k, v in answer.headers.items() if k != "date"}
    body = answer.body
    if re.fullmatch(rb"[A-Za-z0-9_-]{54}==", body):
        body = b"(token)"
    return answer.status, headers, body


class TestFastPathAgreesWithAiohttp:
    @FUZZ
    @given(method=st.sampled_from(["GET", "PUT"]),
           segments=st.lists(PLAIN_SEGMENTS, max_size=6),
           headers=st.dictionaries(PLAIN_NAMES, PLAIN_VALUES, max_size=5))
    def test_a_plain_request_gets_the_same_answer_on_either_path(
        self, server: Running, no_internal_errors: None, method: str, segments: list[str],
        headers: dict[str, str],
    ) -> None:
        """
        The same request twice: as sent (the fast path answers it unless it finds it
        odd) and with `latest` spelt `lates%74` (aiohttp answers, decoding it back).
        """
        token = issue(server)
        fields = {name: value.replace("{token}", token) for name, value in headers.items()}
        path = "/latest/" + "/".join(segments)
        fast = exchange(port_of(server), request(method, path, fields))
        slow = exchange(port_of(server), request(method, "/lates%74/" + path[8:], fields))
        assert fast is not None and fast.status in EC2_STATUSES
        assert comparable(fast) == comparable(slow)


# ------------------------------------------------------ the container endpoints

ECS_ADDRESS = "169.254.170.2"
# What the generated requests carry in Host: `{port}` is the server's. None: no Host.
CONTAINER_HOSTS = [
    ECS_ADDRESS, f"{ECS_ADDRESS}:80", "169.254.170.23", "169.254.170.23:80",
    "[fd00:ec2::23]", "[fd00:ec2::23]:80", "127.0.0.1:{port}", "127.0.0.1", "localhost:{port}",
    "[::1]:{port}", "10.1.2.3", "169.254.169.254", "192.168.1.1:{port}", "evil.example",
    "imds", "metadata.local:{port}", None,
]
# Host values the Pod Identity agent answers through [K-08]: its own addresses and the
# address imds listens on (loopback here, so any loopback name).
POD_HOSTS = frozenset({"169.254.170.23", "fd00:ec2::23", "127.0.0.1", "localhost", "::1"})
# Authorization, by what it is; None: no header.
AUTHORIZATIONS = [None, "", "container", "container-wrong", "container-prefixed", "pod",
                  "pod-expired", "pod-early", "pod-other-key", "pod-wrong-audience",
                  "garbage"]
UNKNOWN_IDS = st.text(alphabet=string.ascii_letters + string.digits + "-._~", min_size=1,
                      max_size=40).filter(lambda task: task != TASK)


@dataclass(frozen=True)
class Target:
    """A container credential request target, and what the agents make of it."""

    target: str
    # "ecs" with the task id asked for ("" for none), or "pod"; None: decided by Host (the
    # bare /v1/credentials is ECS's at ECS's address, a pod's elsewhere [K-01] [K-06]).
    route: str | None
    task: str = ""


@st.composite
def container_targets(draw: st.DrawFn, default_task: str) -> Target:
    task = draw(st.one_of(st.sampled_from([default_task, TASK, ""]), UNKNOWN_IDS))
    # The same id percent-encoded: aiohttp decodes it, the fast path hands it over.
    spelt = draw(st.sampled_from([task, "".join(f"%{ord(c):02X}" for c in task)]))
    return draw(st.sampled_from([
        Target(f"/v2/credentials/{spelt}", "ecs", task),
        Target(f"/v1/credentials?id={spelt}", "ecs", task),
        Target(f"/v1/credentials?x=1&id={spelt}", "ecs", task),
        Target("/v2/credentials", "ecs"),
        Target("/v1/credentials", None),
        Target("/v1/credentials?x=1", None),
        Target(f"/v2/credentials/{spelt}/", "ecs", f"{task}/"),
    ]))


@pytest.fixture(scope="module")
def authorizations(server: Running, tmp_path_factory: pytest.TempPathFactory,
                   ) -> dict[str | None, str | None]:
    """Each kind of AUTHORIZATIONS as a header value."""
    key = load_or_create_key(server.config.state_dir)
    other = load_or_create_key(str(tmp_path_factory.mktemp("other-issuer")))
    now = time.time()

    def pod(**claims: object) -> str:
        return mint(key, namespace="default", service_account="app", pod_name="app-0",
                    **claims)  # type: ignore[arg-type]

    # Signed by the right key, for another audience: mint writes only EKS's.
    wrong_audience = jwt.encode(
        {"aud": ["sts.amazonaws.com"], "exp": int(now) + 3600, "iat": int(now),
         "nbf": int(now), "kubernetes.io": {"namespace": "default",
                                            "serviceaccount": {"name": "app"}}},
        key, algorithm="RS256")
    return {
        None: None, "": "", "container": CONTAINER_TOKEN,
        "container-wrong": CONTAINER_TOKEN[:-1] + "x", "container-prefixed":
        "Bearer " + CONTAINER_TOKEN, "pod": pod(),
        "pod-expired": pod(now=now - 7200, lifetime=600),
        "pod-early": pod(now=now + 3600),
        "pod-other-key": mint(other, namespace="default", service_account="app"),
        "pod-wrong-audience": wrong_audience, "garbage": "eyJhbGciOi.not.a-jwt",
    }


def container_request(method: str, target: str, host: str | None, authorization: str | None,
                      port: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append("Host: " + host.replace("{port}", str(port)))
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def host_part(host: str) -> tuple[str, bool]:
    """Host's name without the port, and whether it is an IP literal (written anew)."""
    name = host[1:host.index("]")] if host.startswith("[") else host.split(":")[0]
    return name, all(c in string.hexdigits + ".:" for c in name) and any(
        c.isdigit() for c in name)


def expected_status(method: str, target: Target, host: str | None, auth: str | None,
                    tasks: frozenset[str]) -> int:
    """
    The agents' answer [K-05] [K-08] (and EC2's Host check [N-03]) with `tasks` the known
    task ids, written from the interface, independently of imds.containers.
    """
    if host is None:
        return 400  # RFC 9112 §3.2: HTTP/1.1 without Host
    name, literal = host_part(host)
    if not literal and name != "localhost":
        return 403  # a name that may have been rebound [N-03]
    route = target.route or ("ecs" if name == ECS_ADDRESS else "pod")
    if method not in ("GET", "HEAD"):
        return 405
    if route == "ecs":
        if name != ECS_ADDRESS:  # the full-URI flow [K-02]
            if auth is None:
                return 401
            if auth != "container":
                return 403
        return 200 if target.task in tasks else 400
    if name not in POD_HOSTS:
        return 403
    return 200 if auth == "pod" else 400


class TestContainerEndpoints:
    @FUZZ
    @given(method=st.sampled_from(["GET", "GET", "GET", "HEAD", "PUT", "POST", "DELETE",
                                   "OPTIONS", "PATCH"]),
           data=st.data(), host=st.sampled_from(CONTAINER_HOSTS),
           auth=st.sampled_from(AUTHORIZATIONS))
    def test_credentials_only_for_the_right_token_and_never_a_5xx(
        self, server: Running, authorizations: dict[str | None, str | None],
        no_internal_errors: None, method: str, data: st.DataObject, host: str | None,
        auth: str | None,
    ) -> None:
        target = data.draw(container_targets(server.ecs_task))
        port = port_of(server)
        raw = container_request(method, target.target, host, authorizations[auth], port)
        answer = exchange(port, raw)
        assert answer is not None
        want = expected_status(method, target, host, auth,
                               frozenset({server.ecs_task, TASK}))
        assert want == answer.status, raw
        assert "EC2ws" == answer.headers.get("server")
        if method == "HEAD" and host is not None:
            # (Without Host the parser's 400 page answers, before any handler.)
            assert b"" == answer.body
        elif want == 200:
            document = json.loads(answer.body)
            assert "application/json" == answer.headers["content-type"]
            assert {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"} <= set(document)
        else:
            assert b"AccessKeyId" not in answer.body and b"SecretAccessKey" not in answer.body
        assert serves_containers(server, authorizations)

    @FUZZ
    @given(method=METHODS, data=st.data(), host=st.sampled_from(CONTAINER_HOSTS),
           auth=st.sampled_from(AUTHORIZATIONS),
           headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
           version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]))
    def test_any_request_gets_no_5xx_and_the_server_serves_on(
        self, server: Running, authorizations: dict[str | None, str | None],
        no_internal_errors: None, method: str, data: st.DataObject, host: str | None,
        auth: str | None, headers: dict[str, str], version: str,
    ) -> None:
        target = data.draw(container_targets(server.ecs_task))
        port = port_of(server)
        raw = container_request(method, target.target, host, authorizations[auth], port)
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        raw = raw.replace(b" HTTP/1.1\r\n", f" {version}\r\n".encode(), 1)
        raw = raw[:-2] + extra.encode("utf-8") + b"\r\n"
        answer = exchange(port, raw)
        assert answer is not None
        # No 5xx: imds answers 503 and 500 here only when a role's credentials cannot be
        # had (K-05, K-08), and these roles are minted locally.
        assert answer.status in EC2_STATUSES
        assert serves_containers(server, authorizations)

    @FUZZ
    @given(auth=st.sampled_from(["container", "pod"]),
           at=st.floats(min_value=0.0, max_value=1.0),
           cut=st.sampled_from(["\r\n ", "\r\n\t", "\r", "\n", "\r\r\n", "\r\n"]))
    def test_a_token_with_cr_or_lf_gets_400(
        self, server: Running, authorizations: dict[str | None, str | None],
        no_internal_errors: None, auth: str, at: float, cut: str,
    ) -> None:
        """
        A token with CR or LF [K-03] cannot reach imds as a header value: folded (obs-fold),
        cut by a bare CR or LF, or ending a line early, the request gets the parser's 400.
        """
        token = authorizations[auth]
        assert token is not None
        where = 1 + int(at * (len(token) - 2))
        cut_token = token[:where] + cut + token[where:]
        target = "/v1/credentials" if auth == "pod" else f"/v2/credentials/{TASK}"
        raw = container_request("GET", target, "127.0.0.1", cut_token, port_of(server))
        answer = exchange(port_of(server), raw)
        assert answer is not None
        assert 400 == answer.status
        assert b"AccessKeyId" not in answer.body
        assert serves_containers(server, authorizations)

    @settings(FUZZ, max_examples=20)
    @given(lifetime=st.integers(min_value=600, max_value=86400),
           late=st.floats(min_value=0.5, max_value=100_000))
    def test_an_expired_pod_token_is_refused_after_its_answer_was_kept(
        self, server: Running, clock: Clock, no_internal_errors: None, lifetime: int,
        late: float,
    ) -> None:
        """A pod's answer is kept until its token expires (imds.http.fastpath), no longer."""
        token = mint(load_or_create_key(server.config.state_dir), namespace="default",
                     service_account="app", lifetime=lifetime)
        raw = container_request("GET", "/v1/credentials", "169.254.170.23", token,
                                port_of(server))
        # Twice: worked out, then (within the second) kept.
        for _ in range(2):
            answer = exchange(port_of(server), raw)
            assert answer is not None and 200 == answer.status
        # Expired once past exp and Kubernetes's minute of leeway.
        clock.offset += lifetime + LEEWAY + late
        try:
            answer = exchange(port_of(server), raw)
            assert answer is not None
            assert (400, b"expired") == (answer.status, answer.body[-8:-1])
        finally:
            clock.offset -= lifetime + LEEWAY + late


def serves_containers(server: Running, authorizations: dict[str | None, str | None]) -> bool:
    """An SDK's fetch from each container endpoint still gets credentials."""
    port = port_of(server)
    for target, authorization in ((f"/v2/credentials/{server.ecs_task}", CONTAINER_TOKEN),
                                  ("/v1/credentials", authorizations["pod"])):
        answer = exchange(port, container_request("GET", target, "127.0.0.1:{port}",
                                                  authorization, port))
        if answer is None or 200 != answer.status or b"AccessKeyId" not in answer.body:
            return False
    return True
