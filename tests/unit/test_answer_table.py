"""
EC2's answers, in memory: one table of requests run against the pure core
(`imds.ec2.answer.answer`), no socket and no event loop.

The end-to-end tests prove the same answers over real sockets and with real SDKs; this
table pins each rule to its fact id (docs/spec.md) and runs in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from imds.ec2 import wire as p
from imds.ec2.answer import Reply, Rules, answer
from imds.ec2.guard import Guard
from imds.ec2.tokens import TokenSigner
from imds.ec2.tree import Directory, leaf

NOW = 1_800_000_000.0
CLIENT = "10.0.0.7"
ROLE_DOCUMENT = '{\n  "Code" : "Success"\n}'


def instance_tree() -> Directory:
    """A small tree shaped like EC2's: directories, leaves, one role."""
    meta = Directory({
        "ami-id": leaf("ami-0123456789abcdef0"),
        "placement": Directory({"region": leaf("us-east-1"),
                                "availability-zone": leaf("us-east-1a")}),
        "iam": Directory({"security-credentials": Directory({"app": leaf(ROLE_DOCUMENT)})}),
    })
    latest = Directory({"meta-data": meta}, mark_directories=False)
    return Directory({"latest": latest}, mark_directories=False)


def rules(at: float = NOW, **changes: object) -> Rules:
    """The rules of one server whose clock reads `at`; its token key is fixed."""
    base = Rules(tree=instance_tree(), signer=TokenSigner(lambda: at, key=b"k" * 32),
                 clock=lambda: at, tokens_required=True, hop_limit=1, guard=Guard.of())
    return replace(base, **changes)  # type: ignore[arg-type]


def token(ttl: int = 21600, client: str = CLIENT) -> str:
    return rules().signer.issue(ttl, client)


@dataclass(frozen=True)
class Case:
    """One request and what EC2 answers to it."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    body: bytes | None = None
    # Headers the reply must carry, beyond the server's common ones.
    carries: dict[str, str] = field(default_factory=dict)
    close: bool = False
    hop_limit: int = 0
    has_body: bool = False
    tokens_required: bool = True


def with_token(ttl: int = 21600, **headers: str) -> dict[str, str]:
    return {p.TOKEN_HEADER.lower(): token(ttl), **headers}


TTL = p.TTL_HEADER.lower()
CASES = [
    # Token endpoint, section 2.
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "21600"}, carries={p.TTL_RESPONSE_HEADER:
                                                                     "21600"}, hop_limit=1),
                 id="T-01-T-05-token-issued-with-its-ttl-and-the-hop-limit"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "1"}, carries={p.TTL_RESPONSE_HEADER: "1"},
                      hop_limit=1), id="T-02-shortest-ttl"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {}, status=400, body=p.BAD_REQUEST_BODY),
                 id="T-03-ttl-missing"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "0"}, status=400, body=p.BAD_REQUEST_BODY),
                 id="T-04-ttl-zero"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "21601"}, status=400,
                      body=p.BAD_REQUEST_BODY), id="T-04-ttl-above-six-hours"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "sixty"}, status=400,
                      body=p.BAD_REQUEST_BODY), id="T-04-ttl-not-a-number"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "60", "x-forwarded-for": "1.2.3.4"},
                      status=403, body=b""), id="T-09-proxied-put-refused"),
    pytest.param(Case("GET", p.TOKEN_PATH, status=405, body=p.METHOD_NOT_ALLOWED_BODY,
                      carries={"Allow": p.TOKEN_ALLOW}), id="T-11-get-on-the-token-path"),
    pytest.param(Case("OPTIONS", p.TOKEN_PATH, carries={"Allow": p.TOKEN_ALLOW}, body=b""),
                 id="T-11-options-on-the-token-path"),
    pytest.param(Case("PUT", p.TOKEN_PATH + "/", {TTL: "60"}, status=403, body=b""),
                 id="T-12-token-path-with-a-slash"),
    pytest.param(Case("PUT", "/2021-07-15/api/token", {TTL: "60"}, status=403, body=b""),
                 id="T-13-versioned-token-path"),
    pytest.param(Case("PUT", p.TOKEN_PATH, {TTL: "60"}, has_body=True, status=400,
                      body=p.BAD_REQUEST_BODY, close=True), id="T-14-a-body-is-refused"),
    # Token use, section 3.
    pytest.param(Case("GET", "/latest/meta-data/ami-id", status=401, body=b""),
                 id="A-03-no-token-when-required"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id", tokens_required=False,
                      body=b"ami-0123456789abcdef0"), id="A-02-imdsv1-when-optional"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id", {p.TOKEN_HEADER.lower(): "x" * 56},
                      status=401, body=b""), id="A-04-forged-token"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id",
                      {p.TOKEN_HEADER.lower(): "x" * 56}, status=401, body=b"",
                      tokens_required=False), id="A-04-bad-token-even-when-optional"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id", with_token(),
                      body=b"ami-0123456789abcdef0",
                      carries={p.TTL_RESPONSE_HEADER: "21600"}),
                 id="A-07-answers-carry-the-tokens-remaining-ttl"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id",
                      with_token(**{"x-forwarded-for": "1.2.3.4"}), status=403, body=b""),
                 id="T-10-proxied-token-bearing-get"),
    # The tree, sections 4 and 5.
    pytest.param(Case("GET", "/latest/meta-data/", with_token(),
                      body=b"ami-id\niam/\nplacement/"), id="R-05-M-01-listing"),
    pytest.param(Case("GET", "/latest/meta-data", with_token(),
                      body=b"ami-id\niam/\nplacement/"), id="R-05-listing-without-slash"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id/", with_token(),
                      body=b"ami-0123456789abcdef0"), id="R-05-leaf-with-slash"),
    pytest.param(Case("GET", "/latest/", with_token(), body=b"meta-data"),
                 id="N-07-latest-lists-bare-names"),
    pytest.param(Case("GET", "/latest/meta-data/iam/security-credentials/app", with_token(),
                      body=ROLE_DOCUMENT.encode()), id="C-03-role-document"),
    pytest.param(Case("GET", "/latest/meta-data/iam/security-credentials/other",
                      with_token(), status=404, body=p.NOT_FOUND_BODY),
                 id="C-04-unknown-role"),
    pytest.param(Case("GET", "/latest/meta-data/nope", with_token(), status=404,
                      body=p.NOT_FOUND_BODY), id="R-03-unknown-path"),
    pytest.param(Case("HEAD", "/latest/meta-data/ami-id", with_token(),
                      body=b"ami-0123456789abcdef0"), id="R-01-head-as-get"),
    pytest.param(Case("POST", "/latest/meta-data/ami-id", with_token(), status=405,
                      body=p.METHOD_NOT_ALLOWED_BODY, carries={"Allow": p.METADATA_ALLOW}),
                 id="Q-02-other-methods"),
    # Who may ask, section 1.
    pytest.param(Case("GET", "/latest/meta-data/ami-id", with_token(host="evil.example"),
                      status=403, body=b""), id="N-03-rebinding-host-refused"),
    pytest.param(Case("GET", "/latest/meta-data/ami-id", with_token(host="169.254.169.254"),
                      body=b"ami-0123456789abcdef0",
                      carries={p.TTL_RESPONSE_HEADER: "21600"}),
                 id="N-01-the-endpoint-address-as-host"),
]


def run(case: Case) -> Reply:
    return answer(rules(tokens_required=case.tokens_required), case.method, case.path,
                  case.headers.get, CLIENT, has_body=case.has_body)


class TestAnswerTable:
    @pytest.mark.parametrize("case", CASES)
    def test_each_request_gets_ec2s_answer(self, case: Case) -> None:
        """Status, body, the headers that matter, and what the wire must do."""
        reply = run(case)
        assert case.status == reply.status
        if case.body is not None:
            assert case.body == reply.body
        assert case.carries.items() <= dict(reply.headers).items()
        assert case.close == reply.close
        assert case.hop_limit == reply.hop_limit

    def test_a_token_is_bound_to_the_address_it_was_issued_to(self) -> None:
        """[T-08] a token carried to another caller is refused."""
        reply = answer(rules(), "GET", "/latest/meta-data/ami-id",
                       {p.TOKEN_HEADER.lower(): token(client="10.0.0.8")}.get, CLIENT)
        assert 401 == reply.status

    def test_the_remaining_ttl_counts_down_with_the_clock(self) -> None:
        """[A-07] a token issued for 60 s shows 50 s ten seconds later, until the next second."""
        issued = token(60)
        later = rules(at=NOW + 10.25)
        reply = answer(later, "GET", "/latest/meta-data/ami-id",
                       {p.TOKEN_HEADER.lower(): issued}.get, CLIENT)
        assert (p.TTL_RESPONSE_HEADER, "50") in reply.headers
        assert NOW + 11 == reply.until

    def test_an_expired_token_is_refused(self) -> None:
        """[A-04] past its TTL a token is as good as none."""
        issued = token(60)
        reply = answer(rules(at=NOW + 61), "GET", "/latest/meta-data/ami-id",
                       {p.TOKEN_HEADER.lower(): issued}.get, CLIENT)
        assert 401 == reply.status

    def test_the_hop_limit_travels_as_data(self) -> None:
        """[N-05] the core asks for the hop limit; it never touches a socket."""
        reply = answer(rules(hop_limit=3), "PUT", p.TOKEN_PATH, {TTL: "60"}.get, CLIENT)
        assert (200, 3) == (reply.status, reply.hop_limit)
        listing = answer(rules(hop_limit=3), "GET", "/latest/meta-data/", with_token().get,
                         CLIENT)
        assert 0 == listing.hop_limit

    def test_answers_from_the_tree_say_where_they_came_from(self) -> None:
        """The fast path keeps an answer only while its source is unchanged."""
        reply = answer(rules(), "GET", "/latest/meta-data/ami-id", with_token().get, CLIENT)
        assert reply.found is not None and reply.found.unchanged()
        refused = answer(rules(), "GET", "/latest/meta-data/ami-id", {}.get, CLIENT)
        assert refused.found is None
